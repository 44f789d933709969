"""Cross-scale resampling of a parent block to a target block's level and width."""

import keras

from spinenet_tf.layers.conv_norm import conv_norm
from spinenet_tf.specs import block_output_channels


def resample_feature(
    x, source_level, source_block_type, target_level, target_block_type, target_filters, alpha, settings, name
):
    """SpineNet's resampling: shrink width by alpha, change resolution, match width.

    1x1 conv to alpha * (source base width) + BN + act; down: 3x3/2 conv + BN + act,
    then the remaining factor by max-pooling: a 3x3/2 pool per factor 2 (Model Garden),
    or with `settings.ops_flavor == "tpu"` one pool of stride factor / 2 (3x3 up to a
    total factor 4, else 5x5), as the tensorflow/tpu SpineNet; up: nearest neighbour;
    finally a 1x1 conv + BN (no activation) to the target block's output width.
    """
    source_channels = x.shape[-1]
    source_width = source_channels // 4 if source_block_type == "bottleneck" else source_channels
    reduced = int(source_width * alpha)
    x = conv_norm(x, settings, reduced, 1, f"{name}_reduce")
    if target_level > source_level:
        x = conv_norm(x, settings, reduced, 3, f"{name}_down", strides=2)
        factor = 2 ** (target_level - source_level)
        if settings.ops_flavor == "tpu" and factor > 2:
            pool_size = 3 if factor <= 4 else 5
            x = keras.layers.MaxPooling2D(
                pool_size, factor // 2, padding="same", dtype=settings.dtype, name=f"{name}_pool"
            )(x)
        else:
            for step in range(target_level - source_level - 1):
                x = keras.layers.MaxPooling2D(
                    3, 2, padding="same", dtype=settings.dtype, name=f"{name}_pool{step + 1}"
                )(x)
    elif target_level < source_level:
        factor = 2 ** (source_level - target_level)
        x = keras.layers.UpSampling2D(
            factor, interpolation="nearest", dtype=settings.dtype, name=f"{name}_up"
        )(x)
    out_channels = block_output_channels(target_block_type, target_filters)
    return conv_norm(x, settings, out_channels, 1, f"{name}_match", activate=False)
