"""Mask R-CNN (He et al. 2017), Faster R-CNN and Cascade R-CNN (Cai & Vasconcelos 2018) on any
pyramid backbone: the two-stage detectors of the SpineNet and "Proper Reuse" papers.

One class, three detectors: `include_mask=False` is Faster R-CNN, `cascade_iou_thresholds`
adds Cascade R-CNN's stages. Layouts, defaults and losses follow TF Model Garden's
`maskrcnn_spinenet_coco` / `cascadercnn_spinenet_coco`, so the parameter counts equal
its models'. The second stage depends on the labels while training (RoIs are sampled
against the ground truth), so the model takes them as inputs then: `fit(images, labels)`
hands `call` {"image", "boxes", "classes", "masks"} (see `train_step`), and every layer,
batch norm updates included, runs inside `call` on every backend.
"""

import dataclasses

import keras
from keras import ops

from spinenet_tf.detection.anchors import AnchorSpec, generate_anchors
from spinenet_tf.detection.box_coder import clip_boxes, decode_boxes, encode_boxes
from spinenet_tf.detection.decoders import check_decoder, decode_pyramid
from spinenet_tf.detection.head import rpn_head
from spinenet_tf.detection.losses import huber_loss, sigmoid_cross_entropy
from spinenet_tf.detection.postprocess import DetectionSpec, gather_rows, select_detections
from spinenet_tf.detection.proposals import ProposalSpec, generate_proposals
from spinenet_tf.detection.rcnn_heads import box_head, mask_head
from spinenet_tf.detection.roi_align import crop_mask_targets, multilevel_roi_align
from spinenet_tf.detection.sampling import sample_balanced
from spinenet_tf.detection.target_assignment import assign_targets, pairwise_iou
from spinenet_tf.errors import ModelError
from spinenet_tf.layers.conv_norm import ConvNormSettings
from spinenet_tf.task import Task

# Fast R-CNN box coding weights of each stage (Cascade R-CNN tightens them stage by stage).
CASCADE_REGRESSION_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))
LABEL_KEYS = ("boxes", "classes", "masks")


def _check_labels(labels, include_mask):
    for key in ("boxes", "classes", *(("masks",) if include_mask else ())):
        if key not in labels:
            hint = " (the input pipeline's mask_crop_size labels)" if key == "masks" else ""
            raise ModelError(f"MaskRCNN labels need {key!r}{hint}; got {sorted(labels)}.")
    boxes, classes = labels["boxes"], labels["classes"]
    if len(boxes.shape) != 3 or boxes.shape[-1] != 4:
        raise ModelError(f"labels['boxes'] must have shape [batch, max_boxes, 4], got {tuple(boxes.shape)}.")
    if len(classes.shape) != 2 or classes.shape[1] != boxes.shape[1]:
        raise ModelError(
            f"labels['classes'] must have shape [batch, max_boxes] = [batch, {boxes.shape[1]}], "
            f"got {tuple(classes.shape)}."
        )
    if include_mask:
        masks = labels["masks"]
        if len(masks.shape) != 4 or masks.shape[1] != boxes.shape[1] or masks.shape[2] != masks.shape[3]:
            raise ModelError(
                f"labels['masks'] must have shape [batch, {boxes.shape[1]}, size, size] (each mask cropped "
                f"to its box), got {tuple(masks.shape)}."
            )


@dataclasses.dataclass
class RoiLabels:
    """RoIs of one stage and what they should predict."""

    rois: object  # [B, R, 4]
    valid: object  # [B, R] bool: a real sample, not padding
    positive: object  # [B, R] bool: matches a ground truth at the stage's IoU
    matched: object  # [B, R] int: that ground truth
    classes: object  # [B, R] int: its class, 0 (background) where not positive


@keras.saving.register_keras_serializable(package="spinenet_tf")
class MaskRCNN(Task, keras.Model):
    """Two-stage detector: backbone -> (identity | FPN) -> RPN -> RoIAlign -> box head(s)
    [-> mask head].

    `predict` takes photos (uint8 or float 0..255, any size; see `Task`) and gives
    {"boxes", "scores", "classes", "num_detections"} and, with masks, "masks" [B, D, 28, 28]:
    each detection's mask probabilities in its box's frame (`spinenet_tf.paste_masks`
    puts them on the photo). Calling the model on a normalised, model-sized batch gives
    the same detections in input pixels. `fit` takes that input and labels {"boxes"
    [B, M, 4] input pixels, "classes" [B, M] (-1 = padding), "masks" [B, M, S, S] each
    object's mask cropped to its box}; class 0 is background.

    The loss (Model Garden's): RPN sigmoid cross-entropy and Huber (delta 1/9) over 256
    sampled anchors per image; per stage softmax cross-entropy over 512 sampled RoIs and
    Huber (delta 1) on the positives' boxes, averaged over the stages; sigmoid
    cross-entropy of the positives' masks on their class; L2 weight decay.
    """

    def __init__(
        self,
        backbone,
        num_classes,
        decoder="auto",
        min_level=3,
        max_level=7,
        fpn_num_filters=256,
        num_scales=1,
        aspect_ratios=(0.5, 1.0, 2.0),
        anchor_size=3.0,
        rpn_num_convs=1,
        rpn_num_filters=256,
        rpn_positive_threshold=0.7,
        rpn_negative_threshold=0.3,
        rpn_samples=256,
        rpn_positive_fraction=0.5,
        proposal_pre_nms_top_k=2000,
        proposal_nms_iou_threshold=0.7,
        num_proposals=1000,
        test_proposal_pre_nms_top_k=1000,
        test_num_proposals=1000,
        roi_samples=512,
        roi_positive_fraction=0.25,
        roi_positive_threshold=0.5,
        cascade_iou_thresholds=(),
        roi_size=7,
        box_head_num_convs=4,
        box_head_num_filters=256,
        box_head_num_fcs=1,
        box_head_fc_dims=1024,
        class_agnostic_boxes=False,
        include_mask=True,
        mask_roi_size=14,
        mask_head_num_convs=4,
        mask_head_num_filters=256,
        mask_samples=128,
        class_agnostic_masks=False,
        rpn_huber_delta=1.0 / 9.0,
        box_huber_delta=1.0,
        weight_decay=4e-5,
        score_threshold=0.05,
        nms_iou_threshold=0.5,
        pre_nms_top_k=5000,
        max_detections=100,
        nms="per_class",
        activation="relu",
        norm_momentum=0.997,
        norm_epsilon=1e-4,
        sync_batch_norm=False,
        seed=None,
        image_converter=None,
        dtype=None,
        **kwargs,
    ):
        backbone = self.resolve_backbone(backbone, weight_decay)
        check_decoder(decoder)
        if num_classes < 2:
            raise ModelError(f"num_classes must be >= 2 (class 0 is background), got {num_classes}.")
        cascade_iou_thresholds = tuple(cascade_iou_thresholds)
        stage_thresholds = (roi_positive_threshold, *cascade_iou_thresholds)
        if len(stage_thresholds) > len(CASCADE_REGRESSION_WEIGHTS):
            raise ModelError(
                f"cascade_iou_thresholds: at most {len(CASCADE_REGRESSION_WEIGHTS) - 1} extra stages "
                f"(one box coding per stage), got {list(cascade_iou_thresholds)}."
            )
        if cascade_iou_thresholds and not class_agnostic_boxes:
            raise ModelError(
                "Cascade R-CNN refines one box per RoI from stage to stage: set class_agnostic_boxes=True "
                "with cascade_iou_thresholds."
            )
        if not all(0.0 < t <= 1.0 for t in stage_thresholds) or list(stage_thresholds) != sorted(
            stage_thresholds
        ):
            raise ModelError(
                f"roi_positive_threshold and cascade_iou_thresholds must increase within (0, 1], "
                f"got {list(stage_thresholds)}."
            )
        if not 0.0 < rpn_negative_threshold <= rpn_positive_threshold <= 1.0:
            raise ModelError(
                f"Need 0 < rpn_negative_threshold <= rpn_positive_threshold <= 1, got "
                f"{rpn_negative_threshold}, {rpn_positive_threshold}."
            )
        settings = ConvNormSettings(
            activation=activation,
            norm_momentum=norm_momentum,
            norm_epsilon=norm_epsilon,
            sync_batch_norm=sync_batch_norm,
            dtype=dtype,
        )
        anchor_spec = AnchorSpec(min_level, max_level, num_scales, tuple(aspect_ratios), anchor_size)

        # === Networks: one functional model to the RPN outputs, one per second-stage head ===
        image = keras.Input(shape=backbone.input.shape[1:], name="image")
        decoder, features = decode_pyramid(
            backbone(image), decoder, min_level, max_level, fpn_num_filters, settings
        )
        rpn = rpn_head(features, anchor_spec.anchors_per_location, rpn_num_convs, rpn_num_filters, settings)
        outputs = dict(features)
        for level, (logits, deltas) in rpn.items():
            outputs[f"rpn_logits_{level}"], outputs[f"rpn_deltas_{level}"] = logits, deltas
        channels = features[f"P{min_level}"].shape[-1]
        super().__init__(dtype=dtype, **kwargs)
        self.dense_network = keras.Model(image, outputs, name="dense_network")
        self.box_heads = [
            box_head(
                roi_size,
                channels,
                num_classes,
                box_head_num_convs,
                box_head_num_filters,
                box_head_num_fcs,
                box_head_fc_dims,
                class_agnostic_boxes,
                settings,
                name="box_head" if stage == 0 else f"box_head_stage{stage + 1}",
            )
            for stage in range(len(stage_thresholds))
        ]
        self.mask_head = (
            mask_head(
                mask_roi_size,
                channels,
                1 if class_agnostic_masks else num_classes,
                mask_head_num_convs,
                mask_head_num_filters,
                settings,
            )
            if include_mask
            else None
        )
        self.seed_generator = keras.random.SeedGenerator(seed)

        # === Config ===
        self._init_task(backbone, image_converter)
        self.num_classes = num_classes
        self.decoder = decoder
        self.min_level, self.max_level = min_level, max_level
        self.fpn_num_filters = fpn_num_filters
        self.anchor_spec = anchor_spec
        self.rpn_num_convs, self.rpn_num_filters = rpn_num_convs, rpn_num_filters
        self.rpn_positive_threshold, self.rpn_negative_threshold = (
            rpn_positive_threshold,
            rpn_negative_threshold,
        )
        self.rpn_samples, self.rpn_positive_fraction = rpn_samples, rpn_positive_fraction
        self.train_proposals = ProposalSpec(proposal_pre_nms_top_k, proposal_nms_iou_threshold, num_proposals)
        self.test_proposals = ProposalSpec(
            test_proposal_pre_nms_top_k, proposal_nms_iou_threshold, test_num_proposals
        )
        self.roi_samples, self.roi_positive_fraction = roi_samples, roi_positive_fraction
        self.stage_thresholds = stage_thresholds
        self.roi_size, self.mask_roi_size = roi_size, mask_roi_size
        self.box_head_num_convs, self.box_head_num_filters = box_head_num_convs, box_head_num_filters
        self.box_head_num_fcs, self.box_head_fc_dims = box_head_num_fcs, box_head_fc_dims
        self.class_agnostic_boxes = class_agnostic_boxes
        self.include_mask = include_mask
        self.mask_head_num_convs, self.mask_head_num_filters = mask_head_num_convs, mask_head_num_filters
        self.mask_samples, self.class_agnostic_masks = mask_samples, class_agnostic_masks
        self.rpn_huber_delta, self.box_huber_delta, self.weight_decay = (
            rpn_huber_delta,
            box_huber_delta,
            weight_decay,
        )
        self.detection_spec = DetectionSpec(
            score_threshold, nms_iou_threshold, pre_nms_top_k, max_detections, nms
        )
        self.activation = activation
        self.norm_momentum, self.norm_epsilon, self.sync_batch_norm = (
            norm_momentum,
            norm_epsilon,
            sync_batch_norm,
        )
        self.seed = seed
        self._anchor_cache = {}
        self.built = True

    @property
    def levels(self):
        return [f"P{level}" for level in range(self.min_level, self.max_level + 1)]

    # === Anchors ===
    def level_anchors(self, image_size):
        """Anchors per level ([N_l, 4] each) for an (H, W) input, in the RPN outputs' order."""
        if any(size is None for size in image_size):
            raise ModelError(
                f"MaskRCNN places anchors from the static image size, got {tuple(image_size)}; "
                "feed batches whose height and width are known when the graph is traced."
            )
        key = tuple(int(size) for size in image_size)
        if key not in self._anchor_cache:
            anchors, start = generate_anchors(key, self.anchor_spec), 0
            per_level = []
            for level in range(self.min_level, self.max_level + 1):
                stride = 2**level
                count = -(-key[0] // stride) * -(-key[1] // stride) * self.anchor_spec.anchors_per_location
                per_level.append(anchors[start : start + count])
                start += count
            self._anchor_cache[key] = tuple(per_level)  # a list would be tracked (and refused by export)
        return self._anchor_cache[key]

    # === Forward pass ===
    def train_step(self, *args):
        return super().train_step(*args[:-1], self._labels_into_inputs(args[-1]))

    def test_step(self, *args):
        return super().test_step(*args[:-1], self._labels_into_inputs(args[-1]))

    @staticmethod
    def _labels_into_inputs(data):
        """(images, labels) -> ({"image", **labels}, labels): the second stage samples against them."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if isinstance(x, dict) or y is None:
            return data
        if not isinstance(y, dict):
            raise ModelError(
                f"MaskRCNN labels must be a dict with 'boxes', 'classes' and 'masks'; got {type(y).__name__}."
            )
        return keras.utils.pack_x_y_sample_weight({"image": x, **y}, y, sample_weight)

    def call(self, inputs, training=False):
        """Inference: detections (in input pixels). With labels in `inputs`: the outputs the
        loss needs (predictions and their sampled targets)."""
        labels = None
        if isinstance(inputs, dict):
            labels = {key: inputs[key] for key in LABEL_KEYS if key in inputs}
            inputs = inputs["image"]
        outputs = self.dense_network(inputs, training=training)
        features = [outputs[level] for level in self.levels]
        logits = [outputs[f"rpn_logits_{level}"] for level in self.levels]
        deltas = [outputs[f"rpn_deltas_{level}"] for level in self.levels]
        image_size = tuple(inputs.shape[1:3])
        anchors = self.level_anchors(image_size)
        if labels is None:
            return self._detect(features, logits, deltas, anchors, image_size)
        _check_labels(labels, self.include_mask)
        return self._training_outputs(features, logits, deltas, anchors, image_size, labels, training)

    def _roi_head(self, stage, features, rois, training):
        """Class logits [B, R, K] and box deltas [B, R, 4 or 4K] of RoIs [B, R, 4]."""
        crops = multilevel_roi_align(features, rois, self.roi_size, self.min_level)
        batch, count = ops.shape(rois)[0], rois.shape[1]
        crops = ops.reshape(crops, (-1, self.roi_size, self.roi_size, crops.shape[-1]))
        class_logits, box_deltas = self.box_heads[stage](crops, training=training)
        return (
            ops.reshape(class_logits, (batch, count, self.num_classes)),
            ops.reshape(box_deltas, (batch, count, box_deltas.shape[-1])),
        )

    def _mask_logits(self, features, boxes, classes, training):
        """Mask logits [B, D, 2S, 2S] of boxes [B, D, 4], each on its class's channel."""
        crops = multilevel_roi_align(features, boxes, self.mask_roi_size, self.min_level)
        batch, count = ops.shape(boxes)[0], boxes.shape[1]
        size = 2 * self.mask_roi_size
        crops = ops.reshape(crops, (-1, self.mask_roi_size, self.mask_roi_size, crops.shape[-1]))
        logits = self.mask_head(crops, training=training)
        logits = ops.reshape(logits, (batch, count, size, size, logits.shape[-1]))
        if self.class_agnostic_masks:
            return logits[..., 0]
        channel = ops.reshape(ops.cast(classes, "int32"), (batch, count, 1, 1, 1))
        return ops.squeeze(ops.take_along_axis(logits, channel, axis=-1), -1)

    def _stage_boxes(self, stage, box_deltas, rois):
        """Decoded boxes of a stage: [B, R, 4] class-agnostic or [B, R, K, 4] per class."""
        weights = CASCADE_REGRESSION_WEIGHTS[stage]
        if self.class_agnostic_boxes:
            return decode_boxes(box_deltas, rois, weights)
        per_class = ops.reshape(
            box_deltas, (ops.shape(box_deltas)[0], box_deltas.shape[1], self.num_classes, 4)
        )
        return decode_boxes(per_class, ops.expand_dims(rois, 2), weights)

    def _detect(self, features, logits, deltas, anchors, image_size):
        rois, _, valid = generate_proposals(logits, deltas, anchors, image_size, self.test_proposals)
        probabilities = []
        for stage in range(len(self.stage_thresholds)):
            class_logits, box_deltas = self._roi_head(stage, features, rois, training=False)
            probabilities.append(ops.softmax(class_logits, axis=-1))
            boxes = self._stage_boxes(stage, box_deltas, rois)
            if stage + 1 < len(self.stage_thresholds):
                rois = clip_boxes(boxes, image_size)
        # Cascade R-CNN: the stages' class scores averaged (Model Garden's class ensemble).
        scores = ops.mean(ops.stack(probabilities), axis=0) * ops.expand_dims(ops.cast(valid, "float32"), -1)
        detections = select_detections(scores, boxes, image_size, self.detection_spec)
        if self.include_mask:
            mask_logits = self._mask_logits(
                features, detections["boxes"], detections["classes"], training=False
            )
            detections["masks"] = ops.sigmoid(mask_logits)
        return detections

    # === Training ===
    def _label_rois(self, rois, valid, gt_boxes, gt_classes, threshold):
        """Each RoI's best-overlapping ground truth, positive at IoU >= threshold."""
        iou = pairwise_iou(rois, gt_boxes)  # [B, R, M]
        iou = ops.where(ops.expand_dims(gt_classes >= 0, 1), iou, -1.0)
        matched = ops.cast(ops.argmax(iou, axis=-1), "int32")
        positive = valid & (ops.max(iou, axis=-1) >= threshold)
        classes = ops.where(positive, ops.take_along_axis(gt_classes, matched, axis=1), 0)
        return RoiLabels(rois, valid, positive, matched, classes)

    def _sample_rois(self, proposals, proposal_valid, gt_boxes, gt_classes):
        """The first stage's training RoIs: proposals and ground-truth boxes, sampled."""
        candidates = ops.concatenate([proposals, gt_boxes], axis=1)
        valid = ops.concatenate([proposal_valid, gt_classes >= 0], axis=1)
        labels = self._label_rois(candidates, valid, gt_boxes, gt_classes, self.stage_thresholds[0])
        index, _, sampled = sample_balanced(
            labels.positive,
            labels.valid & ~labels.positive,
            self.roi_samples,
            self.roi_positive_fraction,
            self.seed_generator,
        )
        return RoiLabels(
            gather_rows(candidates, index),
            sampled,
            gather_rows(labels.positive, index) & sampled,
            gather_rows(labels.matched, index),
            ops.where(sampled, gather_rows(labels.classes, index), 0),
        )

    def _rpn_outputs(self, logits, deltas, anchors, gt_boxes, gt_classes):
        all_anchors = ops.concatenate([ops.convert_to_tensor(a) for a in anchors], axis=0)
        class_targets, box_targets, class_weights, _ = assign_targets(
            all_anchors, gt_boxes, gt_classes, self.rpn_positive_threshold, self.rpn_negative_threshold
        )
        positive = class_targets >= 0
        negative = (class_weights > 0) & ~positive
        index, is_positive, valid = sample_balanced(
            positive, negative, self.rpn_samples, self.rpn_positive_fraction, self.seed_generator
        )
        return {
            "logits": gather_rows(ops.concatenate(logits, axis=1), index),
            "labels": ops.cast(is_positive, "float32"),
            "weights": ops.cast(valid, "float32"),
            "deltas": gather_rows(ops.concatenate(deltas, axis=1), index),
            "targets": gather_rows(box_targets, index),
        }

    def _training_outputs(self, features, logits, deltas, anchors, image_size, labels, training):
        gt_boxes = ops.cast(labels["boxes"], "float32")
        gt_classes = ops.cast(labels["classes"], "int32")
        outputs = {"rpn": self._rpn_outputs(logits, deltas, anchors, gt_boxes, gt_classes)}
        proposals, _, proposal_valid = generate_proposals(
            logits, deltas, anchors, image_size, self.train_proposals
        )
        rois = self._sample_rois(proposals, proposal_valid, gt_boxes, gt_classes)
        stages = []
        for stage in range(len(self.stage_thresholds)):
            class_logits, box_deltas = self._roi_head(stage, features, rois.rois, training)
            stages.append(self._stage_targets(stage, class_logits, box_deltas, rois, gt_boxes))
            if stage + 1 < len(self.stage_thresholds):  # Cascade: this stage's boxes, relabelled
                boxes = clip_boxes(self._stage_boxes(stage, box_deltas, rois.rois), image_size)
                rois = self._label_rois(
                    ops.stop_gradient(boxes),
                    rois.valid,
                    gt_boxes,
                    gt_classes,
                    self.stage_thresholds[stage + 1],
                )
        outputs["stages"] = stages
        if self.include_mask:
            outputs["mask"] = self._mask_outputs(features, rois, gt_boxes, labels["masks"], training)
        return outputs

    def _stage_targets(self, stage, class_logits, box_deltas, rois, gt_boxes):
        if not self.class_agnostic_boxes:  # the deltas of each RoI's own class
            box_deltas = ops.reshape(box_deltas, (ops.shape(box_deltas)[0], box_deltas.shape[1], -1, 4))
            own_class = ops.reshape(rois.classes, (-1, rois.classes.shape[1], 1, 1))
            box_deltas = ops.squeeze(ops.take_along_axis(box_deltas, own_class, axis=2), 2)
        matched_boxes = gather_rows(gt_boxes, rois.matched)
        return {
            "class_logits": class_logits,
            "class_targets": rois.classes,
            "weights": ops.cast(rois.valid, "float32"),
            "box_deltas": box_deltas,
            "box_targets": encode_boxes(matched_boxes, rois.rois, CASCADE_REGRESSION_WEIGHTS[stage]),
            "box_weights": ops.cast(rois.positive, "float32"),
        }

    def _mask_outputs(self, features, rois, gt_boxes, gt_masks, training):
        """Mask logits and targets of up to `mask_samples` positive RoIs of the last stage."""
        count = min(self.mask_samples, rois.rois.shape[1])
        order_bias = ops.arange(rois.rois.shape[1], dtype="float32") / (2.0 * rois.rois.shape[1])
        _, index = ops.top_k(ops.cast(rois.positive, "float32") - order_bias, count)
        mask_rois, matched = gather_rows(rois.rois, index), gather_rows(rois.matched, index)
        logits = self._mask_logits(features, mask_rois, gather_rows(rois.classes, index), training)
        targets = crop_mask_targets(gt_masks, gt_boxes, mask_rois, matched, 2 * self.mask_roi_size)
        return {
            "logits": logits,
            "targets": ops.cast(targets >= 0.5, "float32"),
            "weights": ops.cast(gather_rows(rois.positive, index), "float32"),
        }

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if sample_weight is not None:
            raise ModelError("MaskRCNN does not take sample weights; drop boxes by giving them class -1.")
        if not isinstance(y_pred, dict) or "stages" not in y_pred:
            raise ModelError(
                "MaskRCNN computes its loss from labelled inputs: call fit/evaluate with labels."
            )
        replicas = self.replica_counts()[0]
        rpn = y_pred["rpn"]
        rpn_class = ops.sum(sigmoid_cross_entropy(rpn["labels"], rpn["logits"]) * rpn["weights"]) / ops.cast(
            ops.size(rpn["weights"]), "float32"
        )
        rpn_box = _mean_over(
            huber_loss(rpn["targets"], rpn["deltas"], self.rpn_huber_delta), rpn["labels"] * rpn["weights"]
        )
        stage_losses = []
        for stage in y_pred["stages"]:
            log_probabilities = ops.log_softmax(ops.cast(stage["class_logits"], "float32"), axis=-1)
            picked = ops.take_along_axis(
                log_probabilities, ops.expand_dims(stage["class_targets"], -1), axis=-1
            )
            class_loss = -ops.sum(picked[..., 0] * stage["weights"]) / ops.maximum(
                ops.sum(stage["weights"]), 1.0
            )
            box_loss = _mean_over(
                huber_loss(stage["box_targets"], stage["box_deltas"], self.box_huber_delta),
                stage["box_weights"],
            )
            stage_losses.append(class_loss + box_loss)
        total = rpn_class + rpn_box + ops.mean(ops.stack(stage_losses))
        if self.include_mask:
            mask = y_pred["mask"]
            per_pixel = sigmoid_cross_entropy(mask["targets"], mask["logits"])
            pixels = per_pixel.shape[-1] * per_pixel.shape[-2]
            total += ops.sum(ops.sum(per_pixel, axis=(-1, -2)) * mask["weights"]) / ops.maximum(
                ops.sum(mask["weights"]) * pixels, 1.0
            )
        return (total + self.regularisation_loss()) / replicas

    # === Decoding and profile ===
    def decode_predictions(self, raw_outputs, image_size):
        """The model's output is already final detections (in input pixels)."""
        return dict(raw_outputs)

    def profile_parts(self, input_shape):
        """(functional part, input shape, times run per image) for `profile`: the dense network
        once, each box head on every proposal, the mask head on every detection."""
        channels = self.box_heads[0].input.shape[-1]
        parts = [(self.dense_network, input_shape, 1)]
        parts += [(head, head.input.shape[1:], self.test_proposals.num_proposals) for head in self.box_heads]
        if self.include_mask:
            parts.append(
                (
                    self.mask_head,
                    (self.mask_roi_size, self.mask_roi_size, channels),
                    self.detection_spec.max_detections,
                )
            )
        return parts

    # === Serialization ===
    def task_config(self):
        detection = self.detection_spec
        return {
            "num_classes": self.num_classes,
            "decoder": self.decoder,
            "min_level": self.min_level,
            "max_level": self.max_level,
            "fpn_num_filters": self.fpn_num_filters,
            "num_scales": self.anchor_spec.num_scales,
            "aspect_ratios": list(self.anchor_spec.aspect_ratios),
            "anchor_size": self.anchor_spec.anchor_size,
            "rpn_num_convs": self.rpn_num_convs,
            "rpn_num_filters": self.rpn_num_filters,
            "rpn_positive_threshold": self.rpn_positive_threshold,
            "rpn_negative_threshold": self.rpn_negative_threshold,
            "rpn_samples": self.rpn_samples,
            "rpn_positive_fraction": self.rpn_positive_fraction,
            "proposal_pre_nms_top_k": self.train_proposals.pre_nms_top_k,
            "proposal_nms_iou_threshold": self.train_proposals.nms_iou_threshold,
            "num_proposals": self.train_proposals.num_proposals,
            "test_proposal_pre_nms_top_k": self.test_proposals.pre_nms_top_k,
            "test_num_proposals": self.test_proposals.num_proposals,
            "roi_samples": self.roi_samples,
            "roi_positive_fraction": self.roi_positive_fraction,
            "roi_positive_threshold": self.stage_thresholds[0],
            "cascade_iou_thresholds": list(self.stage_thresholds[1:]),
            "roi_size": self.roi_size,
            "box_head_num_convs": self.box_head_num_convs,
            "box_head_num_filters": self.box_head_num_filters,
            "box_head_num_fcs": self.box_head_num_fcs,
            "box_head_fc_dims": self.box_head_fc_dims,
            "class_agnostic_boxes": self.class_agnostic_boxes,
            "include_mask": self.include_mask,
            "mask_roi_size": self.mask_roi_size,
            "mask_head_num_convs": self.mask_head_num_convs,
            "mask_head_num_filters": self.mask_head_num_filters,
            "mask_samples": self.mask_samples,
            "class_agnostic_masks": self.class_agnostic_masks,
            "rpn_huber_delta": self.rpn_huber_delta,
            "box_huber_delta": self.box_huber_delta,
            "weight_decay": self.weight_decay,
            **detection.config(),
            "activation": self.activation,
            "norm_momentum": self.norm_momentum,
            "norm_epsilon": self.norm_epsilon,
            "sync_batch_norm": self.sync_batch_norm,
            "seed": self.seed,
        }


def _mean_over(per_coordinate, weights):
    """Mean of a [..., 4] loss over the coordinates of the entries with weight 1 (+0.01: none)."""
    return ops.sum(ops.sum(per_coordinate, axis=-1) * weights) / (4.0 * ops.sum(weights) + 0.01)
