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


def paste(target, source, probability=0.5, object_probability=0.5):
    """Pastes a random subset of `source`'s objects onto `target` with probability `probability`.

    Both are dicts with image [S, S, 3] float, boxes [K, 4], classes [K] (-1 = padding),
    masks [K, S, S] uint8. Returns a dict of the same kind with 2K object slots.
    """
    applied = tf.random.uniform([]) < probability
    chosen = (source["classes"] >= 0) & (tf.random.uniform(tf.shape(source["classes"])) < object_probability)
    chosen &= applied
    pasted_masks = source["masks"] * tf.cast(chosen, source["masks"].dtype)[:, None, None]
    alpha = tf.reduce_max(pasted_masks, axis=0)  # [S, S]; 0 when there are no objects (uint8 minimum)
    image = tf.where(alpha[:, :, None] > 0, source["image"], target["image"])

    remaining = target["masks"] * (1 - alpha)[None]
    occluded = tf.reduce_any((target["masks"] > 0) & (alpha > 0)[None], axis=[1, 2])
    hidden = occluded & ~tf.reduce_any(remaining > 0, axis=[1, 2])
    boxes = tf.where(occluded[:, None], boxes_from_masks(remaining), target["boxes"])
    classes = tf.where(hidden, -1, target["classes"])
    return {
        "image": image,
        "boxes": tf.concat([boxes, tf.where(chosen[:, None], source["boxes"], 0.0)], axis=0),
        "classes": tf.concat([classes, tf.where(chosen, source["classes"], -1)], axis=0),
        "masks": tf.concat([remaining, pasted_masks], axis=0),
    }


def paste_within_pairs(pair, probability):
    """A padded batch of two examples -> each with the other's objects pasted (independently)."""
    first = {key: value[0] for key, value in pair.items()}
    second = {key: value[1] for key, value in pair.items()}
    results = [paste(first, second, probability), paste(second, first, probability)]
    return {key: tf.stack([result[key] for result in results]) for key in results[0]}
