"""Feature Pyramid Network decoder (Lin et al. 2017) for scale-decreased backbones."""

import keras


def fpn_decoder(features, min_level, max_level, num_filters, settings):
    """Backbone features {"P3": C3, ...} -> pyramid {"P{min_level}": ..., "P{max_level}": ...}.

    Lateral 1x1 convs, a top-down path of nearest 2x upsampling and sums, a 3x3 conv per
    level; levels past the backbone's coarsest come from 3x3 stride-2 convs (with an
    activation before each after the first); BN on every output (TF Model Garden's FPN).
    """
    backbone_levels = sorted(int(name[1:]) for name in features)
    top = backbone_levels[-1]
    missing = [level for level in range(min_level, min(top, max_level) + 1) if f"P{level}" not in features]
    if missing:
        raise ValueError(f"FPN needs backbone features for levels {missing}; got {sorted(features)}.")
    lateral = {
        level: settings.conv(num_filters, 1, f"fpn_lateral_P{level}", use_bias=True)(features[f"P{level}"])
        for level in range(min_level, top + 1)
    }
    merged = {top: lateral[top]}
    for level in range(top - 1, min_level - 1, -1):
        upsampled = keras.layers.UpSampling2D(
            2, interpolation="nearest", dtype=settings.dtype, name=f"fpn_up_P{level + 1}"
        )(merged[level + 1])
        merged[level] = keras.layers.Add(dtype=settings.dtype, name=f"fpn_sum_P{level}")(
            [lateral[level], upsampled]
        )
    outputs = {
        level: settings.conv(num_filters, 3, f"fpn_output_P{level}", use_bias=True)(merged[level])
        for level in range(min_level, top + 1)
    }
    for level in range(top + 1, max_level + 1):
        x = outputs[level - 1]
        if level > top + 1:
            x = settings.activate(x, f"fpn_act_P{level}")
        outputs[level] = settings.conv(num_filters, 3, f"fpn_output_P{level}", strides=2, use_bias=True)(x)
    return {
        f"P{level}": settings.norm(f"fpn_bn_P{level}")(outputs[level])
        for level in range(min_level, max_level + 1)
    }
