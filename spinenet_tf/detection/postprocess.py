"""From raw detector outputs to final detections: decode, select, NMS, top-k."""

import dataclasses

import numpy as np
from keras import ops

from spinenet_tf.detection.box_coder import clip_boxes, decode_boxes
from spinenet_tf.detection.nms import non_max_suppression

NMS_MODES = ("per_class", "class_agnostic")
# XLA's CPU top-k sorts its whole input: over the anchors of a large photo (hundreds of
# thousands for a dynamic-size model) or all their classes it takes up to a second. The top
# k of each chunk, then the top k of those, is the same result in about 1/40 of that (and
# costs TensorFlow's own kernel nothing noticeable).
TOP_K_CHUNK = 2**18


def chunked_top_k(values, k):
    """ops.top_k over the last axis of [B, N] (exact; in chunks when N is large)."""
    length = values.shape[1]
    if length <= 2 * TOP_K_CHUNK or k > TOP_K_CHUNK:
        return ops.top_k(values, k)
    padding = -length % TOP_K_CHUNK
    num_chunks = (length + padding) // TOP_K_CHUNK
    filler = ops.zeros_like(values[:, :padding]) + ops.min(values) - 1.0  # below every real value
    chunks = ops.reshape(ops.concatenate([values, filler], axis=1), (-1, num_chunks, TOP_K_CHUNK))
    chunk_values, chunk_index = ops.top_k(chunks, k)  # [B, chunks, k]
    chunk_index = chunk_index + ops.expand_dims(ops.arange(num_chunks, dtype="int32") * TOP_K_CHUNK, -1)
    top_values, order = ops.top_k(ops.reshape(chunk_values, (-1, num_chunks * k)), k)
    return top_values, ops.take_along_axis(ops.reshape(chunk_index, (-1, num_chunks * k)), order, axis=1)


@dataclasses.dataclass(frozen=True)
class DetectionSpec:
    """Post-processing settings (TF Model Garden's RetinaNet defaults, but pre_nms_top_k).

    `per_class` NMS lets boxes of different classes overlap; `class_agnostic` keeps one
    class (the best) per anchor and suppresses across classes. Class 0 is background
    and never reported when `background_class` is 0.
    """

    score_threshold: float = 0.05
    nms_iou_threshold: float = 0.5
    pre_nms_top_k: int = 1000
    max_detections: int = 100
    nms: str = "per_class"
    background_class: int | None = 0

    def config(self):
        """The detectors' constructor arguments that this spec holds (for their get_config)."""
        return {
            "score_threshold": self.score_threshold,
            "nms_iou_threshold": self.nms_iou_threshold,
            "pre_nms_top_k": self.pre_nms_top_k,
            "max_detections": self.max_detections,
            "nms": self.nms,
        }

    def __post_init__(self):
        if self.nms not in NMS_MODES:
            raise ValueError(f"Unknown nms {self.nms!r}; use one of {NMS_MODES}.")
        if not 0.0 <= self.nms_iou_threshold <= 1.0 or not 0.0 <= self.score_threshold < 1.0:
            raise ValueError("nms_iou_threshold must be in [0, 1] and score_threshold in [0, 1).")
        if self.pre_nms_top_k < 1 or self.max_detections < 1:
            raise ValueError("pre_nms_top_k and max_detections must be positive.")


def detect(class_logits, box_deltas, anchors, image_size, spec=DetectionSpec(), suppress=non_max_suppression):
    """Final detections of RetinaNet outputs: class_logits [B, N, C] (sigmoid), box_deltas
    [B, N, 4] against anchors [N, 4], for an (H, W) input (see `select_detections`).

    Only the `top_anchors` are decoded and put through the sigmoid (an increasing function:
    the logits rank candidates as the scores do): at 640 px that is 1,000 of 76,725 anchors,
    and most of the post-processing's time saved.
    """
    logits = ops.cast(class_logits, "float32")
    deltas = ops.cast(box_deltas, "float32")
    anchors = ops.cast(anchors, "float32")
    index = top_anchors(logits, spec)
    if index is None:
        anchors = ops.expand_dims(anchors, 0)
    else:
        logits, deltas = gather_rows(logits, index), gather_rows(deltas, index)
        anchors = ops.take(anchors, index, axis=0)
    return select_detections(ops.sigmoid(logits), decode_boxes(deltas, anchors), image_size, spec, suppress)


def top_anchors(scores, spec):
    """Indices [B, K] of the K = pre_nms_top_k candidates (anchors, proposals) of highest
    foreground score, or None when there are no more than K.

    The K best (candidate, class) pairs all belong to these: a pair's candidate scores at
    least the pair's score, so a candidate outside them has K others above each of its
    pairs. Selecting on them first keeps the result and cuts the per-class top-k from
    N x C scores to K x C.
    """
    if scores.shape[1] <= spec.pre_nms_top_k:
        return None
    if spec.background_class is not None:  # out of the max: added, not gathered (a copy of all scores)
        scores = scores + np.where(np.arange(scores.shape[-1]) == spec.background_class, -np.inf, 0.0).astype(
            "float32"
        )
    return chunked_top_k(ops.max(scores, axis=-1), spec.pre_nms_top_k)[1]


def gather_rows(values, index):
    """values [B, N, ...] at index [B, K] -> [B, K, ...], as one gather of the flattened rows:
    TensorFlow's ops.take_along_axis on axis 1 transposes all of `values` first (for the
    class logits, every anchor's), which costs more than the rest of the post-processing."""
    batch, num = ops.shape(values)[:2]
    offsets = ops.expand_dims(ops.arange(batch, dtype="int32") * num, -1)
    rows = ops.reshape(values, (-1, *values.shape[2:]))
    return ops.take(rows, ops.cast(index, "int32") + offsets, axis=0)


def _without_class(values, class_id):
    """values [B, N, C, ...] without class `class_id`, by slices (a gather along classes is
    slow in TFLite)."""
    parts = [part for part in (values[:, :, :class_id], values[:, :, class_id + 1 :]) if part.shape[2]]
    return parts[0] if len(parts) == 1 else ops.concatenate(parts, axis=2)


def select_detections(scores, boxes, image_size, spec=DetectionSpec(), suppress=non_max_suppression):
    """Final detections of a batch from per-class scores and decoded boxes.

    Args:
        scores [B, N, C] probabilities; boxes [B, N, 4] (one box per candidate, RetinaNet's
        anchors) or [B, N, C, 4] (one per candidate and class, Fast R-CNN's class-specific
        regression), [ymin, xmin, ymax, xmax] input pixels; image_size (H, W); suppress:
        the NMS, a function of `nms.non_max_suppression`'s arguments and result.

    Returns a dict: boxes [B, D, 4] (clipped to the image), scores [B, D], classes [B, D]
    int32, num_detections [B] int32; D = max_detections, entries past num_detections are
    zero.
    """
    num_classes = scores.shape[-1]
    per_class_boxes = len(boxes.shape) == 4
    index = top_anchors(scores, spec)
    if index is not None:
        scores, boxes = gather_rows(scores, index), gather_rows(boxes, index)
    class_ids = ops.arange(num_classes, dtype="int32")
    if spec.background_class is not None:
        scores = _without_class(scores, spec.background_class)
        if per_class_boxes:
            boxes = _without_class(boxes, spec.background_class)
        class_ids = ops.convert_to_tensor(
            [c for c in range(num_classes) if c != spec.background_class], dtype="int32"
        )
    boxes = clip_boxes(boxes, image_size)
    limit = ops.cast(ops.maximum(image_size[0], image_size[1]), "float32")

    foreground_classes = scores.shape[-1]
    if spec.nms == "class_agnostic":
        candidate_scores = ops.max(scores, axis=-1)
        # The first class of the best score [B, N]; TensorFlow's ops.argmax of floats takes a
        # bitwise op that TFLite lacks.
        best_class = ops.argmax(ops.cast(scores >= ops.expand_dims(candidate_scores, -1), "int32"), axis=-1)
        candidate_classes = ops.take(class_ids, best_class)
        if per_class_boxes:
            boxes = ops.squeeze(
                ops.take_along_axis(boxes, ops.reshape(best_class, (-1, boxes.shape[1], 1, 1)), axis=2), 2
            )
        top_k = min(spec.pre_nms_top_k, candidate_scores.shape[1])
        top_scores, top_index = chunked_top_k(candidate_scores, top_k)
        top_classes = ops.take_along_axis(candidate_classes, top_index, axis=1)
        top_boxes = gather_rows(boxes, top_index)
        nms_boxes = top_boxes
    else:
        flat = ops.reshape(scores, (-1, scores.shape[1] * foreground_classes))
        top_k = min(spec.pre_nms_top_k, flat.shape[1])
        top_scores, top_index = chunked_top_k(flat, top_k)
        top_classes = ops.take(class_ids, top_index % foreground_classes)
        if per_class_boxes:
            flat_boxes = ops.reshape(boxes, (-1, boxes.shape[1] * foreground_classes, 4))
            top_boxes = gather_rows(flat_boxes, top_index)
        else:
            top_boxes = gather_rows(boxes, top_index // foreground_classes)
        # Shift each class to its own region of the plane so that NMS never compares
        # boxes of different classes.
        offset = ops.cast(ops.expand_dims(top_classes, -1), "float32") * (limit + 1.0)
        nms_boxes = top_boxes + offset

    keep = suppress(nms_boxes, top_scores, spec.nms_iou_threshold, top_scores > spec.score_threshold)
    kept_scores = ops.where(keep, top_scores, -1.0)
    max_detections = min(spec.max_detections, top_k)
    final_scores, order = ops.top_k(kept_scores, max_detections)
    found = final_scores > 0.0
    final_boxes = gather_rows(top_boxes, order)
    final_classes = ops.take_along_axis(top_classes, order, axis=1)
    detections = {
        "boxes": ops.where(ops.expand_dims(found, -1), final_boxes, 0.0),
        "scores": ops.where(found, final_scores, 0.0),
        "classes": ops.where(found, final_classes, 0),
        "num_detections": ops.sum(ops.cast(found, "int32"), axis=1),
    }
    if spec.max_detections > max_detections:  # fewer candidates than slots: pad
        pad = spec.max_detections - max_detections
        detections = {
            key: ops.pad(value, [[0, 0], [0, pad]] + [[0, 0]] * (len(value.shape) - 2))
            if key != "num_detections"
            else value
            for key, value in detections.items()
        }
    return detections
