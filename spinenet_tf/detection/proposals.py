"""Region proposals from RPN outputs: per level top-k, decode, clip, NMS; then the best overall.

TF Model Garden's `MultilevelROIGenerator` with its defaults: the 2000 (training) or
1000 (inference) best-scoring anchors of each level are decoded, clipped to the image
and suppressed at IoU 0.7; the survivors of all levels compete for the final
`num_proposals` (1000). Proposals carry no gradient: the second stage treats them as
given boxes.
"""

import dataclasses

from keras import ops

from spinenet_tf.detection.box_coder import clip_boxes, decode_boxes
from spinenet_tf.detection.nms import non_max_suppression


@dataclasses.dataclass(frozen=True)
class ProposalSpec:
    pre_nms_top_k: int = 2000
    nms_iou_threshold: float = 0.7
    num_proposals: int = 1000


def generate_proposals(logits, deltas, anchors, image_size, spec):
    """Proposals of a batch.

    Args:
        logits: list per level of [B, N_l] objectness logits; deltas: list of [B, N_l, 4];
        anchors: list of [N_l, 4]; image_size: (H, W).

    Returns (boxes [B, P, 4], scores [B, P], valid bool [B, P]), best first;
    P = min(num_proposals, levels * min(num_proposals, pre_nms_top_k, the largest level's
    anchors)). Invalid entries (fewer survivors than P) are zero boxes.
    """
    # Each level's best anchors, padded to one length so that a single NMS (one loop, the
    # levels as batch entries) serves them all.
    k = min(spec.pre_nms_top_k, max(level_logits.shape[1] for level_logits in logits))
    level_boxes, level_scores = [], []
    for level_logits, level_deltas, level_anchors in zip(logits, deltas, anchors):
        top_logits, index = ops.top_k(ops.cast(level_logits, "float32"), min(k, level_logits.shape[1]))
        top_deltas = ops.take_along_axis(
            ops.cast(level_deltas, "float32"), ops.expand_dims(index, -1), axis=1
        )
        top_anchors = ops.take(ops.convert_to_tensor(level_anchors, "float32"), index, axis=0)
        boxes = clip_boxes(decode_boxes(top_deltas, top_anchors), image_size)
        padding = k - top_logits.shape[1]
        level_boxes.append(ops.pad(boxes, [[0, 0], [0, padding], [0, 0]]))
        level_scores.append(ops.pad(ops.sigmoid(top_logits), [[0, 0], [0, padding]], constant_values=-1.0))
    boxes = ops.reshape(ops.stack(level_boxes, axis=1), (-1, k, 4))  # [B * levels, k, 4]
    scores = ops.reshape(ops.stack(level_scores, axis=1), (-1, k))
    has_area = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1]) & (scores >= 0.0)
    keep = non_max_suppression(boxes, scores, spec.nms_iou_threshold, has_area)
    per_level = min(spec.num_proposals, k)
    scores, order = ops.top_k(ops.where(keep, scores, -1.0), per_level)
    boxes = ops.take_along_axis(boxes, ops.expand_dims(order, -1), axis=1)
    # Back to [B, levels * per_level]; the best of all levels.
    scores = ops.reshape(scores, (-1, len(logits) * per_level))
    boxes = ops.reshape(boxes, (-1, len(logits) * per_level, 4))
    scores, order = ops.top_k(scores, min(spec.num_proposals, scores.shape[1]))
    boxes = ops.take_along_axis(boxes, ops.expand_dims(order, -1), axis=1)
    valid = scores >= 0.0
    boxes = ops.where(ops.expand_dims(valid, -1), boxes, 0.0)
    return ops.stop_gradient(boxes), ops.stop_gradient(ops.maximum(scores, 0.0)), valid
