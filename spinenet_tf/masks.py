"""Box-frame instance masks read in image pixels: what a Mask R-CNN's [D, M, M] output means.

A mask head answers in each box's own frame: cell (i, j) of an M x M mask is the
probability at the point (ymin + (i + 0.5) h / M, xmin + (j + 0.5) w / M) of its box.
Evaluation, drawing and serving all need the same full-image reading of that, so it lives
here once, in NumPy (no TensorFlow or Keras to load for a picture or a metric).
"""

import numpy as np


def paste_masks(masks, boxes, height, width, threshold=0.5):
    """uint8 [D, height, width] image masks from one image's box-frame masks [D, M, M] and boxes [D, 4].

    Boxes are [ymin, xmin, ymax, xmax] in continuous pixel coordinates (pixel k spans
    [k, k + 1)). A pixel is 1 when its centre (y + 0.5, x + 0.5) lies in its box
    [ymin, ymax) x [xmin, xmax) and the mask's bilinear value there is >= `threshold`;
    between the outermost cell centres and the box edges the edge cells' value holds, as in
    image resizing with half-pixel centres. Only each box's pixel window is computed (100
    masks on a 640 x 480 image take milliseconds); boxes may hang off the image, and a box
    that covers no pixel centre (or has a NaN or infinite edge) pastes nothing.
    """
    masks = np.asarray(masks, np.float32)
    boxes = np.asarray(boxes, np.float64)
    if masks.ndim != 3 or boxes.shape != (len(masks), 4):
        raise ValueError(
            f"paste_masks takes masks [D, M, M] and boxes [D, 4], got masks {masks.shape} and boxes "
            f"{boxes.shape}"
        )
    pasted = np.zeros((len(masks), height, width), np.uint8)
    for mask, (ymin, xmin, ymax, xmax), image_mask in zip(masks, boxes, pasted):
        rows, cols = _covered(ymin, ymax, height), _covered(xmin, xmax, width)
        if rows.size and cols.size:
            values = (
                _weights(rows, ymin, ymax, mask.shape[0]) @ mask @ _weights(cols, xmin, xmax, mask.shape[1]).T
            )
            image_mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = values >= threshold
    return pasted


def _covered(low, high, size):
    """The pixel indices in [0, size) whose centres lie in [low, high); none for a NaN or infinite edge."""
    if not (np.isfinite([low, high]).all() and low < high):
        return np.arange(0)
    start, stop = np.clip(np.ceil([low - 0.5, high - 0.5]), 0, size).astype(np.int64)
    return np.arange(start, stop)


def _weights(pixels, low, high, cells):
    """[len(pixels), cells] bilinear weights of the pixel centres on the box's cell centres."""
    position = np.clip((pixels + 0.5 - low) * cells / (high - low) - 0.5, 0, cells - 1)
    below = np.floor(position).astype(np.int64)
    above = np.minimum(below + 1, cells - 1)
    fraction = position - below
    weights = np.zeros((len(pixels), cells))
    index = np.arange(len(pixels))
    weights[index, below] = 1 - fraction
    weights[index, above] += fraction  # the same cell as `below` only at the last one, with fraction 0
    return weights


def paste_and_encode(masks, boxes, height, width, threshold=0.5):
    """`paste_masks`' full-image masks as COCO compressed RLEs ({"size": [H, W], "counts": bytes}),
    the form of COCO results files: one per box."""
    from pycocotools import mask as mask_utils  # loaded on use: pasting needs NumPy only

    if len(masks) == 0:
        return []
    pasted = paste_masks(masks, boxes, height, width, threshold)
    return mask_utils.encode(np.asfortranarray(pasted.transpose(1, 2, 0)))
