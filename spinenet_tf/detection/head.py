"""RetinaNet class and box subnets, shared across pyramid levels (functional builder)."""

import math

import keras


def _subnet(features, settings, num_convs, num_filters, out_channels, name, bias_initializer):
    """`num_convs` 3x3 convs shared by all levels, each with its own BN per level."""
    convs = [
        keras.layers.Conv2D(
            num_filters,
            3,
            padding="same",
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
            dtype=settings.dtype,
            name=f"{name}_conv{i + 1}",
        )
        for i in range(num_convs)
    ]
    predictor = keras.layers.Conv2D(
        out_channels,
        3,
        padding="same",
        kernel_initializer=keras.initializers.RandomNormal(stddev=1e-5),
        bias_initializer=bias_initializer,
        dtype=settings.dtype,
        name=f"{name}_predict",
    )
    outputs = []
    for level_name, x in features.items():
        for i, conv in enumerate(convs):
            x = conv(x)
            x = settings.norm(f"{name}_bn{i + 1}_{level_name}")(x)
            x = settings.activate(x, f"{name}_act{i + 1}_{level_name}")
        outputs.append(predictor(x))
    return outputs


def retinanet_head(
    features, num_classes, anchors_per_location, num_convs, num_filters, settings, prior_probability=0.01
):
    """Returns (class_logits [B, N, num_classes], box_deltas [B, N, 4]) over all levels.

    Anchors are ordered level by level, row-major, then per location, as in `anchors.py`.
    The class predictor's bias starts at -log((1 - pi) / pi) so that every anchor begins
    with foreground probability pi = `prior_probability` (Lin et al. 2017).
    """
    prior_bias = keras.initializers.Constant(-math.log((1 - prior_probability) / prior_probability))
    class_maps = _subnet(
        features,
        settings,
        num_convs,
        num_filters,
        anchors_per_location * num_classes,
        "class_net",
        prior_bias,
    )
    box_maps = _subnet(
        features, settings, num_convs, num_filters, anchors_per_location * 4, "box_net", "zeros"
    )
    return _flatten(class_maps, num_classes, "class_logits"), _flatten(box_maps, 4, "box_deltas")


def _flatten(maps, per_anchor, name):
    """[B, H, W, A * K] maps of every level -> one float32 [B, sum(H * W * A), K] tensor."""
    flat = [keras.layers.Reshape((-1, per_anchor), name=f"{name}_{i}")(x) for i, x in enumerate(maps)]
    return keras.layers.Concatenate(axis=1, dtype="float32", name=name)(flat)
