"""Mobile SpineNet's layers: the MBConv block and the depthwise cross-scale resampling.

Both follow TF Model Garden's `spinenet_mobile` (its `InvertedBottleneckBlock` and
`_resample_with_sepconv`), so that parameter counts match it to the integer. Functional
builders of keras.layers, like `blocks.py`, so that `profile` counts every multiply-add.
"""

import keras

from spinenet_tf.layers.conv_norm import conv_norm
from spinenet_tf.layers.stochastic_depth import StochasticDepth


def depthwise_norm(x, settings, strides, name):
    """3x3 depthwise conv (no bias, not regularised, as Model Garden's) -> BN -> activation."""
    x = keras.layers.DepthwiseConv2D(
        3,
        strides=strides,
        padding="same",
        use_bias=False,
        depthwise_initializer=settings.initializer(),
        dtype=settings.dtype,
        name=f"{name}_conv",
    )(x)
    x = settings.norm(f"{name}_bn")(x)
    return settings.activate(x, f"{name}_act")


def squeeze_excitation(x, squeeze_filters, settings, name):
    """Channel gating (Hu et al. 2018): mean over space -> 1x1 conv + relu -> 1x1 conv +
    hard sigmoid, times `x`. Both convs have a bias."""
    gate = keras.layers.GlobalAveragePooling2D(keepdims=True, dtype=settings.dtype, name=f"{name}_pool")(x)
    gate = settings.conv(squeeze_filters, 1, f"{name}_reduce", use_bias=True)(gate)
    gate = keras.layers.Activation("relu", dtype=settings.dtype, name=f"{name}_reduce_act")(gate)
    gate = settings.conv(x.shape[-1], 1, f"{name}_expand", use_bias=True)(gate)
    gate = keras.layers.Activation("hard_sigmoid", dtype=settings.dtype, name=f"{name}_gate")(gate)
    return keras.layers.Multiply(dtype=settings.dtype, name=f"{name}_scale")([x, gate])


def mbconv_block(x, filters, settings, name, strides=1, expand_ratio=6, se_ratio=0.2, drop_rate=None):
    """Inverted bottleneck (Sandler et al. 2018) with squeeze-excitation, as EfficientNet's.

    1x1 expansion to expand_ratio * input width + BN + act (skipped when expand_ratio is
    1), 3x3 depthwise (stride `strides`) + BN + act, squeeze-excitation to
    max(1, int(se_ratio * input width)) channels (none when se_ratio is 0), 1x1
    projection to `filters` + BN; plus the input (after stochastic depth of the branch)
    when width and resolution are kept. No activation at the end (a linear bottleneck).
    """
    in_channels = x.shape[-1]
    shortcut = x
    if expand_ratio > 1:
        x = conv_norm(x, settings, in_channels * expand_ratio, 1, f"{name}_expand")
    x = depthwise_norm(x, settings, strides, f"{name}_depthwise")
    if se_ratio:
        x = squeeze_excitation(x, max(1, int(in_channels * se_ratio)), settings, f"{name}_se")
    x = conv_norm(x, settings, filters, 1, f"{name}_project", activate=False)
    if strides != 1 or in_channels != filters:
        return x
    if drop_rate:
        x = StochasticDepth(drop_rate, dtype=settings.dtype, name=f"{name}_drop_path")(x)
    return keras.layers.Add(dtype=settings.dtype, name=f"{name}_add")([x, shortcut])


def mbconv_group(
    x, filters, repeats, settings, name, strides=1, expand_ratio=6, se_ratio=0.2, drop_rate=None
):
    """`repeats` MBConv blocks at one resolution; only the first may change width or stride."""
    for repeat in range(1, repeats + 1):
        x = mbconv_block(
            x,
            filters,
            settings,
            f"{name}_r{repeat}",
            strides if repeat == 1 else 1,
            expand_ratio,
            se_ratio,
            drop_rate,
        )
    return x


def resample_depthwise(x, source_level, target_level, target_filters, settings, name):
    """Mobile SpineNet's resampling: no channel reduction first (unlike SpineNet's); down,
    a 3x3/2 depthwise conv + BN + act per factor 2; up, nearest neighbour; then a 1x1 conv
    + BN (no activation) to the target block's width."""
    for step in range(target_level - source_level):
        x = depthwise_norm(x, settings, 2, f"{name}_down{step + 1}")
    if target_level < source_level:
        x = keras.layers.UpSampling2D(
            2 ** (source_level - target_level),
            interpolation="nearest",
            dtype=settings.dtype,
            name=f"{name}_up",
        )(x)
    return conv_norm(x, settings, target_filters, 1, f"{name}_match", activate=False)
