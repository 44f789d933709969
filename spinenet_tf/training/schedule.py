"""Linear warm-up then step decay: the learning-rate schedule of the SpineNet RetinaNet recipes."""

import keras
from keras import ops


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
        if self.warmup_steps:
            progress = ops.minimum(step / self.warmup_steps, 1.0)
            rate *= self.warmup_start_factor + (1.0 - self.warmup_start_factor) * progress
        return rate

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "warmup_steps": self.warmup_steps,
            "warmup_start_factor": self.warmup_start_factor,
            "decay_steps": list(self.decay_steps),
            "decay_factor": self.decay_factor,
        }
