"""Simple copy-paste augmentation (Ghiasi et al., CVPR 2021), on pairs of augmented examples.

Objects of a source image are pasted, through their instance masks, onto a target
image of the same size. Target objects under the pasted pixels lose those pixels: their
boxes are recomputed from what is left of their masks, and objects left with nothing
are dropped. Data without masks gets box-shaped masks, which pastes box crops.
"""

import tensorflow as tf


def boxes_from_masks(masks):
    """[K, H, W] masks -> [K, 4] tight boxes [ymin, xmin, ymax, xmax] on pixel edges (zeros if empty)."""
    rows = tf.reduce_any(masks > 0, axis=2)
    cols = tf.reduce_any(masks > 0, axis=1)

    def extent(line):
        size = tf.shape(line)[1]
        start = tf.argmax(tf.cast(line, tf.int32), axis=1, output_type=tf.int32)
        end = size - tf.argmax(tf.cast(line[:, ::-1], tf.int32), axis=1, output_type=tf.int32)
        return tf.cast(start, tf.float32), tf.cast(end, tf.float32)

    ymin, ymax = extent(rows)
    xmin, xmax = extent(cols)
    boxes = tf.stack([ymin, xmin, ymax, xmax], axis=-1)
    return tf.where(tf.reduce_any(rows, axis=1, keepdims=True), boxes, 0.0)


def choose_objects(classes, probability=0.5, object_probability=0.5):
    """[K] bool: which of a source's objects (classes [K], -1 = padding) to paste. With probability
    `probability` each object is chosen with probability `object_probability`, else none."""
    applied = tf.random.uniform([]) < probability
    return applied & (classes >= 0) & (tf.random.uniform(tf.shape(classes)) < object_probability)


def paste(target, source, chosen, with_masks=True):
    """Pastes `source`'s `chosen` objects ([K] bool) onto `target`.

    Both are dicts with image [S, S, 3] float, boxes [K, 4], classes [K] (-1 = padding),
    masks [K, S, S] uint8 (0 or 1). Returns a dict of the same kind with 2K object slots,
    the target's then the source's (class -1 where not chosen); without its masks unless
    `with_masks`. Only the masks that can change anything are read: none when nothing is
    chosen (half of the calls or more at the default probabilities), the chosen objects' to
    composite, and the occluded target objects' to recompute their boxes.
    """
    masks = target["masks"]

    def pasted():
        alpha = tf.reduce_any(tf.boolean_mask(source["masks"], chosen) > 0, axis=0)  # [S, S]
        uncovered = tf.cast(~alpha, masks.dtype)
        occluded = tf.reduce_any((masks > 0) & alpha[None], axis=[1, 2])
        index = tf.where(occluded)
        boxes = tf.tensor_scatter_nd_update(
            target["boxes"], index, boxes_from_masks(tf.gather_nd(masks, index) * uncovered)
        )
        hidden = occluded & tf.reduce_all(boxes == 0.0, axis=1)  # an empty mask's box is zeros
        return (
            tf.where(alpha[:, :, None], source["image"], target["image"]),
            boxes,
            tf.where(hidden, -1, target["classes"]),
            *([masks * uncovered] if with_masks else []),
        )

    def unchanged():
        return target["image"], target["boxes"], target["classes"], *([masks] if with_masks else [])

    image, boxes, classes, *remaining = tf.cond(tf.reduce_any(chosen), pasted, unchanged)
    result = {
        "image": image,
        "boxes": tf.concat([boxes, tf.where(chosen[:, None], source["boxes"], 0.0)], axis=0),
        "classes": tf.concat([classes, tf.where(chosen, source["classes"], -1)], axis=0),
    }
    if with_masks:
        pasted_masks = source["masks"] * tf.cast(chosen, source["masks"].dtype)[:, None, None]
        result["masks"] = tf.concat([remaining[0], pasted_masks], axis=0)
    return result


def paste_within_pairs(pair, probability, with_masks=True):
    """A padded batch of two examples -> each with some of the other's objects pasted, with
    probability `probability` (independently); masks kept only `with_masks`."""
    first = {key: value[0] for key, value in pair.items()}
    second = {key: value[1] for key, value in pair.items()}
    results = [
        paste(target, source, choose_objects(source["classes"], probability), with_masks)
        for target, source in ((first, second), (second, first))
    ]
    return {key: tf.stack([result[key] for result in results]) for key in results[0]}
