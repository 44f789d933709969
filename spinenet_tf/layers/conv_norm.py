"""Conv + batch norm (+ activation): the unit every SpineNet layer is made of.

`ConvNormSettings` carries the options shared by every conv and norm of a model, so
that block builders take one argument instead of re-listing seven.

`ops_flavor` picks whose numerics a strided conv follows: "model_garden" pads as
Keras' "same" (more on the bottom/right for even sizes, TF Model Garden), "tpu" pads
(k - 1) // 2 before and the rest after, like the tensorflow/tpu SpineNet that trained
that zoo's checkpoints. Stride-1 convs are equal under both.
"""

import dataclasses
from typing import Any

import keras

OPS_FLAVORS = ("model_garden", "tpu")


@dataclasses.dataclass(frozen=True)
class ConvNormSettings:
    activation: str = "relu"
    norm_momentum: float = 0.99
    norm_epsilon: float = 1e-3
    sync_batch_norm: bool = False
    kernel_initializer: Any = "VarianceScaling"
    kernel_regularizer: Any = None
    dtype: Any = None
    ops_flavor: str = "model_garden"

    def fixed_padding(self, kernel_size, strides):
        """Whether a conv pads explicitly ((k - 1) // 2 before, the rest after) instead of "same"."""
        return self.ops_flavor == "tpu" and strides > 1 and kernel_size > 1

    def initializer(self):
        """A fresh kernel initializer per layer: a shared seeded instance would give every
        layer the same weights."""
        return keras.initializers.get(
            keras.initializers.serialize(keras.initializers.get(self.kernel_initializer))
        )

    def conv(self, filters, kernel_size, name, strides=1, use_bias=False):
        return keras.layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding="valid" if self.fixed_padding(kernel_size, strides) else "same",
            use_bias=use_bias,
            kernel_initializer=self.initializer(),
            kernel_regularizer=self.kernel_regularizer,
            dtype=self.dtype,
            name=name,
        )

    def norm(self, name):
        # Keras computes batch statistics in float32 under mixed precision. Only TensorFlow
        # runs a step per replica; JAX data parallelism takes statistics of the global batch.
        return keras.layers.BatchNormalization(
            momentum=self.norm_momentum,
            epsilon=self.norm_epsilon,
            synchronized=self.sync_batch_norm and keras.backend.backend() == "tensorflow",
            dtype=self.dtype,
            name=name,
        )

    def activate(self, x, name):
        return keras.layers.Activation(self.activation, dtype=self.dtype, name=name)(x)


def conv_norm(x, settings, filters, kernel_size, name, strides=1, activate=True):
    """Conv (no bias) -> BN -> optional activation; layers named `{name}_conv` etc."""
    if settings.fixed_padding(kernel_size, strides):
        before = (kernel_size - 1) // 2
        padding = (before, kernel_size - 1 - before)
        x = keras.layers.ZeroPadding2D((padding, padding), dtype=settings.dtype, name=f"{name}_pad")(x)
    x = settings.conv(filters, kernel_size, f"{name}_conv", strides)(x)
    x = settings.norm(f"{name}_bn")(x)
    return settings.activate(x, f"{name}_act") if activate else x
