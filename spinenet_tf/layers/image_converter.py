"""Photos of any size to a task's input, and detections back to the photos' pixels.

The one preprocessing path of the project, in keras.ops so it runs on every backend and
inside exported graphs: `predict`, the evaluation, the SavedModel signatures and the
host-side preprocessing of the TFLite input all call it. For a detector a photo is
letterboxed (its longest side scaled to fit the model's input, aspect ratio kept, zero
padding bottom/right); for a classifier its centre is cropped (a square of a fraction of
the shorter side, the ImageNet evaluation view) and resized. Then it is normalised with
ImageNet statistics. The resize is bilinear with
half-pixel centres and no antialiasing, the interpolation of `tf.image.resize` that the
training pipeline uses, written as gathers so that it takes images whose size is only
known when the graph runs (a SavedModel request) while its output size stays static.
"""

import math

import keras
import numpy as np
from keras import ops

from spinenet_tf.errors import ModelError

# The ImageNet evaluation view of classifiers: the centred 224 of 256 of the shorter side.
CENTER_CROP_FRACTION = 0.875
# ImageNet statistics in 0..255 RGB, the normalisation of Model Garden's detectors.
MEAN_RGB = (123.675, 116.28, 103.53)
STDDEV_RGB = (58.395, 57.12, 57.375)


def normalise_image(images):
    """0..255 RGB (any dtype) -> float32 with ImageNet mean and standard deviation removed."""
    return (ops.cast(images, "float32") - np.array(MEAN_RGB, "float32")) / np.array(STDDEV_RGB, "float32")


def letterboxed_size(height, width, target_height, target_width):
    """(resized height, width) of an image fitted into the target, aspect ratio kept.

    float32 arithmetic and round-half-to-even, the same whether the sizes are Python ints
    or tensors (a graph whose input size is unknown), so both give the same pixels.
    """
    if isinstance(height, int) and isinstance(width, int):
        scale = np.float32(
            min(np.float32(target_height) / np.float32(height), np.float32(target_width) / np.float32(width))
        )
        return max(int(np.round(np.float32(height) * scale)), 1), max(
            int(np.round(np.float32(width) * scale)), 1
        )
    height, width = ops.cast(height, "float32"), ops.cast(width, "float32")
    scale = ops.minimum(target_height / height, target_width / width)
    resized_height = ops.maximum(ops.cast(ops.round(height * scale), "int32"), 1)
    resized_width = ops.maximum(ops.cast(ops.round(width * scale), "int32"), 1)
    return resized_height, resized_width


def _sampling(source_size, resized_size, target_size, start=0, window=None):
    """Bilinear sampling of one axis: (low index, high index, weight of high, inside) per
    output position, as tf.image.resize's half-pixel centres: source = (i + 0.5) * s - 0.5.

    The source is the `window` pixels from `start` (default: all of it), resized to
    `resized_size` and padded to `target_size`.
    """
    window = source_size if window is None else window
    positions = ops.arange(target_size, dtype="float32")
    ratio = ops.cast(window, "float32") / ops.cast(resized_size, "float32")
    source = ops.maximum((positions + 0.5) * ratio - 0.5, 0.0)
    low = ops.floor(source)
    weight = source - low
    last = ops.cast(window, "int32") - 1
    low_index = ops.minimum(ops.cast(low, "int32"), last)
    high_index = ops.minimum(low_index + 1, last)
    inside = ops.cast(ops.arange(target_size, dtype="int32") < ops.cast(resized_size, "int32"), "float32")
    return low_index + start, high_index + start, weight, inside


def _resample(images, rows, cols):
    """Bilinear resampling [B, H, W, C] -> [B, len(rows), len(cols), C] by `_sampling`'s tables,
    zero where a table says outside. Along columns first, then rows: tf.image.resize's order
    of operations, so that both give the same float pixels."""
    rows_low, rows_high, row_weight, row_inside = rows
    cols_low, cols_high, col_weight, col_inside = cols
    col_weight = ops.reshape(col_weight, (1, 1, -1, 1))

    def along_columns(row_pixels):
        left = ops.cast(ops.take(row_pixels, cols_low, axis=2), "float32")
        right = ops.cast(ops.take(row_pixels, cols_high, axis=2), "float32")
        return left + (right - left) * col_weight

    top = along_columns(ops.take(images, rows_low, axis=1))
    bottom = along_columns(ops.take(images, rows_high, axis=1))
    resized = top + (bottom - top) * ops.reshape(row_weight, (1, -1, 1, 1))
    inside = ops.reshape(row_inside, (1, -1, 1, 1)) * ops.reshape(col_inside, (1, 1, -1, 1))
    return resized * inside


def letterbox(images, target_size, resize=True):
    """Images [B, H, W, C] of one size -> (float32 [B, *target_size, C] 0..255, scale (y, x)).

    Scale is resized / original per axis: a box in letterboxed pixels divided by it is in
    the original's. The padding is zeros (black, as in training's scale-jitter crops).
    `resize=False` only pads (the target must then be at least the images' size).
    """
    shape = ops.shape(images)
    height, width = shape[1], shape[2]
    target_height, target_width = target_size
    if resize:
        resized_height, resized_width = letterboxed_size(height, width, target_height, target_width)
    else:
        resized_height, resized_width = height, width
    resized = _resample(
        images,
        _sampling(height, resized_height, target_height),
        _sampling(width, resized_width, target_width),
    )
    scale = ops.stack(
        [
            ops.cast(resized_height, "float32") / ops.cast(height, "float32"),
            ops.cast(resized_width, "float32") / ops.cast(width, "float32"),
        ]
    )
    return resized, scale


def center_crop_window(height, width, crop_fraction):
    """(top, left, side) of the centred square of `crop_fraction` x the shorter side (floored),
    for Python int or tensor sizes."""
    if isinstance(height, int) and isinstance(width, int):
        crop = max(int(np.float32(crop_fraction) * np.float32(min(height, width))), 1)
    else:
        crop = ops.maximum(
            ops.cast(crop_fraction * ops.cast(ops.minimum(height, width), "float32"), "int32"), 1
        )
    return (height - crop) // 2, (width - crop) // 2, crop


def center_crop(images, target_size, crop_fraction):
    """Images [B, H, W, C] of one size -> float32 [B, *target_size, C] 0..255: the centred
    square of `crop_fraction` x the shorter side, resized bilinearly (the ImageNet evaluation
    view; crop side and offsets floored, as the tensorflow/tpu classifiers' input).
    """
    shape = ops.shape(images)
    height, width = shape[1], shape[2]
    top, left, crop = center_crop_window(height, width, crop_fraction)
    return _resample(
        images,
        _sampling(height, target_size[0], target_size[0], top, crop),
        _sampling(width, target_size[1], target_size[1], left, crop),
    )


def boxes_to_original(boxes, scales, original_sizes):
    """Boxes [B, D, 4] in letterboxed pixels -> each original image's pixels, clipped to it.

    scales: [B, 2] or [2] (y, x) from `letterbox`; original_sizes: [B, 2] or [2] (H, W).
    """
    scales = ops.reshape(ops.cast(scales, "float32"), (-1, 1, 2))
    limits = ops.reshape(ops.cast(original_sizes, "float32"), (-1, 1, 2))
    boxes = boxes / ops.concatenate([scales, scales], axis=-1)
    return ops.clip(boxes, 0.0, ops.concatenate([limits, limits], axis=-1))


@keras.saving.register_keras_serializable(package="spinenet_tf")
class ImageConverter:
    """A task's preprocessing: photos (uint8 or float 0..255, any size) -> model input.

    Args:
        image_size: (height, width) of the model's input: photos are letterboxed into it.
            None for a model built for dynamic input: photos keep their scale and are
            padded bottom/right to a multiple of `size_multiple`.
        size_multiple: what the backbone needs height and width to be multiples of.
        crop_fraction: None to letterbox (detectors); a fraction in (0, 1] to take the
            photo's centred square of that fraction of its shorter side, resized to
            `image_size` (classifiers: 0.875, i.e. 224 of 256).
    """

    def __init__(self, image_size=None, size_multiple=1, crop_fraction=None):
        self.image_size = None if image_size is None else tuple(int(size) for size in image_size)
        self.size_multiple = int(size_multiple)
        if crop_fraction is not None:
            if not 0.0 < crop_fraction <= 1.0:
                raise ModelError(f"crop_fraction must be in (0, 1], got {crop_fraction}.")
            if self.image_size is None:
                raise ModelError("A centre-cropping converter needs the model's image_size.")
        self.crop_fraction = crop_fraction

    def target_size(self, height, width):
        """The model input size for photos of (height, width) (static sizes)."""
        if self.image_size is not None:
            return self.image_size
        multiple = self.size_multiple
        return multiple * math.ceil(height / multiple), multiple * math.ceil(width / multiple)

    def resize(self, images, target_size):
        """Images [B, H, W, 3] of one size -> (float32 0..255 [B, *target_size, 3], scale (y, x)):
        letterboxed, or centre-cropped (scale then 1: a classifier answers no boxes)."""
        if self.crop_fraction is not None:
            return center_crop(images, target_size, self.crop_fraction), ops.ones((2,))
        return letterbox(images, target_size, resize=self.image_size is not None)

    def __call__(self, images):
        """Images [B, H, W, 3] of one size -> (normalised model input, scale (y, x))."""
        if self.image_size is not None:
            target_size = self.image_size  # the photos' size may be unknown until the graph runs
        else:
            height, width = images.shape[1:3]
            if height is None or width is None:
                raise ModelError(
                    "A model built for dynamic input sizes its input from the photos: their height "
                    "and width must be known when the graph is traced."
                )
            target_size = self.target_size(height, width)
        resized, scale = self.resize(images, target_size)
        return normalise_image(resized), scale

    def resize_each(self, images):
        """A list of photos of different sizes -> (float32 numpy [N, S_h, S_w, 3] 0..255 resized,
        scales [N, 2], original sizes [N, 2]); a dynamic model pads all to the largest."""
        sizes = np.array([np.shape(image)[:2] for image in images], np.int32).reshape(-1, 2)
        target = self.target_size(*(int(size) for size in sizes.max(axis=0)))
        resized, scales = [], []
        for image in images:
            one, scale = self.resize(ops.expand_dims(ops.convert_to_tensor(image), 0), target)
            resized.append(ops.convert_to_numpy(one))
            scales.append(ops.convert_to_numpy(scale))
        return np.concatenate(resized), np.array(scales, np.float32).reshape(-1, 2), sizes

    def get_config(self):
        return {
            "image_size": None if self.image_size is None else list(self.image_size),
            "size_multiple": self.size_multiple,
            "crop_fraction": self.crop_fraction,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
