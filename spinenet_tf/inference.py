"""The inference-optimised copy of a model: `optimize_for_inference`.

A trained network spends a share of its inference time on work that only training needs:
batch norms (a multiply and an add over every activation, with their own memory pass),
activations as separate ops, identity layers (dropout, stochastic depth), and in SpineNet's
up-sampling resamplings a 1x1 conv run on the up-sampled map, factor**2 times the pixels it
needs. The copy rewrites the functional graph node by node, in keras layers, so it runs
on TensorFlow and JAX and exports to SavedModel and TFLite like the original:

- a BatchNormalization whose input is a conv's (Conv2D, DepthwiseConv2D, SeparableConv2D,
  Dense) and nothing else reads that conv's output is folded into the conv's kernel and a
  bias: `kernel * gamma / sqrt(var + eps)`, `(bias - mean) * gamma / sqrt(var + eps) + beta`;
- an Activation that alone reads a conv's (or folded conv's) output becomes the conv's own;
- Dropout and StochasticDepth, identities at inference, are dropped;
- a 1x1 conv (folded or not) that alone reads a nearest up-sampling's output runs before
  it: pointwise ops commute with nearest up-sampling, so the result is the same, for
  factor**2 fewer multiply-adds;
- a conv shared between calls (RetinaNet's head: one conv per depth, a batch norm per
  level) is left as it is, with its batch norms: folding them would copy its kernel once
  per level.

Nested functional models (a task's backbone) are rewritten too, and every model keeps its
class, name and attributes, so a task's preprocessing and decoding, `predict` and the
exports work on the copy as on the original. The copy is for inference: train, save and
fine-tune the original (its weights are not shared with the copy).
"""

import collections

import keras
import numpy as np
from keras.src.models.functional import Functional

from spinenet_tf.layers.resample import ResizeToLevel
from spinenet_tf.layers.stochastic_depth import StochasticDepth

FOLDABLE_LAYERS = (
    keras.layers.Conv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv2D,
    keras.layers.Dense,
)
INFERENCE_IDENTITIES = (keras.layers.Dropout, StochasticDepth)


def optimize_for_inference(model):
    """A copy of `model` (a task or any functional Keras model) for inference, with equal
    outputs (see the module's docstring for what changes)."""
    return _rewrite_model(model, {})


def mixed_bfloat16_copy(model):
    """The model rebuilt with mixed_bfloat16 compute (bfloat16 convs, float32 variables and
    outputs cast where the task casts them), the same weights: CPUs with AVX-512 BF16 run
    its convs about twice as fast as float32's (BENCHMARKS.md, "Deployable artifacts").
    Its serialised float32 policies are dropped, so that every layer takes the global one."""

    def without_float32(value):
        if isinstance(value, dict):
            if value.get("class_name") == "DTypePolicy" and value["config"]["name"] == "float32":
                return None
            return {key: without_float32(item) for key, item in value.items()}
        if isinstance(value, list):
            return [without_float32(item) for item in value]
        return value

    serialized = without_float32(keras.saving.serialize_keras_object(model))
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        copy = keras.saving.deserialize_keras_object(serialized)
    finally:
        keras.config.set_dtype_policy(previous)
    copy.set_weights(model.get_weights())
    return copy


def _rewrite_model(model, memo):
    """The rewritten copy of `model`; `memo` maps id(original layer) -> its copy, so that a
    layer reached twice (a backbone called by a task and held as its attribute) is copied once."""
    if id(model) in memo:
        return memo[id(model)]
    copy = type(model).__new__(type(model))
    memo[id(model)] = copy
    if isinstance(model, Functional):
        inputs, outputs = _rewrite_graph(model, memo)
        Functional.__init__(copy, inputs=inputs, outputs=outputs, name=model.name, dtype=model.dtype_policy)
    else:  # a subclassed model (Mask R-CNN): its functional networks are among its attributes
        keras.Model.__init__(copy, name=model.name, dtype=model.dtype_policy)
    keras_attributes = set(vars(copy))
    for key, value in vars(model).items():
        if key not in keras_attributes:
            setattr(copy, key, _rewrite_attribute(value, memo))
    copy.built = model.built  # a subclassed model's networks are built with their weights
    return copy


def _rewrite_attribute(value, memo):
    """A model attribute of the copy: models rewritten, containers rebuilt, anything else shared."""
    if isinstance(value, keras.Model):
        return _rewrite_model(value, memo)
    if isinstance(value, keras.layers.Layer):
        return memo.get(id(value), value)  # a layer of the graph, or one outside it (a converter)
    if isinstance(value, (list, tuple)):
        return type(value)(_rewrite_attribute(item, memo) for item in value)
    if isinstance(value, dict):
        return {key: _rewrite_attribute(item, memo) for key, item in value.items()}
    return value


class _Graph:
    """A functional model's call nodes in execution order, with who reads which tensor."""

    def __init__(self, model):
        self.nodes = [
            node
            for depth in sorted(model._nodes_by_depth, reverse=True)
            for node in model._nodes_by_depth[depth]
            if node.operation is not None and not node.is_input
        ]
        self.producer = {id(tensor): node for node in self.nodes for tensor in node.outputs}
        self.readers = collections.defaultdict(list)
        for node in self.nodes:
            for tensor in node.input_tensors:
                self.readers[id(tensor)].append(node)
        self.outputs = {id(tensor) for tensor in model.outputs}
        self.calls = collections.Counter(id(node.operation) for node in self.nodes)

    def sole_reader(self, tensor):
        """The one node reading `tensor` when nothing else (no other node, no model output) does."""
        readers = self.readers[id(tensor)]
        if len(readers) == 1 and id(tensor) not in self.outputs:
            return readers[0]
        return None

    def input_producer(self, node):
        return self.producer.get(id(node.input_tensors[0]))


class _Unit:
    """A conv's rewrite: the batch norm folded into it, the activation fused into it, the
    nearest up-sampling it moves after itself, and the original tensor its result stands for."""

    def __init__(self, conv_node):
        self.conv_node, self.norm, self.activation, self.upsampling = conv_node, None, None, None
        self.result = conv_node.outputs[0]


def _is_linear(layer):
    return keras.activations.serialize(layer.activation) == "linear"


def _is_nearest_upsampling(layer):
    if isinstance(layer, keras.layers.UpSampling2D):
        return layer.interpolation == "nearest"
    return isinstance(layer, ResizeToLevel)


def _is_pointwise(layer):
    return (
        type(layer) is keras.layers.Conv2D
        and tuple(layer.kernel_size) == (1, 1)
        and tuple(layer.strides) == (1, 1)
        and layer.groups == 1
    )


def _plan(graph):
    """{id(conv node): _Unit} of every conv that absorbs a norm, an activation or an
    up-sampling, and the ids of the nodes that the units absorb."""
    units, absorbed = {}, set()
    for node in graph.nodes:
        layer = node.operation
        if (
            type(layer) not in FOLDABLE_LAYERS
            or not _is_linear(layer)
            or len(node.input_tensors) != 1
            or graph.calls[id(layer)] > 1  # a rewrite per call would copy a shared kernel
        ):
            continue
        unit = _Unit(node)
        reader = graph.sole_reader(unit.result)
        if (
            reader is not None
            and isinstance(reader.operation, keras.layers.BatchNormalization)
            and reader.operation.axis in (-1, len(unit.result.shape) - 1)
        ):
            unit.norm, unit.result = reader.operation, reader.outputs[0]
            absorbed.add(id(reader))
            reader = graph.sole_reader(unit.result)
        if reader is not None and type(reader.operation) is keras.layers.Activation:
            unit.activation, unit.result = reader.operation, reader.outputs[0]
            absorbed.add(id(reader))
        source = graph.input_producer(node)
        if (
            _is_pointwise(layer)
            and source is not None
            and _is_nearest_upsampling(source.operation)
            and graph.sole_reader(node.input_tensors[0]) is node
        ):
            unit.upsampling = source
            absorbed.add(id(source))
        if unit.norm or unit.activation or unit.upsampling:
            units[id(node)] = unit
    return units, absorbed


def _folded_weights(layer, norm):
    """The weights of `layer` with a bias, `norm` (a BatchNormalization, or None) folded in."""
    weights = dict(zip((w.path.rsplit("/", 1)[-1] for w in layer.weights), layer.get_weights()))
    kernel_name = "pointwise_kernel" if "pointwise_kernel" in weights else next(iter(weights))
    kernel = weights[kernel_name].astype(np.float64)
    bias = weights.get(
        "bias", np.zeros(int(np.prod(kernel.shape[-2:])) if _is_depthwise(layer) else kernel.shape[-1])
    )
    if norm is not None:
        channels = bias.shape[0]
        gamma = keras.ops.convert_to_numpy(norm.gamma) if norm.scale else np.ones(channels)
        beta = keras.ops.convert_to_numpy(norm.beta) if norm.center else np.zeros(channels)
        mean = keras.ops.convert_to_numpy(norm.moving_mean)
        variance = keras.ops.convert_to_numpy(norm.moving_variance)
        scale = gamma.astype(np.float64) / np.sqrt(variance.astype(np.float64) + norm.epsilon)
        kernel = kernel * scale.reshape(kernel.shape[-2:] if _is_depthwise(layer) else scale.shape)
        bias = (bias - mean) * scale + beta
    weights[kernel_name] = kernel.astype(np.float32)
    weights["bias"] = bias.astype(np.float32)
    return weights


def _is_depthwise(layer):
    return type(layer) is keras.layers.DepthwiseConv2D


def _fused_layer(unit):
    """A new layer of the conv's class computing the unit: conv with bias, activation."""
    layer = unit.conv_node.operation
    config = layer.get_config()
    config.update({key: None for key in config if key.endswith("regularizer")}, use_bias=True)
    if unit.activation is not None:
        config["activation"] = keras.activations.serialize(unit.activation.activation)
    return type(layer).from_config(config)


def _set_weights(layer, named_weights):
    layer.set_weights([named_weights[w.path.rsplit("/", 1)[-1]] for w in layer.weights])


def _copy_layer(layer, memo):
    """A layer's copy with its weights, once per layer however often it is called."""
    if id(layer) not in memo:
        if isinstance(layer, keras.Model):
            return _rewrite_model(layer, memo)
        memo[id(layer)] = type(layer).from_config(layer.get_config())
    return memo[id(layer)]


def _rewrite_graph(model, memo):
    """(inputs, outputs) of a new functional graph computing `model`'s outputs with the
    rewrites of `_plan` (for `Functional.__init__`)."""
    graph = _Graph(model)
    units, absorbed = _plan(graph)
    inputs = [keras.Input(batch_shape=x.shape, dtype=x.dtype, name=x.name) for x in model.inputs]
    tensors = {id(x): y for x, y in zip(model.inputs, inputs)}
    pending_weights = []  # (new layer, its original or its folded weights by name), set once built
    for node in graph.nodes:
        if id(node) in absorbed:
            continue
        layer = node.operation
        if id(node) in units:
            unit = units[id(node)]
            # With an up-sampling moved after it, the conv reads the up-sampling's input.
            args, _ = (unit.upsampling or node).arguments.fill_in(tensors)
            fused = _fused_layer(unit)
            outputs = fused(args[0])
            pending_weights.append((fused, _folded_weights(layer, unit.norm)))
            if unit.upsampling is not None:
                upsample_args, upsample_kwargs = unit.upsampling.arguments.fill_in(tensors)
                upsampling = _copy_layer(unit.upsampling.operation, memo)
                outputs = upsampling(outputs, *upsample_args[1:], **upsample_kwargs)
            tensors[id(unit.result)] = outputs
            continue
        args, kwargs = node.arguments.fill_in(tensors)
        if isinstance(layer, INFERENCE_IDENTITIES):
            outputs = args[0]
        elif isinstance(layer, keras.layers.Layer):
            fresh = id(layer) not in memo
            copy = _copy_layer(layer, memo)
            outputs = copy(*args, **kwargs)
            if fresh and not isinstance(layer, keras.Model):
                pending_weights.append((copy, layer))
        else:  # a keras.ops operation applied to symbolic tensors: stateless, shared
            outputs = layer(*args, **kwargs)
        for x, y in zip(node.outputs, keras.tree.flatten(outputs)):
            tensors[id(x)] = y
    for layer, weights in pending_weights:
        if isinstance(weights, dict):
            _set_weights(layer, weights)
        else:
            layer.set_weights(weights.get_weights())
    outputs = keras.tree.pack_sequence_as(model._outputs_struct, [tensors[id(x)] for x in model.outputs])
    return keras.tree.pack_sequence_as(model._inputs_struct, inputs), outputs
