"""SpineNet: the scale-permuted backbone family of Du et al. (CVPR 2020)."""

import dataclasses

import keras

from spinenet_tf import specs
from spinenet_tf.block_graph import resolve_block_graph
from spinenet_tf.layers.blocks import block_group
from spinenet_tf.layers.conv_norm import OPS_FLAVORS, ConvNormSettings, conv_norm
from spinenet_tf.layers.resample import resample_feature

ACTIVATIONS = ("relu", "swish")


def regularizer_from_config(value):
    """None, an L2 factor (float), or anything `keras.regularizers.get` accepts."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return keras.regularizers.L2(float(value))
    return keras.regularizers.get(value)


def scale_permuted_pyramid(
    graph, built, resample, block, settings, stochastic_depth_rate, endpoints_num_filters
):
    """Builds the scale-permuted blocks of `graph` on its built stem blocks and returns the
    endpoints {"P{level}": 1x1 conv + BN + act}: the assembly every SpineNet family shares.

    `built`: {node index: output} of the stem blocks, filled in with the others.
    `resample(x, parent_node, node)`: a parent's output at `node`'s level and width.
    `block(x, node, drop_rate=...)`: `node`'s block group on the summed, activated parents.
    """
    for node in graph.used_nodes():
        if node.is_stem:
            continue
        parents = [resample(built[parent], graph.nodes[parent], node) for parent in node.parents[:2]]
        # Unconsumed blocks merged into an output block already have its width.
        parents += [built[parent] for parent in node.parents[2:]]
        x = keras.layers.Add(dtype=settings.dtype, name=f"{node.name}_sum")(parents)
        x = settings.activate(x, f"{node.name}_sum_act")
        drop_rate = stochastic_depth_rate * node.spec_number / len(graph.block_specs)
        built[node.index] = block(x, node, drop_rate=drop_rate)
    return {
        f"P{level}": conv_norm(built[index], settings, endpoints_num_filters, 1, f"P{level}")
        for level, index in graph.outputs.items()
    }


def spinenet_size_multiple(block_specs=None, min_level=3, max_level=7):
    """2**L, L the coarsest level of the blocks the outputs need (or `max_level` if higher): at
    multiples of it every level is exactly the input size / its stride (the published
    detection sizes). Detectors' anchors and padded dynamic inputs keep to it.
    """
    block_specs = specs.SPINENET_BLOCK_SPECS if block_specs is None else block_specs
    graph = resolve_block_graph(block_specs, min_level, max_level)
    return 2 ** max(max_level, *(node.level for node in graph.used_nodes()))


def _check_image_shape(image_shape):
    if len(image_shape) != 3 or image_shape[-1] is None:
        raise ValueError(
            f"image_shape must be (height, width, channels) with known channels, got {image_shape}."
        )
    for axis, size in zip(("height", "width"), image_shape[:2]):
        if size is not None and size <= 0:
            raise ValueError(f"Input {axis} must be positive, got {size}.")


@keras.saving.register_keras_serializable(package="spinenet_tf")
class SpineNet(keras.Model):
    """SpineNet backbone: image in, dict of pyramid features "P{min_level}".."P{max_level}" out.

    `model_id` picks a row of the paper's scaling table ("49S", "49", "96", "143",
    "143L", "190"); each scaling field given explicitly overrides it. Feature "Pn" has
    stride 2**n and `endpoints_num_filters` channels. Height and width are any size (None
    for dynamic input): level n is ceil(size / 2**n). At multiples of `size_multiple` (128
    for the published table) the network is Model Garden's; at other sizes (224 for
    ImageNet) a nearest resize joins levels whose sizes do not divide, as the
    tensorflow/tpu SpineNet.

    Args:
        block_specs: the scale-permuted block table (default: SpineNet-49's), as
            `BlockSpec`s or (level, block_type, (offset0, offset1), is_output) rows.
        stochastic_depth_rate: drop-path rate of the last block; block i of n gets
            rate * i / n, stem blocks none.
        sync_batch_norm: synchronise BN statistics across replicas (TF distribute).
        kernel_regularizer: None, an L2 factor, or a Keras regularizer (or its config).
        ops_flavor: "model_garden" (TF Model Garden's ops) or "tpu" (the tensorflow/tpu
            SpineNet's: explicit padding on strided convs, one max-pool per down-sampling),
            for the numerics of the checkpoints each trained; same weights either way.
    """

    def __init__(
        self,
        model_id="49",
        image_shape=(None, None, 3),
        min_level=3,
        max_level=7,
        endpoints_num_filters=None,
        filter_size_scale=None,
        resample_alpha=None,
        block_repeats=None,
        block_specs=None,
        activation="relu",
        stochastic_depth_rate=0.0,
        norm_momentum=0.99,
        norm_epsilon=1e-3,
        sync_batch_norm=False,
        kernel_initializer="VarianceScaling",
        kernel_regularizer=None,
        ops_flavor="model_garden",
        dtype=None,
        **kwargs,
    ):
        model_id = str(model_id)
        if model_id not in specs.SCALING:
            raise ValueError(f"Unknown SpineNet model_id {model_id!r}; use one of {specs.MODEL_IDS}.")
        if activation not in ACTIVATIONS:
            raise ValueError(f"Unknown activation {activation!r}; use one of {ACTIVATIONS}.")
        if ops_flavor not in OPS_FLAVORS:
            raise ValueError(f"Unknown ops_flavor {ops_flavor!r}; use one of {OPS_FLAVORS}.")
        if not 0.0 <= stochastic_depth_rate < 1.0:
            raise ValueError(f"stochastic_depth_rate must be in [0, 1), got {stochastic_depth_rate}.")
        scaling = specs.SCALING[model_id]
        explicit = {
            "endpoints_num_filters": endpoints_num_filters,
            "filter_size_scale": filter_size_scale,
            "resample_alpha": resample_alpha,
            "block_repeats": block_repeats,
        }
        for key, value in explicit.items():
            if value is not None and (isinstance(value, bool) or not value > 0):
                raise ValueError(f"{key} must be a positive number, got {value!r}.")
        scaling = dataclasses.replace(scaling, **{k: v for k, v in explicit.items() if v is not None})
        endpoints_num_filters = int(scaling.endpoints_num_filters)
        filter_size_scale = float(scaling.filter_size_scale)
        resample_alpha = float(scaling.resample_alpha)
        block_repeats = int(scaling.block_repeats)
        block_specs = specs.SPINENET_BLOCK_SPECS if block_specs is None else block_specs
        graph = resolve_block_graph(block_specs, min_level, max_level)
        image_shape = tuple(image_shape)
        size_multiple = spinenet_size_multiple(graph.block_specs, min_level, max_level)
        _check_image_shape(image_shape)

        settings = ConvNormSettings(
            activation=activation,
            norm_momentum=norm_momentum,
            norm_epsilon=norm_epsilon,
            sync_batch_norm=sync_batch_norm,
            kernel_initializer=kernel_initializer,
            kernel_regularizer=regularizer_from_config(kernel_regularizer),
            dtype=dtype,
            ops_flavor=ops_flavor,
        )

        # === Functional graph ===
        image = keras.Input(shape=image_shape, name="image")
        x = conv_norm(image, settings, specs.STEM_CONV_FILTERS, 7, "stem", strides=2)
        x = keras.layers.MaxPooling2D(3, 2, padding="same", dtype=dtype, name="stem_pool")(x)

        def block(x, node, drop_rate=None):
            filters = specs.block_filters(node.level, filter_size_scale)
            return block_group(x, node.block_type, filters, block_repeats, settings, node.name, drop_rate)

        def resample(x, parent, node):
            return resample_feature(
                x,
                image,
                source_level=parent.level,
                source_block_type=parent.block_type,
                target_level=node.level,
                target_block_type=node.block_type,
                target_filters=specs.block_filters(node.level, filter_size_scale),
                alpha=resample_alpha,
                settings=settings,
                name=f"{node.name}_from_{parent.name}",
            )

        built = {}
        for node in graph.used_nodes():
            if node.is_stem:  # each stem block feeds the next
                built[node.index] = x = block(x, node)
        features = scale_permuted_pyramid(
            graph, built, resample, block, settings, stochastic_depth_rate, endpoints_num_filters
        )
        super().__init__(inputs=image, outputs=features, dtype=dtype, **kwargs)

        # === Config ===
        self.model_id = model_id
        self.image_shape = image_shape
        self.min_level = min_level
        self.max_level = max_level
        self.endpoints_num_filters = endpoints_num_filters
        self.filter_size_scale = filter_size_scale
        self.resample_alpha = resample_alpha
        self.block_repeats = block_repeats
        self.block_specs = graph.block_specs
        self.activation = activation
        self.stochastic_depth_rate = stochastic_depth_rate
        self.norm_momentum = norm_momentum
        self.norm_epsilon = norm_epsilon
        self.sync_batch_norm = sync_batch_norm
        self.kernel_initializer = kernel_initializer
        self.kernel_regularizer = settings.kernel_regularizer
        self.ops_flavor = ops_flavor
        self.size_multiple = size_multiple
        self.pyramid_channels = {name: endpoints_num_filters for name in features}
        self.pyramid_strides = {f"P{level}": 2**level for level in graph.outputs}

    def call(self, inputs, training=None, mask=None):
        _check_image_shape(tuple(inputs.shape[1:]))
        return super().call(inputs, training=training, mask=mask)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            "model_id": self.model_id,
            "image_shape": list(self.image_shape),
            "min_level": self.min_level,
            "max_level": self.max_level,
            "endpoints_num_filters": self.endpoints_num_filters,
            "filter_size_scale": self.filter_size_scale,
            "resample_alpha": self.resample_alpha,
            "block_repeats": self.block_repeats,
            "block_specs": [spec.as_list() for spec in self.block_specs],
            "activation": self.activation,
            "stochastic_depth_rate": self.stochastic_depth_rate,
            "norm_momentum": self.norm_momentum,
            "norm_epsilon": self.norm_epsilon,
            "sync_batch_norm": self.sync_batch_norm,
            "kernel_initializer": keras.initializers.serialize(
                keras.initializers.get(self.kernel_initializer)
            ),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "ops_flavor": self.ops_flavor,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["dtype"] = keras.dtype_policies.deserialize(config["dtype"]) if config.get("dtype") else None
        return cls(**config)

    @classmethod
    def from_preset(cls, name, checkpoint=None, cache_dir=None):
        """The SpineNet of a published checkpoint (`spinenet_tf.preset_names()`): a detector's
        backbone, or the backbone of a Mask R-CNN or ImageNet classifier, e.g. to fine-tune
        under a new head. Arguments as `RetinaNet.from_preset`."""
        from spinenet_tf.pretrained.presets import preset_backbone  # loads TensorFlow on use

        return preset_backbone(name, checkpoint, cache_dir)
