"""What every task model (RetinaNet, later two-stage detectors and classifiers) shares.

A task owns its preprocessing (keras-hub's pattern): `predict` and `predict_on_batch`
take photos as they are (uint8 or float 0..255, any size: a batch of one size or a list
of different sizes), letterbox (or crop) and normalise them with the task's `ImageConverter`, run
the network, decode, and answer in each photo's own pixels. Calling the model directly,
`fit` and `evaluate` take the training pipeline's output (normalised, model-sized), as
Keras models do. The config round trip (backbone, converter, dtype policy) is here too.
"""

import contextlib
import warnings

import keras
import numpy as np
from keras import ops

from spinenet_tf.errors import ModelError
from spinenet_tf.layers.image_converter import ImageConverter, boxes_to_original, normalise_image


def default_image_converter(backbone):
    """Letterbox into the backbone's static input size, or pad to its size multiple if dynamic."""
    height, width = backbone.input.shape[1:3]
    image_size = None if height is None or width is None else (height, width)
    return ImageConverter(image_size, getattr(backbone, "size_multiple", 1))


def _check_photos(x):
    """A batch [B, H, W, 3] or a list of [H, W, 3]; anything else is named."""
    if isinstance(x, (list, tuple)):
        shapes = [np.shape(image) for image in x]
        bad = next((n for n, shape in enumerate(shapes) if len(shape) != 3 or shape[-1] != 3), None)
        if not x or bad is not None:
            raise ModelError(
                "predict takes a batch [batch, height, width, 3] or a list of [height, width, 3] photos; "
                + (f"photo {bad} of the list has shape {shapes[bad]}." if x else "got an empty list.")
            )
        return
    if not hasattr(x, "shape"):  # a tf.data.Dataset or a generator: Keras checks its batches
        return
    shape = tuple(x.shape)
    if len(shape) == 3 and shape[-1] == 3:
        raise ModelError(
            f"predict takes a batch [batch, height, width, 3]; got one photo of shape {shape}: "
            "pass photo[None] or [photo]."
        )
    if len(shape) != 4 or shape[-1] != 3:
        raise ModelError(f"predict takes photos [batch, height, width, 3]; got shape {shape}.")
    if isinstance(x, np.ndarray) and x.dtype.kind == "f" and x.size and np.max(x) <= 1.0:
        warnings.warn(
            "predict takes pixel values 0..255 (uint8 or float); these photos are all <= 1.0. "
            "The model normalises them itself.",
            stacklevel=3,
        )


class Task:
    """What the task models share, mixed in before keras.Model: `class RetinaNet(Task,
    keras.Model)`. A task builds its network on `backbone` (a functional graph through
    `super().__init__(inputs=..., outputs=...)`, or sub-networks of its own), then calls
    `self._init_task(backbone, image_converter)`, and provides
    `decode_predictions(raw_outputs, image_size)` (outputs in model-input pixels) and
    `task_config()` (its own constructor arguments).

    A mixin, not a keras.Model subclass: Keras turns a Model subclass into a Functional one
    by rewriting the bases of every class up to keras.Model when it is built from inputs and
    outputs, which would turn a shared base into Functional under the tasks that are not."""

    @staticmethod
    def resolve_backbone(backbone, weight_decay):
        """The backbone (deserialised from a config dict), checked against the task's L2."""
        if isinstance(backbone, dict):
            backbone = keras.saving.deserialize_keras_object(backbone)
        if weight_decay and getattr(backbone, "kernel_regularizer", None) is not None:
            raise ModelError(
                f"weight_decay={weight_decay} already puts L2 on every kernel, the backbone's included; the "
                "backbone's kernel_regularizer would add it a second time. Set one of them to 0 / None."
            )
        return backbone

    def _init_task(self, backbone, image_converter):
        self.backbone = backbone
        if isinstance(image_converter, dict):
            image_converter = keras.saving.deserialize_keras_object(image_converter)
        self.image_converter = image_converter or default_image_converter(backbone)

    # === Photos in, answers in the photos' pixels ===
    def predict_step(self, *args):
        # TF and torch call predict_step(data); JAX calls predict_step(state, data) and
        # expects (outputs, non_trainable_variables) back.
        photos, _, _ = keras.utils.unpack_x_y_sample_weight(args[-1])
        inputs, scale = self.image_converter(photos)
        outputs = super().predict_step(*args[:-1], inputs)
        raw, state = outputs if isinstance(outputs, tuple) else (outputs, None)
        answers = self.decode_predictions(raw, tuple(inputs.shape[1:3]))
        if "boxes" in answers:
            original_size = ops.stack([ops.cast(size, "float32") for size in ops.shape(photos)[1:3]])
            answers["boxes"] = boxes_to_original(answers["boxes"], scale, original_size)
        return answers if state is None else (answers, state)

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        """Answers for photos: a batch [B, H, W, 3] of one size or a list of [H, W, 3]."""

        def run(inputs):
            return super(Task, self).predict(
                inputs, batch_size=batch_size, verbose=verbose, steps=steps, callbacks=callbacks
            )

        return self._answer_photos(x, run, batch_size or 32)

    def predict_on_batch(self, x):
        return self._answer_photos(x, super().predict_on_batch, len(x))

    def _answer_photos(self, x, run, batch_size):
        """`run` (Keras' predict or predict_on_batch) on photos: a batch of one size as it is
        (the predict step converts it), a list letterboxed here into one batch (letterboxing a
        letterboxed photo again changes nothing). A centre-cropping converter would crop twice,
        so its lists, like every photo of a model built for dynamic input, take the direct path."""
        _check_photos(x)
        if not isinstance(x, (list, tuple)):
            if self.image_converter.image_size is None:
                return self._predict_converted(x, batch_size)
            return run(x)
        if self.image_converter.image_size is None or self.image_converter.crop_fraction is not None:
            return self._predict_converted(x, batch_size)
        letterboxed, scales, sizes = self.image_converter.resize_each(x)
        return self._to_photos(run(letterboxed), scales, sizes)

    def _predict_converted(self, photos, batch_size):
        """Photos converted here in batches and run outside Keras' compiled predict (whose
        retracing turns a dynamic model's traced sizes into unknowns, and decoding places its
        anchors from the size)."""
        chunks = []
        for start in range(0, len(photos), batch_size):
            converted, scales, sizes = self.image_converter.resize_each(photos[start : start + batch_size])
            raw = self(normalise_image(converted), training=False)
            answers = self.decode_predictions(raw, converted.shape[1:3])
            answers = {key: ops.convert_to_numpy(value) for key, value in answers.items()}
            chunks.append(self._to_photos(answers, scales, sizes))
        return {key: np.concatenate([chunk[key] for chunk in chunks]) for key in chunks[0]}

    @staticmethod
    def _to_photos(answers, scales, sizes):
        """Answers for letterboxed copies of a list of photos -> each photo's pixels."""
        if "boxes" in answers:
            answers["boxes"] = ops.convert_to_numpy(boxes_to_original(answers["boxes"], scales, sizes))
        return answers

    # === Training ===
    def compile(self, optimizer="auto", cross_replica_sum=None, **kwargs):
        """Defaults to SGD with momentum 0.9, the papers' optimizer; the loss is built in.

        `cross_replica_sum(value)`: under replicated data parallelism where each replica
        runs its own step (tf.distribute), the sum of `value` over the replicas. The loss
        uses it to normalise by the global batch (positives, replicas), so the loss and
        gradients equal those of one process on the same batch. The trainer passes it.
        """
        if "loss" in kwargs:
            raise ModelError(f"{type(self).__name__} computes its own loss; do not pass `loss` to compile().")
        if optimizer == "auto":
            optimizer = keras.optimizers.SGD(learning_rate=0.01, momentum=0.9, global_clipnorm=10.0)
        decoupled = getattr(keras.optimizers.get(optimizer), "weight_decay", None)
        if self.weight_decay and decoupled:
            raise ModelError(
                f"The optimizer's weight_decay={decoupled} would decay the kernels a second time: the "
                f"model's loss already has weight_decay={self.weight_decay}. Set one of them to 0."
            )
        super().compile(optimizer=optimizer, **kwargs)
        self.cross_replica_sum = cross_replica_sum

    def replica_counts(self, *local_values):
        """The global sums of per-replica values, and the replica count, in one all-reduce."""
        local = ops.stack([*[ops.cast(value, "float32") for value in local_values], ops.ones(())])
        cross_replica_sum = getattr(self, "cross_replica_sum", None)
        return ops.unstack(cross_replica_sum(local) if cross_replica_sum else local)

    def regularisation_loss(self):
        """weight_decay / 2 * the sum of squared conv and dense kernels of the trainable weights
        (L2 as in Model Garden), plus the layers' own regularisation losses."""
        total = ops.zeros(())
        if self.weight_decay:
            kernels = [w for w in self.trainable_weights if w.path.endswith("kernel")]
            total += (
                0.5
                * self.weight_decay
                * ops.sum(ops.stack([ops.sum(ops.square(ops.cast(w, "float32"))) for w in kernels]))
            )
        if self.losses:
            total += ops.sum(ops.stack([ops.cast(loss, "float32") for loss in self.losses]))
        return total

    def fit(self, *args, **kwargs):
        self._build_optimizer()
        return super().fit(*args, **kwargs)

    def train_on_batch(self, *args, **kwargs):
        self._build_optimizer()
        return super().train_on_batch(*args, **kwargs)

    def _build_optimizer(self):
        """Creates the optimizer's slots for the variables trainable now, before the first
        traced step: a variable created while tracing makes tf.function trace the whole
        training step twice. Not in compile(), so that freezing a part after compile()
        still leaves it without slots."""
        if self.optimizer is None or self.optimizer.built:
            return
        strategy = getattr(self, "distribute_strategy", None)  # TensorFlow's trainer only
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            self.optimizer.build(self.trainable_variables)

    # === Published weights ===
    @classmethod
    def from_preset(cls, name, checkpoint=None, cache_dir=None):
        """The model of a published checkpoint (`spinenet_tf.preset_names()`), downloaded and
        converted on first use, then loaded from `cache_dir` (default ~/.cache/spinenet_tf/presets).

        `checkpoint`: a local copy of the preset's archive (.tar.gz), checkpoint prefix or
        directory, used instead of the download on a machine without network.
        """
        from spinenet_tf.pretrained.presets import get_preset, preset_model  # loads TensorFlow on use

        get_preset(name).check_loadable(cls.__name__)
        return preset_model(name, checkpoint, cache_dir)

    # === Serialization ===
    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "image_converter": keras.saving.serialize_keras_object(self.image_converter),
            **self.task_config(),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["dtype"] = keras.dtype_policies.deserialize(config["dtype"]) if config.get("dtype") else None
        return cls(**config)
