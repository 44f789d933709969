"""Photos of any size to a detector's input, and detections back to the photos' pixels.

The one preprocessing path of the project, in keras.ops so it runs on every backend and
inside exported graphs: `RetinaNet.predict`, the evaluation, the SavedModel signatures and
the host-side letterboxing of the TFLite input all call it. A photo is letterboxed (its
longest side scaled to fit the model's input, aspect ratio kept, zero padding
bottom/right), then normalised with ImageNet statistics. The resize is bilinear with
half-pixel centres and no antialiasing, the interpolation of `tf.image.resize` that the
training pipeline uses, written as gathers so that it takes images whose size is only
known when the graph runs (a SavedModel request) while its output size stays static.
"""

import math

import keras
import numpy as np
from keras import ops

from spinenet_tf.errors import ModelError

# ImageNet statistics in 0..255 RGB, the normalisation of Model Garden's detectors.
MEAN_RGB = (123.675, 116.28, 103.53)
STDDEV_RGB = (58.395, 57.12, 57.375)


def normalise_image(images):
    """0..255 RGB (any dtype) -> float32 with ImageNet mean and standard deviation removed."""
    return (ops.cast(images, "float32") - np.array(MEAN_RGB, "float32")) / np.array(STDDEV_RGB, "float32")


def _letterboxed_size(height, width, target_height, target_width):
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


def _sampling(source_size, resized_size, target_size):
    """Bilinear sampling of one axis: (low index, high index, weight of high, inside) per
    output position, as tf.image.resize's half-pixel centres: source = (i + 0.5) * s - 0.5."""
    positions = ops.arange(target_size, dtype="float32")
    ratio = ops.cast(source_size, "float32") / ops.cast(resized_size, "float32")
    source = ops.maximum((positions + 0.5) * ratio - 0.5, 0.0)
    low = ops.floor(source)
    weight = source - low
    last = ops.cast(source_size, "int32") - 1
    low_index = ops.minimum(ops.cast(low, "int32"), last)
    high_index = ops.minimum(low_index + 1, last)
    inside = ops.cast(ops.arange(target_size, dtype="int32") < ops.cast(resized_size, "int32"), "float32")
    return low_index, high_index, weight, inside


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
        resized_height, resized_width = _letterboxed_size(height, width, target_height, target_width)
    else:
        resized_height, resized_width = height, width
    images = ops.cast(images, "float32")
    rows_low, rows_high, row_weight, row_inside = _sampling(height, resized_height, target_height)
    cols_low, cols_high, col_weight, col_inside = _sampling(width, resized_width, target_width)
    top, bottom = ops.take(images, rows_low, axis=1), ops.take(images, rows_high, axis=1)
    col_weight = ops.reshape(col_weight, (1, 1, -1, 1))
    top = (
        ops.take(top, cols_low, axis=2)
        + (ops.take(top, cols_high, axis=2) - ops.take(top, cols_low, axis=2)) * col_weight
    )
    bottom = (
        ops.take(bottom, cols_low, axis=2)
        + (ops.take(bottom, cols_high, axis=2) - ops.take(bottom, cols_low, axis=2)) * col_weight
    )
    resized = top + (bottom - top) * ops.reshape(row_weight, (1, -1, 1, 1))
    inside = ops.reshape(row_inside, (1, -1, 1, 1)) * ops.reshape(col_inside, (1, 1, -1, 1))
    scale = ops.stack(
        [
            ops.cast(resized_height, "float32") / ops.cast(height, "float32"),
            ops.cast(resized_width, "float32") / ops.cast(width, "float32"),
        ]
    )
    return resized * inside, scale


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
    """A detector's preprocessing: photos (uint8 or float 0..255, any size) -> model input.

    Args:
        image_size: (height, width) of the model's input: photos are letterboxed into it.
            None for a model built for dynamic input: photos keep their scale and are
            padded bottom/right to a multiple of `size_multiple`.
        size_multiple: what the backbone needs height and width to be multiples of.
    """

    def __init__(self, image_size=None, size_multiple=1):
        self.image_size = None if image_size is None else tuple(int(size) for size in image_size)
        self.size_multiple = int(size_multiple)

    def target_size(self, height, width):
        """The model input size for photos of (height, width) (static sizes)."""
        if self.image_size is not None:
            return self.image_size
        multiple = self.size_multiple
        return multiple * math.ceil(height / multiple), multiple * math.ceil(width / multiple)

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
        letterboxed, scale = letterbox(images, target_size, resize=self.image_size is not None)
        return normalise_image(letterboxed), scale

    def letterbox_each(self, images):
        """A list of photos of different sizes -> (float32 numpy [N, S_h, S_w, 3] 0..255 letterboxed,
        scales [N, 2], original sizes [N, 2]); a dynamic model pads all to the largest."""
        sizes = np.array([np.shape(image)[:2] for image in images], np.int32).reshape(-1, 2)
        target = self.target_size(*(int(size) for size in sizes.max(axis=0)))
        letterboxed, scales = [], []
        for image in images:
            boxed, scale = letterbox(
                ops.expand_dims(ops.convert_to_tensor(image), 0), target, self.image_size is not None
            )
            letterboxed.append(ops.convert_to_numpy(boxed))
            scales.append(ops.convert_to_numpy(scale))
        return np.concatenate(letterboxed), np.array(scales, np.float32).reshape(-1, 2), sizes

    def get_config(self):
        return {
            "image_size": None if self.image_size is None else list(self.image_size),
            "size_multiple": self.size_multiple,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
