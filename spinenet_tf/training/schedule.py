"""Learning-rate schedules: linear warm-up, then step decay (the SpineNet detection recipes)
or a half cosine to zero (the SpineNet ImageNet recipes)."""

import math

import keras
from keras import ops


def _warmed_up(rate, step, warmup_steps, warmup_start_factor):
    """`rate` scaled from warmup_start_factor up to 1 linearly over the first warmup_steps."""
    if not warmup_steps:
        return rate
    progress = ops.minimum(step / warmup_steps, 1.0)
    return rate * (warmup_start_factor + (1.0 - warmup_start_factor) * progress)


@keras.saving.register_keras_serializable(package="spinenet_tf")
class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Rises linearly from `learning_rate * warmup_start_factor` to `learning_rate` over
    `warmup_steps`, then is multiplied by `decay_factor` at each of `decay_steps`.

    A function of the optimizer's step only, so a resumed run continues the same curve.
    """

    def __init__(
        self, learning_rate, warmup_steps=0, warmup_start_factor=0.067, decay_steps=(), decay_factor=0.1
    ):
        self.learning_rate = float(learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.warmup_start_factor = float(warmup_start_factor)
        self.decay_steps = tuple(int(step) for step in decay_steps)
        self.decay_factor = float(decay_factor)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        decays = sum((ops.cast(step >= boundary, "float32") for boundary in self.decay_steps), ops.zeros(()))
        rate = self.learning_rate * ops.power(self.decay_factor, decays)
        return _warmed_up(rate, step, self.warmup_steps, self.warmup_start_factor)

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "warmup_steps": self.warmup_steps,
            "warmup_start_factor": self.warmup_start_factor,
            "decay_steps": list(self.decay_steps),
            "decay_factor": self.decay_factor,
        }


@keras.saving.register_keras_serializable(package="spinenet_tf")
class WarmupCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up as `WarmupStepDecay`, then `learning_rate` * (1 + cos(pi * t)) / 2 with t
    going from 0 at the warm-up's end to 1 at `total_steps` (the tensorflow/tpu classifiers')."""

    def __init__(self, learning_rate, total_steps, warmup_steps=0, warmup_start_factor=0.0):
        self.learning_rate = float(learning_rate)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.warmup_start_factor = float(warmup_start_factor)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
        rate = self.learning_rate * (1.0 + ops.cos(math.pi * progress)) / 2.0
        return _warmed_up(rate, step, self.warmup_steps, self.warmup_start_factor)

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "warmup_start_factor": self.warmup_start_factor,
        }
