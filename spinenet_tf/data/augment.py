"""Geometric augmentation and resizing of one example; boxes are [ymin, xmin, ymax, xmax] pixels.

Instance masks ([K, H, W] uint8) are not resampled with the image. A `grid`, the pair
(rows, cols) of int32 vectors as long as the image's height and width, says which stored
mask row and column each image pixel shows (-1: none, padding); flips and crops only
rewrite those vectors. The masks are read through it once, at the end: whole, at the
output size, for copy-paste (`resample_masks`), or at the few points of each object's
fixed-size target (`crop_masks`). The values are those of resizing the masks with the
image (nearest neighbour, `tf.image.resize`'s rule) and cropping them, without paying
for the full-size intermediate (up to 1280x1280 per object at scale 2.0).
"""

import tensorflow as tf

from spinenet_tf.layers.image_converter import MEAN_RGB, STDDEV_RGB


def normalise_image(image):
    """uint8 RGB -> float32 with ImageNet mean and standard deviation removed: the model's
    `ImageConverter` normalisation, in TensorFlow ops for tf.data on any Keras backend."""
    return (tf.cast(image, tf.float32) - MEAN_RGB) / STDDEV_RGB


def pixel_grid(size):
    """The grid of masks that line up with an image of `size` (height, width): each pixel shows its own."""
    return tf.range(size[0]), tf.range(size[1])


def random_flip(image, boxes, grid=None):
    """Left-right flip with probability 1/2 (the mask grid's columns flip with the image)."""
    flip = tf.random.uniform([]) < 0.5
    width = tf.cast(tf.shape(image)[1], tf.float32)
    flipped_boxes = tf.stack([boxes[:, 0], width - boxes[:, 3], boxes[:, 2], width - boxes[:, 1]], axis=-1)
    image = tf.cond(flip, lambda: image[:, ::-1], lambda: image)
    boxes = tf.cond(flip, lambda: flipped_boxes, lambda: boxes)
    if grid is not None:
        rows, cols = grid
        grid = rows, tf.cond(flip, lambda: cols[::-1], lambda: cols)
    return image, boxes, grid


def random_window(image_size, output_size, scale_range=(0.5, 2.0)):
    """The random draws of `scale_jitter_crop` for an image of `image_size` (height, width):
    {"height", "width"} of the resized image and the {"offset_y", "offset_x"} of the crop."""
    height, width = tf.unstack(tf.cast(image_size, tf.float32))
    target = output_size * tf.random.uniform([], *scale_range)
    scale = tf.minimum(target / height, target / width)
    new_height = tf.maximum(tf.cast(tf.round(height * scale), tf.int32), 1)
    new_width = tf.maximum(tf.cast(tf.round(width * scale), tf.int32), 1)
    return {
        "height": new_height,
        "width": new_width,
        "offset_y": tf.random.uniform([], 0, tf.maximum(new_height - output_size, 0) + 1, tf.int32),
        "offset_x": tf.random.uniform([], 0, tf.maximum(new_width - output_size, 0) + 1, tf.int32),
    }


def _nearest(length, new_length, start, size):
    """Indices [size] into a line of `length` read by pixels start..start+size-1 of its nearest-neighbour
    resize to `new_length`, -1 past its end: tf.image.resize's rule, floor((i + 0.5) * length / new_length)
    in float32, at most length - 1."""
    scale = tf.cast(length, tf.float32) / tf.cast(new_length, tf.float32)
    pixels = tf.range(start, start + size)
    index = tf.minimum(tf.cast(tf.floor((tf.cast(pixels, tf.float32) + 0.5) * scale), tf.int32), length - 1)
    return tf.where(pixels < new_length, index, -1)


def _crop_grid(grid, window, output_size):
    """The grid of the masks after the image is resized and cropped to `window`."""
    cropped = []
    for line, new_length, offset in zip(grid, ("height", "width"), ("offset_y", "offset_x")):
        index = _nearest(tf.shape(line)[0], window[new_length], window[offset], output_size)
        cropped.append(tf.where(index >= 0, tf.gather(line, tf.maximum(index, 0)), -1))
    return tuple(cropped)


def scale_jitter_crop(image, boxes, grid, output_size, scale_range=(0.5, 2.0)):
    """Random scale then random crop and pad to a square `output_size` (the paper's jitter).

    The image is resized to fit a square of `output_size * s`, s ~ U(scale_range); a
    random `output_size` window of it is kept (zero padding where it is smaller).
    Boxes are shifted, clipped to the window, and dropped when nothing is left.

    Returns image (float32 [S, S, 3], 0..255), boxes [K', 4], the masks' grid (None
    without one) and `keep` [K] (which input objects survive, to select their other labels
    and masks).
    """
    height, width = tf.unstack(tf.cast(tf.shape(image)[:2], tf.float32))
    window = random_window(tf.shape(image)[:2], output_size, scale_range)
    new_height, new_width = window["height"], window["width"]
    offset_y, offset_x = window["offset_y"], window["offset_x"]
    image = tf.image.resize(image, [new_height, new_width], method="bilinear")
    image = image[offset_y : offset_y + output_size, offset_x : offset_x + output_size]
    image = tf.image.pad_to_bounding_box(image, 0, 0, output_size, output_size)
    if grid is not None:
        grid = _crop_grid(grid, window, output_size)

    scale = tf.stack([tf.cast(new_height, tf.float32) / height, tf.cast(new_width, tf.float32) / width] * 2)
    offset = tf.cast(tf.stack([offset_y, offset_x] * 2), tf.float32)
    boxes = boxes * scale - offset
    # The crop covers the scaled image only up to its own size; beyond it is padding.
    limit_y = tf.cast(tf.minimum(new_height - offset_y, output_size), tf.float32)
    limit_x = tf.cast(tf.minimum(new_width - offset_x, output_size), tf.float32)
    boxes = tf.clip_by_value(boxes, 0.0, tf.stack([limit_y, limit_x, limit_y, limit_x]))
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return image, tf.boolean_mask(boxes, keep), grid, keep


def pad_labels(boxes, classes, max_boxes):
    """Variable-length labels -> fixed [max_boxes, 4] / [max_boxes] with class -1 padding (extra ones cut)."""
    boxes, classes = boxes[:max_boxes], classes[:max_boxes]
    padding = max_boxes - tf.shape(classes)[0]
    boxes = tf.pad(boxes, [[0, padding], [0, 0]])
    classes = tf.pad(classes, [[0, padding]], constant_values=-1)
    return tf.ensure_shape(boxes, [max_boxes, 4]), tf.ensure_shape(classes, [max_boxes])


def resample_masks(masks, grid):
    """[K, H, W] masks read through their grid: [K, len(rows), len(cols)], zero where it shows none."""
    rows, cols = grid
    # Whole lines are gathered, columns through a transpose: a gather along the last axis is slow.
    by_column = tf.gather(tf.transpose(masks, [2, 0, 1]), tf.maximum(cols, 0))
    masks = tf.transpose(by_column * tf.cast(cols >= 0, masks.dtype)[:, None, None], [1, 2, 0])
    return tf.gather(masks, tf.maximum(rows, 0), axis=1) * tf.cast(rows >= 0, masks.dtype)[:, None]


def _sample_points(start, end, size, length):
    """Bilinear sampling along one axis: indices low/high [K, size] and the weight of high."""
    cells = (tf.range(size, dtype=tf.float32) + 0.5) / size
    points = start[:, None] + cells[None, :] * (end - start)[:, None] - 0.5
    points = tf.clip_by_value(points, 0.0, tf.cast(length - 1, tf.float32))
    low = tf.floor(points)
    high = tf.minimum(tf.cast(low, tf.int32) + 1, length - 1)
    return tf.cast(low, tf.int32), high, points - low


def _read_lines(values, line_index, index):
    """values[k, line_index[index[k, i]]] as float32 [K, size, ...]: lines gathered along axis 1 through
    a grid vector, zero where it shows none."""
    stored = tf.gather(line_index, index)
    lines = tf.gather(values, tf.maximum(stored, 0), axis=1, batch_dims=1)
    return tf.cast(lines, tf.float32) * tf.cast(stored >= 0, tf.float32)[:, :, None]


def crop_masks(masks, boxes, size, grid=None):
    """[K, H, W] masks and their [K, 4] pixel boxes -> [K, size, size] float32 crops in [0, 1].

    Cell i samples the mask at index y = ymin + (i + 0.5) * (ymax - ymin) / size - 0.5
    (pixel k spans [k, k + 1), its centre is index k), likewise x, bilinearly, with
    indices clamped to the mask's edges: RoIAlign's sampling with one point per cell,
    so the targets line up with the features a mask head crops from its boxes. With a
    `grid` the boxes are in the grid's pixels and the masks are read through it: the
    values of `crop_masks(resample_masks(masks, grid), boxes, size)`, reading only the
    rows and columns that are sampled.
    """
    rows, cols = pixel_grid(tf.shape(masks)[1:]) if grid is None else grid
    y_low, y_high, y_weight = _sample_points(boxes[:, 0], boxes[:, 2], size, tf.shape(rows)[0])
    x_low, x_high, x_weight = _sample_points(boxes[:, 1], boxes[:, 3], size, tf.shape(cols)[0])
    # Both passes gather whole rows (a gather along the last axis is several times slower).
    top, bottom = (_read_lines(masks, rows, y) for y in (y_low, y_high))
    columns = tf.transpose(top + (bottom - top) * y_weight[:, :, None], [0, 2, 1])  # [K, W, size]
    left, right = (_read_lines(columns, cols, x) for x in (x_low, x_high))
    return tf.transpose(left + (right - left) * x_weight[:, :, None], [0, 2, 1])
