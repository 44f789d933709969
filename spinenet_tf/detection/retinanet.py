"""RetinaNet (Lin et al. 2017) on any pyramid backbone: the detector of the SpineNet paper."""

import keras
from keras import ops

from spinenet_tf.detection.anchors import AnchorSpec, generate_anchors
from spinenet_tf.detection.decoders import check_decoder, decode_pyramid
from spinenet_tf.detection.head import retinanet_head
from spinenet_tf.detection.losses import huber_loss, sigmoid_focal_loss
from spinenet_tf.detection.nms import non_max_suppression
from spinenet_tf.detection.postprocess import DetectionSpec, detect
from spinenet_tf.detection.target_assignment import assign_targets
from spinenet_tf.errors import ModelError
from spinenet_tf.layers.conv_norm import ConvNormSettings
from spinenet_tf.task import Task


def _check_labels(y):
    """Labels are {"boxes": [B, M, 4] pixels ymin, xmin, ymax, xmax, "classes": [B, M] int, -1 = padding}."""
    if not isinstance(y, dict) or not {"boxes", "classes"} <= set(y):
        raise ModelError(
            "RetinaNet labels must be a dict with 'boxes' [batch, max_boxes, 4] and 'classes' "
            f"[batch, max_boxes]; got {type(y).__name__}{sorted(y) if isinstance(y, dict) else ''}."
        )
    boxes, classes = y["boxes"], y["classes"]
    if len(boxes.shape) != 3 or boxes.shape[-1] != 4:
        raise ModelError(f"labels['boxes'] must have shape [batch, max_boxes, 4], got {tuple(boxes.shape)}.")
    if len(classes.shape) != 2 or (
        None not in (classes.shape[1], boxes.shape[1]) and classes.shape[1] != boxes.shape[1]
    ):
        raise ModelError(
            f"labels['classes'] must have shape [batch, max_boxes] = [batch, {boxes.shape[1]}], "
            f"got {tuple(classes.shape)}."
        )
    return boxes, classes


@keras.saving.register_keras_serializable(package="spinenet_tf")
class RetinaNet(Task, keras.Model):
    """One-stage detector: backbone -> (identity | FPN) -> shared class/box subnets.

    `predict` takes photos (uint8 or float 0..255, any size; see `Task`) and gives final
    detections {"boxes", "scores", "classes", "num_detections"}, boxes [ymin, xmin, ymax,
    xmax] in each photo's pixels. Calling the model on normalised, model-sized input (the
    training pipeline's) gives raw outputs {"class_logits": [B, N, num_classes],
    "box_deltas": [B, N, 4]} over all anchors. `fit` takes that input and labels
    {"boxes": [B, M, 4] in input pixels, "classes": [B, M]} padded with class -1; anchors
    are labelled in-graph (see `target_assignment`). Class 0 is background (Model Garden's
    COCO convention: 91 outputs for 90 ids) and is never reported.

    The loss is focal loss + box_loss_weight * Huber, both normalised by the number of
    positive anchors in the batch (+1), plus weight_decay / 2 * sum of squared conv and
    dense kernels of the trainable weights (L2 weight decay as in Model Garden).

    `use_separable_conv` makes every 3x3 conv of the subnets depthwise-separable: Model
    Garden's head of the Mobile SpineNet detectors (`SpineNetMobile`).
    """

    # Layers that int8 TFLite export leaves in float, and those it quantises with dynamic
    # range (see export/tflite.py): the raw outputs; the head's prediction convs.
    int8_float_layers = ("class_logits", "box_deltas")
    int8_dynamic_layers = ("class_net_predict", "box_net_predict")

    def __init__(
        self,
        backbone,
        num_classes,
        decoder="auto",
        min_level=3,
        max_level=7,
        num_convs=4,
        num_filters=256,
        use_separable_conv=False,
        fpn_num_filters=256,
        num_scales=3,
        aspect_ratios=(0.5, 1.0, 2.0),
        anchor_size=3.0,
        positive_threshold=0.5,
        negative_threshold=0.4,
        focal_alpha=0.25,
        focal_gamma=1.5,
        huber_delta=0.1,
        box_loss_weight=50.0,
        weight_decay=4e-5,
        score_threshold=0.05,
        nms_iou_threshold=0.5,
        pre_nms_top_k=1000,
        max_detections=100,
        nms="per_class",
        activation="relu",
        norm_momentum=0.99,
        norm_epsilon=1e-3,
        sync_batch_norm=False,
        image_converter=None,
        dtype=None,
        **kwargs,
    ):
        backbone = self.resolve_backbone(backbone, weight_decay)
        check_decoder(decoder)
        if num_classes < 2:
            raise ModelError(f"num_classes must be >= 2 (class 0 is background), got {num_classes}.")
        if not 0.0 < negative_threshold <= positive_threshold <= 1.0:
            raise ModelError(
                f"Need 0 < negative_threshold <= positive_threshold <= 1, got {negative_threshold}, "
                f"{positive_threshold}."
            )
        anchor_spec = AnchorSpec(min_level, max_level, num_scales, tuple(aspect_ratios), anchor_size)
        detection_spec = DetectionSpec(score_threshold, nms_iou_threshold, pre_nms_top_k, max_detections, nms)
        settings = ConvNormSettings(
            activation=activation,
            norm_momentum=norm_momentum,
            norm_epsilon=norm_epsilon,
            sync_batch_norm=sync_batch_norm,
            dtype=dtype,
        )

        # === Functional graph ===
        image = keras.Input(shape=backbone.input.shape[1:], name="image")
        features = backbone(image)
        decoder, features = decode_pyramid(features, decoder, min_level, max_level, fpn_num_filters, settings)
        class_logits, box_deltas = retinanet_head(
            features,
            num_classes,
            anchor_spec.anchors_per_location,
            num_convs,
            num_filters,
            settings,
            use_separable_conv=use_separable_conv,
        )
        super().__init__(
            inputs=image,
            outputs={"class_logits": class_logits, "box_deltas": box_deltas},
            dtype=dtype,
            **kwargs,
        )

        # === Config ===
        self._init_task(backbone, image_converter)
        self.num_classes = num_classes
        self.decoder = decoder
        self.min_level, self.max_level = min_level, max_level
        self.num_convs, self.num_filters, self.fpn_num_filters = num_convs, num_filters, fpn_num_filters
        self.use_separable_conv = use_separable_conv
        self.anchor_spec = anchor_spec
        self.detection_spec = detection_spec
        self.positive_threshold, self.negative_threshold = positive_threshold, negative_threshold
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.huber_delta, self.box_loss_weight, self.weight_decay = huber_delta, box_loss_weight, weight_decay
        self.activation = activation
        self.norm_momentum, self.norm_epsilon, self.sync_batch_norm = (
            norm_momentum,
            norm_epsilon,
            sync_batch_norm,
        )
        self._anchor_cache = {}

    # === Anchors and decoding ===
    def anchors(self, image_size):
        """Anchors [N, 4] for an (H, W) input, in the order of the raw outputs."""
        if any(size is None for size in image_size):
            raise ModelError(
                f"RetinaNet places anchors from the static image size, got {tuple(image_size)}; "
                "feed batches whose height and width are known when the graph is traced."
            )
        key = tuple(int(size) for size in image_size)
        if key not in self._anchor_cache:
            self._anchor_cache[key] = generate_anchors(key, self.anchor_spec)
        return self._anchor_cache[key]

    def decode_predictions(self, raw_outputs, image_size, suppress=non_max_suppression):
        """Raw outputs -> final detections (see `postprocess.detect`; `suppress`: the NMS)."""
        return detect(
            raw_outputs["class_logits"],
            raw_outputs["box_deltas"],
            self.anchors(image_size),
            image_size,
            self.detection_spec,
            suppress,
        )

    # === Training ===
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if sample_weight is not None:
            raise ModelError("RetinaNet does not take sample weights; drop boxes by giving them class -1.")
        boxes, classes = _check_labels(y)
        anchors = self.anchors(tuple(x.shape[1:3]))
        class_targets, box_targets, class_weights, box_weights = assign_targets(
            anchors, boxes, classes, self.positive_threshold, self.negative_threshold
        )
        # The positives and the replica count of the global batch, in one all-reduce. Each
        # replica computes its share of the global loss; their sum (what the optimizer's
        # gradient all-reduce and Keras' loss tracker take) is the global loss.
        positives, replicas = self.replica_counts(ops.sum(box_weights))
        normaliser = positives + 1.0
        positive = ops.expand_dims(ops.cast(class_targets >= 0, "float32"), -1)
        one_hot = ops.one_hot(ops.maximum(class_targets, 0), self.num_classes) * positive
        focal = sigmoid_focal_loss(one_hot, y_pred["class_logits"], self.focal_alpha, self.focal_gamma)
        class_loss = ops.sum(focal * ops.expand_dims(class_weights, -1)) / normaliser
        huber = ops.mean(huber_loss(box_targets, y_pred["box_deltas"], self.huber_delta), axis=-1)
        box_loss = ops.sum(huber * box_weights) / normaliser
        return class_loss + self.box_loss_weight * box_loss + self.regularisation_loss() / replicas

    # === Serialization ===
    def task_config(self):
        spec, detection = self.anchor_spec, self.detection_spec
        return {
            "num_classes": self.num_classes,
            "decoder": self.decoder,
            "min_level": self.min_level,
            "max_level": self.max_level,
            "num_convs": self.num_convs,
            "num_filters": self.num_filters,
            "use_separable_conv": self.use_separable_conv,
            "fpn_num_filters": self.fpn_num_filters,
            "num_scales": spec.num_scales,
            "aspect_ratios": list(spec.aspect_ratios),
            "anchor_size": spec.anchor_size,
            "positive_threshold": self.positive_threshold,
            "negative_threshold": self.negative_threshold,
            "focal_alpha": self.focal_alpha,
            "focal_gamma": self.focal_gamma,
            "huber_delta": self.huber_delta,
            "box_loss_weight": self.box_loss_weight,
            "weight_decay": self.weight_decay,
            **detection.config(),
            "activation": self.activation,
            "norm_momentum": self.norm_momentum,
            "norm_epsilon": self.norm_epsilon,
            "sync_batch_norm": self.sync_batch_norm,
        }
