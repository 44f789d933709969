"""Batched greedy non-maximum suppression in keras.ops (every backend, fixed shapes)."""

import numpy as np
from keras import ops

from spinenet_tf.detection.target_assignment import box_area, pairwise_intersection


def non_max_suppression(boxes, scores, iou_threshold, valid=None):
    """Greedy NMS over candidates sorted by descending score.

    Args:
        boxes: [B, K, 4]; scores: [B, K], sorted in descending order along K.
        valid: optional [B, K] bool of candidates taking part (e.g. above a score threshold).

    Returns:
        [B, K] bool: the kept candidates. A candidate is kept if it is valid and no kept
        candidate of higher score overlaps it with IoU > iou_threshold.

    That definition is a fixed point, keep = valid & ~(some kept candidate suppresses it),
    reached by iterating it from keep = valid: a candidate's value is final once those of
    all the candidates before it in its chain of suppressions are, so the iteration
    settles after (longest chain + 1) steps, each one [B, K] x [B, K, K] product, instead
    of the K sequential steps of visiting the candidates one by one.
    """
    num = boxes.shape[1]
    later = np.triu(np.ones((num, num), bool), k=1)  # [i, j] = j > i; a constant, not ops at run time
    suppresses = ops.cast(_iou_above(boxes, iou_threshold) & later, "float32")  # i would suppress j
    valid = ops.ones_like(scores, dtype="bool") if valid is None else ops.cast(valid, "bool")

    def step(keep):
        suppressed = ops.squeeze(ops.matmul(ops.expand_dims(ops.cast(keep, "float32"), 1), suppresses), 1)
        return valid & (suppressed < 0.5)

    def changed(keep, previous):
        return ops.any(ops.not_equal(keep, previous))

    def iterate(keep, previous):
        return step(keep), keep

    keep, _ = ops.while_loop(changed, iterate, (step(valid), valid), maximum_iterations=num + 1)
    return keep


def _iou_above(boxes, threshold):
    """[B, K, K] bool: IoU(i, j) > threshold, tested as intersection x (1 + threshold) >
    threshold x (area i + area j), without the division (never true where the union is 0)."""
    area = box_area(boxes)
    intersection = pairwise_intersection(boxes, boxes)
    return intersection * (1.0 + threshold) > threshold * (
        ops.expand_dims(area, -1) + ops.expand_dims(area, -2)
    )
