"""Box <-> regression target coding of Faster R-CNN / RetinaNet.

targets = [(cy - cy_a) / h_a, (cx - cx_a) / w_a, log(h / h_a), log(w / w_a)] * weights,
boxes [ymin, xmin, ymax, xmax]. RetinaNet and the RPN use no weights (TF Model Garden's
convention); the Fast R-CNN stages scale by [10, 10, 5, 5] (and Cascade R-CNN's later
stages by more), which evens out the loss of centre and size errors.
"""

import math

from keras import ops

EPSILON = 1e-8
# Largest log-scale a decoded box may grow by, so a wild prediction cannot overflow.
MAX_LOG_SCALE = math.log(1000.0 / 16.0)


def _centre_size(boxes):
    ymin, xmin, ymax, xmax = ops.unstack(boxes, 4, axis=-1)
    height, width = ymax - ymin, xmax - xmin
    return ymin + 0.5 * height, xmin + 0.5 * width, height, width


def encode_boxes(boxes, anchors, weights=None):
    cy, cx, h, w = _centre_size(boxes)
    cy_a, cx_a, h_a, w_a = _centre_size(anchors)
    h_a, w_a = h_a + EPSILON, w_a + EPSILON
    h, w = h + EPSILON, w + EPSILON
    targets = ops.stack([(cy - cy_a) / h_a, (cx - cx_a) / w_a, ops.log(h / h_a), ops.log(w / w_a)], axis=-1)
    return targets if weights is None else targets * ops.convert_to_tensor(weights, "float32")


def decode_boxes(targets, anchors, weights=None):
    if weights is not None:
        targets = targets / ops.convert_to_tensor(weights, "float32")
    dy, dx, dh, dw = ops.unstack(targets, 4, axis=-1)
    cy_a, cx_a, h_a, w_a = _centre_size(anchors)
    cy, cx = dy * h_a + cy_a, dx * w_a + cx_a
    h = ops.exp(ops.minimum(dh, MAX_LOG_SCALE)) * h_a
    w = ops.exp(ops.minimum(dw, MAX_LOG_SCALE)) * w_a
    return ops.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)


def clip_boxes(boxes, image_size):
    """Boxes clipped to an (height, width) image."""
    height, width = image_size
    limits = ops.cast(ops.stack([height, width, height, width]), "float32")
    return ops.clip(boxes, 0.0, limits)
