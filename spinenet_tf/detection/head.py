"""Dense heads over the pyramid, shared across levels: RetinaNet's subnets and the RPN.

Both follow TF Model Garden: 3x3 convs (with bias) shared by every level, each followed
by a batch norm of its own per level and the activation, then a shared predictor conv.
RetinaNet's may make every 3x3 conv depthwise-separable (`use_separable_conv`, Model
Garden's head of the Mobile SpineNet detectors), with that head's initialisers.
"""

import math

import keras


def _normal(stddev):
    return keras.initializers.RandomNormal(stddev=stddev)


def _tower_conv(num_filters, settings, name, separable):
    if separable:  # Model Garden gives its separable tower convs Keras' default (Glorot) initialisers
        return keras.layers.SeparableConv2D(num_filters, 3, padding="same", dtype=settings.dtype, name=name)
    return keras.layers.Conv2D(
        num_filters, 3, padding="same", kernel_initializer=_normal(0.01), dtype=settings.dtype, name=name
    )


def conv_tower(features, settings, num_convs, num_filters, name, use_separable_conv=False):
    """`num_convs` 3x3 convs (depthwise-separable if `use_separable_conv`) shared by all levels,
    each with its own BN per level -> {level: map}."""
    convs = [
        _tower_conv(num_filters, settings, f"{name}_conv{i + 1}", use_separable_conv)
        for i in range(num_convs)
    ]
    outputs = {}
    for level_name, x in features.items():
        for i, conv in enumerate(convs):
            x = conv(x)
            x = settings.norm(f"{name}_bn{i + 1}_{level_name}")(x)
            x = settings.activate(x, f"{name}_act{i + 1}_{level_name}")
        outputs[level_name] = x
    return outputs


def _predictor(settings, out_channels, kernel_size, name, bias_initializer="zeros", separable=False):
    if separable:
        return keras.layers.SeparableConv2D(
            out_channels,
            kernel_size,
            padding="same",
            depthwise_initializer=_normal(0.03),
            pointwise_initializer=_normal(0.03),
            bias_initializer=bias_initializer,
            dtype=settings.dtype,
            name=name,
        )
    return keras.layers.Conv2D(
        out_channels,
        kernel_size,
        padding="same",
        kernel_initializer=_normal(1e-5),
        bias_initializer=bias_initializer,
        dtype=settings.dtype,
        name=name,
    )


def retinanet_head(
    features,
    num_classes,
    anchors_per_location,
    num_convs,
    num_filters,
    settings,
    prior_probability=0.01,
    use_separable_conv=False,
):
    """Returns (class_logits [B, N, num_classes], box_deltas [B, N, 4]) over all levels.

    Anchors are ordered level by level, row-major, then per location, as in `anchors.py`.
    The class predictor's bias starts at -log((1 - pi) / pi) so that every anchor begins
    with foreground probability pi = `prior_probability` (Lin et al. 2017).
    """
    prior_bias = keras.initializers.Constant(-math.log((1 - prior_probability) / prior_probability))
    outputs = {}
    for name, per_anchor, bias in [("class_net", num_classes, prior_bias), ("box_net", 4, "zeros")]:
        tower = conv_tower(features, settings, num_convs, num_filters, name, use_separable_conv)
        predictor = _predictor(
            settings, anchors_per_location * per_anchor, 3, f"{name}_predict", bias, use_separable_conv
        )
        outputs[name] = [predictor(x) for x in tower.values()]
    return (
        _flatten(outputs["class_net"], num_classes, "class_logits"),
        _flatten(outputs["box_net"], 4, "box_deltas"),
    )


def rpn_head(features, anchors_per_location, num_convs, num_filters, settings):
    """Region proposal network: {level: (objectness logits [B, N_l], box deltas [B, N_l, 4])},
    anchors of a level in the order of `anchors.py`."""
    tower = conv_tower(features, settings, num_convs, num_filters, "rpn")
    scores = _predictor(settings, anchors_per_location, 1, "rpn_scores")
    boxes = _predictor(settings, anchors_per_location * 4, 1, "rpn_boxes")
    return {
        level: (
            keras.layers.Reshape((-1,), dtype="float32", name=f"rpn_logits_{level}")(scores(x)),
            keras.layers.Reshape((-1, 4), dtype="float32", name=f"rpn_deltas_{level}")(boxes(x)),
        )
        for level, x in tower.items()
    }


def _flatten(maps, per_anchor, name):
    """[B, H, W, A * K] maps of every level -> one float32 [B, sum(H * W * A), K] tensor."""
    flat = [keras.layers.Reshape((-1, per_anchor), name=f"{name}_{i}")(x) for i, x in enumerate(maps)]
    return keras.layers.Concatenate(axis=1, dtype="float32", name=name)(flat)
