"""Image classification on any pyramid backbone: the SpineNet paper's ImageNet / iNaturalist models."""

import keras
from keras import ops

from spinenet_tf.errors import ModelError
from spinenet_tf.layers.conv_norm import ConvNormSettings, conv_norm
from spinenet_tf.layers.image_converter import CENTER_CROP_FRACTION, ImageConverter
from spinenet_tf.layers.resample import ResizeToLevel
from spinenet_tf.task import Task

AGGREGATIONS = ("all", "top")


@keras.saving.register_keras_serializable(package="spinenet_tf")
class PyramidAggregation(keras.layers.Layer):
    """The pyramid as one feature map: "top" the coarsest level (Model Garden's classifier);
    "all" (the tensorflow/tpu SpineNet classifiers') from the coarsest level down, nearest
    resize to the next finer level (`ResizeToLevel`'s rows) and add, then divide by the
    number of levels."""

    def __init__(self, aggregation, **kwargs):
        super().__init__(**kwargs)
        self.aggregation = aggregation
        self.resize = {}

    def build(self, features_shape, image_shape):
        names = sorted(features_shape, key=lambda name: int(name[1:]))
        for name in names[:-1] if self.aggregation == "all" else []:
            self.resize[name] = ResizeToLevel(int(name[1:]), dtype=self.dtype_policy, name=f"{name}_resize")

    def call(self, features, image):
        names = sorted(features, key=lambda name: int(name[1:]))
        x = features[names[-1]]
        if self.aggregation == "top":
            return x
        for name in reversed(names[:-1]):
            x = self.resize[name](x, image) + features[name]
        return x / len(names)

    def compute_output_shape(self, features_shape, image_shape):
        names = sorted(features_shape, key=lambda name: int(name[1:]))
        return features_shape[names[-1] if self.aggregation == "top" else names[0]]

    def get_config(self):
        return {**super().get_config(), "aggregation": self.aggregation}


def _check_labels(y, num_classes):
    shape = tuple(getattr(y, "shape", ()))
    if len(shape) != 1 and not (len(shape) == 2 and shape[1] == 1):
        raise ModelError(
            f"ImageClassifier labels are class indices [batch] (int, 0..{num_classes - 1}); "
            f"got shape {shape}."
        )
    return ops.reshape(ops.cast(y, "int32"), (-1,))


@keras.saving.register_keras_serializable(package="spinenet_tf")
class ImageClassifier(Task, keras.Model):
    """Classifier: backbone -> pyramid aggregation -> (1x1 embedding) -> global average pool ->
    dropout -> dense logits.

    `predict` takes photos (uint8 or float 0..255, any size; see `Task`): each is centre-
    cropped (0.875 of its shorter side) and resized to the backbone's input size, and the
    answer is {"probabilities": [B, num_classes], "classes": [B, k], "scores": [B, k]}, the
    k = min(5, num_classes) most likely classes, best first. Calling the model on normalised,
    model-sized input (the training pipeline's) gives the logits [B, num_classes]; `fit`
    takes that input and integer labels [B].

    Loss: softmax cross-entropy with `label_smoothing`, averaged over the global batch, plus
    weight_decay / 2 * the sum of squared conv and dense kernels (L2 as the tensorflow/tpu
    classifiers: 1e-4). compile() defaults to SGD with momentum 0.9 and top-1 / top-5 metrics.

    Args:
        backbone: a pyramid backbone ("P3".."P7") with a static input size.
        aggregation: "all" or "top" (see `PyramidAggregation`); "all" needs every level to
            have the same width (a SpineNet's endpoints do).
        embedding_filters: width of an optional 1x1 conv + BN + activation after the
            aggregation (0: none, as the published SpineNet classifiers).
        dropout_rate: dropout before the dense layer.
    """

    # Layers that int8 TFLite export leaves in float (see export/tflite.py): the class logits.
    int8_float_layers = ("logits",)

    def __init__(
        self,
        backbone,
        num_classes,
        aggregation="all",
        embedding_filters=0,
        dropout_rate=0.0,
        label_smoothing=0.0,
        weight_decay=1e-4,
        activation="relu",
        norm_momentum=0.9,
        norm_epsilon=1e-5,
        sync_batch_norm=False,
        image_converter=None,
        dtype=None,
        **kwargs,
    ):
        backbone = self.resolve_backbone(backbone, weight_decay)
        if aggregation not in AGGREGATIONS:
            raise ModelError(f"Unknown aggregation {aggregation!r}; use one of {AGGREGATIONS}.")
        if num_classes < 2:
            raise ModelError(f"num_classes must be >= 2, got {num_classes}.")
        if not 0.0 <= dropout_rate < 1.0:
            raise ModelError(f"dropout_rate must be in [0, 1), got {dropout_rate}.")
        if not 0.0 <= label_smoothing < 1.0:
            raise ModelError(f"label_smoothing must be in [0, 1), got {label_smoothing}.")
        image_shape = tuple(backbone.input.shape[1:])
        if None in image_shape[:2]:
            raise ModelError(
                "An ImageClassifier crops photos to its backbone's input size: build the backbone with a "
                f"static image_shape, e.g. (224, 224, 3); got {image_shape}."
            )
        settings = ConvNormSettings(
            activation=activation,
            norm_momentum=norm_momentum,
            norm_epsilon=norm_epsilon,
            sync_batch_norm=sync_batch_norm,
            dtype=dtype,
        )

        # === Functional graph ===
        image = keras.Input(shape=image_shape, name="image")
        features = backbone(image)
        if aggregation == "all" and len({feature.shape[-1] for feature in features.values()}) > 1:
            raise ModelError(
                "aggregation='all' adds the pyramid levels, which need one width; got "
                f"{ {name: feature.shape[-1] for name, feature in features.items()} }. Use aggregation='top'."
            )
        x = PyramidAggregation(aggregation, dtype=dtype, name="aggregation")(features, image)
        if embedding_filters:
            x = conv_norm(x, settings, embedding_filters, 1, "embedding")
        x = keras.layers.GlobalAveragePooling2D(dtype=dtype, name="final_avg_pool")(x)
        if dropout_rate:
            x = keras.layers.Dropout(dropout_rate, dtype=dtype, name="dropout")(x)
        logits = keras.layers.Dense(
            num_classes,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
            dtype=dtype,
            name="logits",
        )(x)
        super().__init__(inputs=image, outputs=logits, dtype=dtype, **kwargs)

        # === Config ===
        self._init_task(
            backbone, image_converter or ImageConverter(image_shape[:2], crop_fraction=CENTER_CROP_FRACTION)
        )
        self.num_classes = num_classes
        self.aggregation = aggregation
        self.embedding_filters = embedding_filters
        self.dropout_rate = dropout_rate
        self.label_smoothing = label_smoothing
        self.weight_decay = weight_decay
        self.activation = activation
        self.norm_momentum, self.norm_epsilon, self.sync_batch_norm = (
            norm_momentum,
            norm_epsilon,
            sync_batch_norm,
        )

    @property
    def top_k(self):
        return min(5, self.num_classes)

    # === Decoding ===
    def decode_predictions(self, raw_outputs, image_size):
        """Logits -> {"probabilities", "classes" (top k, best first), "scores" (their probabilities)}."""
        probabilities = ops.softmax(ops.cast(raw_outputs, "float32"), axis=-1)
        scores, classes = ops.top_k(probabilities, self.top_k)
        return {"probabilities": probabilities, "classes": ops.cast(classes, "int32"), "scores": scores}

    # === Training ===
    def compile(self, optimizer="auto", cross_replica_sum=None, metrics="auto", **kwargs):
        """Task.compile, with top-1 and top-k (k = min(5, num_classes)) accuracy by default."""
        if metrics == "auto":
            metrics = [
                keras.metrics.SparseCategoricalAccuracy(name="top1"),
                keras.metrics.SparseTopKCategoricalAccuracy(k=self.top_k, name=f"top{self.top_k}"),
            ]
        super().compile(optimizer=optimizer, cross_replica_sum=cross_replica_sum, metrics=metrics, **kwargs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if sample_weight is not None:
            raise ModelError("ImageClassifier does not take sample weights.")
        labels = _check_labels(y, self.num_classes)
        logits = ops.cast(y_pred, "float32")
        targets = ops.one_hot(labels, self.num_classes)
        if self.label_smoothing:
            targets = targets * (1.0 - self.label_smoothing) + self.label_smoothing / self.num_classes
        cross_entropy = -ops.sum(targets * ops.log_softmax(logits, axis=-1), axis=-1)
        # Each replica's share of the global mean: the optimizer all-reduce sums the shares.
        examples, replicas = self.replica_counts(ops.shape(logits)[0])
        return ops.sum(cross_entropy) / examples + self.regularisation_loss() / replicas

    # === Serialization ===
    def task_config(self):
        return {
            "num_classes": self.num_classes,
            "aggregation": self.aggregation,
            "embedding_filters": self.embedding_filters,
            "dropout_rate": self.dropout_rate,
            "label_smoothing": self.label_smoothing,
            "weight_decay": self.weight_decay,
            "activation": self.activation,
            "norm_momentum": self.norm_momentum,
            "norm_epsilon": self.norm_epsilon,
            "sync_batch_norm": self.sync_batch_norm,
        }
