"""In-graph anchor labelling: IoU matching of anchors to ground truth, in keras.ops.

Done inside the loss (on the accelerator, batched) rather than in the tf.data parser:
the [boxes x anchors] IoU matrix is one matmul-sized op there, the CPU input pipeline
(the usual bottleneck of detection training) stays free for decoding and augmentation,
labels stay small (padded boxes and classes, not per-anchor targets), and the same code
serves every backend and data source.

Matching follows TF Model Garden's RetinaNet: IoU >= positive_threshold is positive,
< negative_threshold negative, in between ignored; each ground-truth box also claims
its best anchor (so that small boxes get a positive). Padding boxes have class < 0.
"""

from keras import ops

from spinenet_tf.detection.box_coder import encode_boxes


def box_area(boxes):
    return ops.maximum(boxes[..., 2] - boxes[..., 0], 0.0) * ops.maximum(boxes[..., 3] - boxes[..., 1], 0.0)


def pairwise_intersection(boxes_a, boxes_b):
    """Intersection areas of [..., M, 4] and [..., N, 4] boxes -> [..., M, N].

    Coordinates are split first so that every intermediate is one [..., M, N] plane
    (not [..., M, N, 2] pairs): that matrix is the largest tensor of the loss.
    """
    a = [ops.expand_dims(c, -1) for c in ops.unstack(boxes_a, 4, axis=-1)]
    b = [ops.expand_dims(c, -2) for c in ops.unstack(boxes_b, 4, axis=-1)]
    height = ops.maximum(ops.minimum(a[2], b[2]) - ops.maximum(a[0], b[0]), 0.0)
    width = ops.maximum(ops.minimum(a[3], b[3]) - ops.maximum(a[1], b[1]), 0.0)
    return height * width


def pairwise_iou(boxes_a, boxes_b):
    """IoU of [..., M, 4] and [..., N, 4] boxes -> [..., M, N]."""
    intersection = pairwise_intersection(boxes_a, boxes_b)
    union = ops.expand_dims(box_area(boxes_a), -1) + ops.expand_dims(box_area(boxes_b), -2) - intersection
    return ops.where(union > 0.0, intersection / ops.maximum(union, 1e-12), 0.0)


def assign_targets(anchors, gt_boxes, gt_classes, positive_threshold=0.5, negative_threshold=0.4):
    """Labels every anchor of a batch.

    Args:
        anchors: [N, 4]. gt_boxes: [B, M, 4] pixels. gt_classes: [B, M] int, < 0 = padding.

    Returns:
        class_targets [B, N] int (-1 where not positive), box_targets [B, N, 4],
        class_weights [B, N] (1 for positive and negative anchors, 0 for ignored),
        box_weights [B, N] (1 for positive anchors).
    """
    gt_boxes = ops.cast(gt_boxes, "float32")
    gt_classes = ops.cast(gt_classes, "int32")
    valid = gt_classes >= 0  # [B, M]
    iou = pairwise_iou(gt_boxes, ops.cast(anchors, "float32"))  # [B, M, N]
    iou = ops.where(ops.expand_dims(valid, -1), iou, -1.0)

    matched = ops.argmax(iou, axis=1)  # [B, N]
    best_iou = ops.squeeze(ops.take_along_axis(iou, ops.expand_dims(matched, 1), axis=1), 1)
    positive = best_iou >= positive_threshold
    negative = best_iou < negative_threshold

    # Each valid ground-truth box claims the anchor it overlaps most: scatter box
    # number + 1 onto that anchor (padding boxes onto a spare column N, dropped after).
    # Where two boxes claim one anchor, one of them gets it, as in Model Garden.
    batch, num_boxes = ops.shape(gt_classes)[0], ops.shape(gt_classes)[1]
    num_anchors = ops.shape(iou)[-1]
    best_anchor = ops.where(valid, ops.cast(ops.argmax(iou, axis=-1), "int32"), num_anchors)  # [B, M]
    image_index = ops.broadcast_to(ops.expand_dims(ops.arange(batch, dtype="int32"), 1), (batch, num_boxes))
    indices = ops.reshape(ops.stack([image_index, best_anchor], axis=-1), (-1, 2))
    box_number = ops.broadcast_to(ops.arange(1, num_boxes + 1, dtype="int32"), (batch, num_boxes))
    claims = ops.scatter_update(
        ops.zeros((batch, num_anchors + 1), "int32"), indices, ops.reshape(box_number, (-1,))
    )[:, :num_anchors]
    forced = claims > 0
    matched = ops.where(forced, claims - 1, ops.cast(matched, "int32"))
    positive = positive | forced
    negative = negative & ~forced

    matched_classes = ops.take_along_axis(gt_classes, matched, axis=1)
    class_targets = ops.where(positive, matched_classes, -1)
    matched_boxes = ops.take_along_axis(gt_boxes, ops.expand_dims(matched, -1), axis=1)
    box_targets = encode_boxes(matched_boxes, ops.expand_dims(ops.cast(anchors, "float32"), 0))
    box_targets = ops.where(ops.expand_dims(positive, -1), box_targets, 0.0)
    class_weights = ops.cast(positive | negative, "float32")
    box_weights = ops.cast(positive, "float32")
    return class_targets, box_targets, class_weights, box_weights
