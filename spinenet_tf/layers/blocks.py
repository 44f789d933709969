"""ResNet bottleneck and residual blocks, and groups of them (functional builders)."""

import keras

from spinenet_tf.layers.conv_norm import conv_norm
from spinenet_tf.layers.stochastic_depth import StochasticDepth


def _finish_block(x, shortcut, settings, name, drop_rate):
    if drop_rate:
        x = StochasticDepth(drop_rate, dtype=settings.dtype, name=f"{name}_drop_path")(x)
    x = keras.layers.Add(dtype=settings.dtype, name=f"{name}_add")([x, shortcut])
    return settings.activate(x, f"{name}_out")


def _shortcut(x, settings, out_channels, name):
    """Identity, or a 1x1 conv + BN projection when the width changes."""
    if x.shape[-1] == out_channels:
        return x
    return conv_norm(x, settings, out_channels, 1, f"{name}_proj", activate=False)


def bottleneck_block(x, filters, settings, name, drop_rate=None):
    """1x1 (filters) -> 3x3 (filters) -> 1x1 (4 * filters), plus shortcut."""
    shortcut = _shortcut(x, settings, 4 * filters, name)
    x = conv_norm(x, settings, filters, 1, f"{name}_1")
    x = conv_norm(x, settings, filters, 3, f"{name}_2")
    x = conv_norm(x, settings, 4 * filters, 1, f"{name}_3", activate=False)
    return _finish_block(x, shortcut, settings, name, drop_rate)


def residual_block(x, filters, settings, name, drop_rate=None):
    """3x3 (filters) -> 3x3 (filters), plus shortcut."""
    shortcut = _shortcut(x, settings, filters, name)
    x = conv_norm(x, settings, filters, 3, f"{name}_1")
    x = conv_norm(x, settings, filters, 3, f"{name}_2", activate=False)
    return _finish_block(x, shortcut, settings, name, drop_rate)


BLOCK_BUILDERS = {"bottleneck": bottleneck_block, "residual": residual_block}


def block_group(x, block_type, filters, repeats, settings, name, drop_rate=None):
    """`repeats` blocks of one type at one resolution; only the first may project."""
    build = BLOCK_BUILDERS[block_type]
    for repeat in range(1, repeats + 1):
        x = build(x, filters, settings, f"{name}_r{repeat}", drop_rate)
    return x
