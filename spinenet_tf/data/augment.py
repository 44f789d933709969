"""Geometric augmentation and resizing of one example; boxes are [ymin, xmin, ymax, xmax] pixels.

Masks ([K, H, W] uint8, optional) follow every geometric change of the image with
nearest-neighbour resampling, so that copy-paste can use them afterwards, and are
finally cut to their boxes as the fixed-size targets of a mask head (`crop_masks`).
"""

import tensorflow as tf

from spinenet_tf.layers.image_converter import MEAN_RGB, STDDEV_RGB


def normalise_image(image):
    """uint8 RGB -> float32 with ImageNet mean and standard deviation removed: the model's
    `ImageConverter` normalisation, in TensorFlow ops for tf.data on any Keras backend."""
    return (tf.cast(image, tf.float32) - MEAN_RGB) / STDDEV_RGB


def random_flip(image, boxes, masks=None):
    """Left-right flip with probability 1/2."""
    flip = tf.random.uniform([]) < 0.5
    width = tf.cast(tf.shape(image)[1], tf.float32)
    flipped_boxes = tf.stack([boxes[:, 0], width - boxes[:, 3], boxes[:, 2], width - boxes[:, 1]], axis=-1)
    image = tf.cond(flip, lambda: image[:, ::-1], lambda: image)
    boxes = tf.cond(flip, lambda: flipped_boxes, lambda: boxes)
    if masks is not None:
        masks = tf.cond(flip, lambda: masks[:, :, ::-1], lambda: masks)
    return image, boxes, masks


def _resize(image, masks, height, width):
    image = tf.image.resize(image, [height, width], method="bilinear")
    if masks is not None:
        # tf.image.resize refuses zero channels: an image without objects has no masks.
        masks = tf.cond(
            tf.shape(masks)[0] > 0,
            lambda: tf.transpose(
                tf.image.resize(tf.transpose(masks, [1, 2, 0]), [height, width], method="nearest"), [2, 0, 1]
            ),
            lambda: tf.zeros(tf.stack([0, height, width]), masks.dtype),
        )
    return image, masks


def _scale_boxes(boxes, scale_y, scale_x, offset_y=0.0, offset_x=0.0):
    return boxes * tf.stack([scale_y, scale_x, scale_y, scale_x]) - tf.stack(
        [offset_y, offset_x, offset_y, offset_x]
    )


def scale_jitter_crop(image, boxes, masks, output_size, scale_range=(0.5, 2.0)):
    """Random scale then random crop and pad to a square `output_size` (the paper's jitter).

    The image is resized to fit a square of `output_size * s`, s ~ U(scale_range); a
    random `output_size` window of it is kept (zero padding where it is smaller).
    Boxes are shifted, clipped to the window, and dropped when nothing is left.

    Returns image (float32 [S, S, 3], 0..255), boxes [K', 4], masks, and `keep` [K]
    (which input objects survive, to select their other labels).
    """
    height, width = tf.unstack(tf.cast(tf.shape(image)[:2], tf.float32))
    target = output_size * tf.random.uniform([], *scale_range)
    scale = tf.minimum(target / height, target / width)
    new_height = tf.maximum(tf.cast(tf.round(height * scale), tf.int32), 1)
    new_width = tf.maximum(tf.cast(tf.round(width * scale), tf.int32), 1)
    image, masks = _resize(image, masks, new_height, new_width)

    offset_y = tf.random.uniform([], 0, tf.maximum(new_height - output_size, 0) + 1, tf.int32)
    offset_x = tf.random.uniform([], 0, tf.maximum(new_width - output_size, 0) + 1, tf.int32)
    image = image[offset_y : offset_y + output_size, offset_x : offset_x + output_size]
    image = tf.image.pad_to_bounding_box(image, 0, 0, output_size, output_size)
    if masks is not None:
        masks = masks[:, offset_y : offset_y + output_size, offset_x : offset_x + output_size]
        masks = tf.pad(
            masks, [[0, 0], [0, output_size - tf.shape(masks)[1]], [0, output_size - tf.shape(masks)[2]]]
        )

    boxes = _scale_boxes(
        boxes,
        tf.cast(new_height, tf.float32) / height,
        tf.cast(new_width, tf.float32) / width,
        tf.cast(offset_y, tf.float32),
        tf.cast(offset_x, tf.float32),
    )
    # The crop covers the scaled image only up to its own size; beyond it is padding.
    limit_y = tf.cast(tf.minimum(new_height - offset_y, output_size), tf.float32)
    limit_x = tf.cast(tf.minimum(new_width - offset_x, output_size), tf.float32)
    boxes = tf.clip_by_value(boxes, 0.0, tf.stack([limit_y, limit_x, limit_y, limit_x]))
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    masks = tf.boolean_mask(masks, keep) if masks is not None else None
    return image, tf.boolean_mask(boxes, keep), masks, keep


def pad_labels(boxes, classes, max_boxes):
    """Variable-length labels -> fixed [max_boxes, 4] / [max_boxes] with class -1 padding (extra ones cut)."""
    boxes, classes = boxes[:max_boxes], classes[:max_boxes]
    padding = max_boxes - tf.shape(classes)[0]
    boxes = tf.pad(boxes, [[0, padding], [0, 0]])
    classes = tf.pad(classes, [[0, padding]], constant_values=-1)
    return tf.ensure_shape(boxes, [max_boxes, 4]), tf.ensure_shape(classes, [max_boxes])


def _sample_points(start, end, size, length):
    """Bilinear sampling along one axis: indices low/high [K, size] and the weight of high."""
    cells = (tf.range(size, dtype=tf.float32) + 0.5) / size
    points = start[:, None] + cells[None, :] * (end - start)[:, None] - 0.5
    points = tf.clip_by_value(points, 0.0, tf.cast(length - 1, tf.float32))
    low = tf.floor(points)
    high = tf.minimum(tf.cast(low, tf.int32) + 1, length - 1)
    return tf.cast(low, tf.int32), high, points - low


def crop_masks(masks, boxes, size):
    """[K, H, W] masks and their [K, 4] pixel boxes -> [K, size, size] float32 crops in [0, 1].

    Cell i samples the mask at index y = ymin + (i + 0.5) * (ymax - ymin) / size - 0.5
    (pixel k spans [k, k + 1), its centre is index k), likewise x, bilinearly, with
    indices clamped to the mask's edges: RoIAlign's sampling with one point per cell,
    so the targets line up with the features a mask head crops from its boxes.
    """
    height, width = tf.shape(masks)[1], tf.shape(masks)[2]
    y_low, y_high, y_weight = _sample_points(boxes[:, 0], boxes[:, 2], size, height)
    x_low, x_high, x_weight = _sample_points(boxes[:, 1], boxes[:, 3], size, width)
    # Both passes gather whole rows (a gather along the last axis is several times slower).
    top, bottom = (tf.cast(tf.gather(masks, y, axis=1, batch_dims=1), tf.float32) for y in (y_low, y_high))
    columns = tf.transpose(top + (bottom - top) * y_weight[:, :, None], [0, 2, 1])  # [K, W, size]
    left, right = (tf.gather(columns, x, axis=1, batch_dims=1) for x in (x_low, x_high))
    return tf.transpose(left + (right - left) * x_weight[:, :, None], [0, 2, 1])
