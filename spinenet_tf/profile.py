"""Parameter and multiply-add (MAC) counts of any functional model of the project.

MACs are counted for convolutions and dense layers, the layers that carry all but a
fraction of a percent of a detector's arithmetic; this is the convention of the
papers' "FLOPs" columns (which are multiply-adds). Shapes are traced symbolically at
the requested input size, so a model built for dynamic input can be profiled at any
size without running it.
"""

import dataclasses
import math

import keras

_CONV_TYPES = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D, keras.layers.DepthwiseConv2D)
_TRANSPOSED_CONV_TYPES = (
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
)


@dataclasses.dataclass(frozen=True)
class ModelProfile:
    trainable_params: int
    non_trainable_params: int
    macs: int  # per image

    @property
    def params(self):
        return self.trainable_params + self.non_trainable_params

    @property
    def gmacs(self):
        return self.macs / 1e9


def _positions(shape):
    """Spatial positions of a (batch, *spatial, channels) tensor, per image."""
    return math.prod(shape[1:-1])


def _layer_macs(layer, input_specs, output_spec):
    if isinstance(layer, keras.layers.SeparableConv2D):
        return _positions(output_spec.shape) * (
            math.prod(layer.depthwise_kernel.shape) + math.prod(layer.pointwise_kernel.shape)
        )
    if isinstance(layer, _TRANSPOSED_CONV_TYPES):
        return _positions(input_specs[0].shape) * math.prod(layer.kernel.shape)
    if isinstance(layer, (*_CONV_TYPES, keras.layers.Dense)):
        return _positions(output_spec.shape) * math.prod(layer.kernel.shape)
    if any(len(weight.shape) >= 2 for weight in getattr(layer, "trainable_weights", ())):
        raise NotImplementedError(
            f"profile() cannot count the multiply-adds of layer {layer.name!r} ({type(layer).__name__})."
        )
    return 0


def _trace(model, inputs):
    """Runs `model`'s graph on symbolic `inputs`; returns (outputs, MACs per image)."""
    total = 0

    def operation_fn(operation):
        def traced(*args, **kwargs):
            nonlocal total
            if isinstance(operation, keras.Model) and hasattr(operation, "_run_through_graph"):
                outputs, macs = _trace(operation, args[0])
                total += macs
                return outputs
            outputs = operation.compute_output_spec(*args, **kwargs)
            specs = [arg for arg in keras.tree.flatten(args) if isinstance(arg, keras.KerasTensor)]
            total += _layer_macs(operation, specs, outputs)
            return outputs

        return traced

    if not hasattr(model, "_run_through_graph"):
        raise TypeError(f"profile() needs a functional model; {type(model).__name__} is not one.")
    outputs = model._run_through_graph(inputs, operation_fn=operation_fn)
    return outputs, total


def _macs(model, input_shape):
    shapes = input_shape if isinstance(input_shape[0], (list, tuple)) else [input_shape]
    if len(shapes) != len(model.inputs):
        raise ValueError(f"{model.name} has {len(model.inputs)} inputs but {len(shapes)} shapes were given.")
    inputs = [keras.KerasTensor((1, *shape), dtype=x.dtype) for shape, x in zip(shapes, model.inputs)]
    return _trace(model, inputs)[1]


def profile(model, input_shape):
    """Counts `model`'s parameters and its MACs for one image of `input_shape`.

    Args:
        model: a functional keras.Model (nested functional models are counted too), or a
            model made of functional parts that lists them with `profile_parts(input_shape)`
            as (part, its input shape, times it runs per image): a two-stage detector's
            heads run once per RoI (the papers count 1000 proposals and 100 detections).
        input_shape: shape of one input without the batch axis, e.g. (640, 640, 3),
            or a list of such shapes for a model with several inputs.
    """
    if hasattr(model, "profile_parts"):
        macs = sum(times * _macs(part, shape) for part, shape, times in model.profile_parts(input_shape))
    else:
        macs = _macs(model, input_shape)
    return ModelProfile(_count(model.trainable_weights), _count(model.non_trainable_weights), macs)


def _count(weights):
    # Integer variables are RNG states (stochastic depth seeds), not parameters.
    return sum(math.prod(w.shape) for w in weights if "float" in keras.backend.standardize_dtype(w.dtype))
