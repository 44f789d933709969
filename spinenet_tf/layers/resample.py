"""Cross-scale resampling of a parent block to a target block's level and width."""

import keras
from keras import ops

from spinenet_tf.layers.conv_norm import conv_norm
from spinenet_tf.specs import block_output_channels


def level_size(size, level):
    """A pyramid level's height or width for an input of `size`: ceil(size / 2**level), what
    the stride-2 "same" convs and pools of the stem and the down-sampling give (None if
    unknown)."""
    return None if size is None else -(-size // 2**level)


@keras.saving.register_keras_serializable(package="spinenet_tf")
class ResizeToLevel(keras.layers.Layer):
    """Nearest resize of a feature map to pyramid level `level` of `image` (see `level_size`).

    Source row floor(i * in / out) for output row i (tf.compat.v1 nearest neighbour, the
    resize of the tensorflow/tpu SpineNet). Needed where an input size is not a multiple of
    the coarsest stride: up-sampling a coarse level by its factor overshoots the finer one.
    Takes the image to read its size, so a model built for dynamic input sizes them when run.
    """

    def __init__(self, level, **kwargs):
        super().__init__(**kwargs)
        self.level = level

    def call(self, x, image):
        for axis in (1, 2):
            source, target = ops.shape(x)[axis], -(-ops.shape(image)[axis] // 2**self.level)
            index = ops.arange(target, dtype="int32") * ops.cast(source, "int32") // ops.cast(target, "int32")
            x = ops.take(x, index, axis=axis)
        return x

    def compute_output_shape(self, x_shape, image_shape):
        return (x_shape[0], *(level_size(size, self.level) for size in image_shape[1:3]), x_shape[3])

    def get_config(self):
        return {**super().get_config(), "level": self.level}


def _tpu_pooling(source_width, target_width, factor):
    """(pool size, stride) of the max-pool after the stride-2 conv, or None: the tensorflow/tpu
    SpineNet's rule, decided on widths when they are known (they then differ from the level
    factor where the input size is not a multiple of it), else on the level factor."""
    if source_width is None or target_width is None:
        source_width, target_width = factor, 1
    if source_width // target_width <= 2:
        return None
    stride = 2 if source_width % target_width else source_width // target_width // 2
    return (3 if source_width / target_width <= 4 else 5), stride


def resample_feature(
    x,
    image,
    source_level,
    source_block_type,
    target_level,
    target_block_type,
    target_filters,
    alpha,
    settings,
    name,
):
    """SpineNet's resampling: shrink width by alpha, change resolution, match width.

    1x1 conv to alpha * (source base width) + BN + act; down: 3x3/2 conv + BN + act,
    then the remaining factor by max-pooling: a 3x3/2 pool per factor 2 (Model Garden),
    or with `settings.ops_flavor == "tpu"` one pool as the tensorflow/tpu SpineNet (3x3
    up to a total factor 4, else 5x5); up: nearest neighbour; finally a 1x1 conv + BN (no
    activation) to the target block's output width.

    Any input size: a level's size is `level_size`, which the strided ops give going down.
    Going up by a factor that does not give it (the `image`'s size is not a multiple of the
    levels' strides, or not known until run), a nearest resize (`ResizeToLevel`) goes
    straight to it, as the tensorflow/tpu SpineNet; at multiples the ops are the plain ones.
    """
    source_channels = x.shape[-1]
    source_width = source_channels // 4 if source_block_type == "bottleneck" else source_channels
    reduced = int(source_width * alpha)
    target_size = tuple(level_size(size, target_level) for size in image.shape[1:3])
    x = conv_norm(x, settings, reduced, 1, f"{name}_reduce")
    if target_level > source_level:
        source_width_px = x.shape[2]
        x = conv_norm(x, settings, reduced, 3, f"{name}_down", strides=2)
        factor = 2 ** (target_level - source_level)
        pooling = (
            _tpu_pooling(source_width_px, target_size[1], factor) if settings.ops_flavor == "tpu" else None
        )
        if pooling:
            pool_size, stride = pooling
            x = keras.layers.MaxPooling2D(
                pool_size, stride, padding="same", dtype=settings.dtype, name=f"{name}_pool"
            )(x)
        elif settings.ops_flavor != "tpu":
            for step in range(target_level - source_level - 1):
                x = keras.layers.MaxPooling2D(
                    3, 2, padding="same", dtype=settings.dtype, name=f"{name}_pool{step + 1}"
                )(x)
    elif target_level < source_level:
        factor = 2 ** (source_level - target_level)
        if None not in target_size and target_size == tuple(factor * size for size in x.shape[1:3]):
            x = keras.layers.UpSampling2D(
                factor, interpolation="nearest", dtype=settings.dtype, name=f"{name}_up"
            )(x)
        else:  # the factor overshoots the level (or the size is only known when run)
            x = ResizeToLevel(target_level, dtype=settings.dtype, name=f"{name}_resize")(x, image)
    if None not in target_size and tuple(x.shape[1:3]) != target_size:
        # The TPU rule pooled by 2 where the sizes do not divide; it resizes the rest of the way.
        x = ResizeToLevel(target_level, dtype=settings.dtype, name=f"{name}_resize")(x, image)
    out_channels = block_output_channels(target_block_type, target_filters)
    return conv_norm(x, settings, out_channels, 1, f"{name}_match", activate=False)
