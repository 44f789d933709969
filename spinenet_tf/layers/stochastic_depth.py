"""Stochastic depth (drop-path) on a residual branch."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="spinenet_tf")
class StochasticDepth(keras.layers.Layer):
    """Zeroes a sample's residual branch with probability `rate` during training.

    Kept branches are scaled by 1 / (1 - rate), so inference is the identity and
    deterministic (Huang et al. 2016; the per-block rate schedule is the caller's).
    """

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"StochasticDepth rate must be in [0, 1), got {rate}.")
        self.rate = rate
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=False):
        if not training or self.rate == 0.0:
            return inputs
        keep_prob = 1.0 - self.rate
        mask_shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
        noise = keras.random.uniform(mask_shape, seed=self.seed_generator, dtype=inputs.dtype)
        keep = ops.floor(keep_prob + noise)
        return inputs / ops.cast(keep_prob, inputs.dtype) * keep

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}
