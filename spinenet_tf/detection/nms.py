"""Batched greedy non-maximum suppression in keras.ops (every backend, fixed shapes)."""

from keras import ops

from spinenet_tf.detection.target_assignment import pairwise_iou


def non_max_suppression(boxes, scores, iou_threshold, valid=None):
    """Greedy NMS over candidates sorted by descending score.

    Args:
        boxes: [B, K, 4]; scores: [B, K], sorted in descending order along K.
        valid: optional [B, K] bool of candidates taking part (e.g. above a score threshold).

    Returns:
        [B, K] bool: the kept candidates. A candidate is kept if it is valid and no kept
        candidate of higher score overlaps it with IoU > iou_threshold.
    """
    num = boxes.shape[1]
    iou = pairwise_iou(boxes, boxes)  # [B, K, K]
    later = ops.triu(ops.ones((num, num), dtype="bool"), k=1)  # [i, j] = j > i
    suppresses = (iou > iou_threshold) & later  # i would suppress j
    keep = ops.ones_like(scores, dtype="bool") if valid is None else ops.cast(valid, "bool")

    def visit(i, keep):
        row = ops.take(suppresses, i, axis=1)  # [B, K]: candidates that i suppresses
        keep_i = ops.expand_dims(ops.take(keep, i, axis=1), -1)  # [B, 1]
        return keep & ~(row & keep_i)

    return ops.fori_loop(0, num, visit, keep)
