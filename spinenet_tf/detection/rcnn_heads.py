"""The second-stage heads of Mask R-CNN, each a small functional model applied to RoI features.

Layouts and initialisers of TF Model Garden's `DetectionHead` and `MaskHead`: 3x3 convs
(with bias) each followed by batch norm and the activation, then for boxes fully
connected layers (each with batch norm) and two dense predictors, for masks a 2x2
stride-2 transposed conv and a 1x1 conv with one mask per class. They take RoIs as a
batch ([B * R, S, S, C]), so one model serves any number of RoIs per image and its
multiply-adds per RoI are profiled like any layer.
"""

import keras


def _fan_out_normal():
    return keras.initializers.VarianceScaling(scale=2.0, mode="fan_out", distribution="untruncated_normal")


def _conv_stack(x, settings, num_convs, num_filters, name):
    for i in range(num_convs):
        x = keras.layers.Conv2D(
            num_filters,
            3,
            padding="same",
            kernel_initializer=_fan_out_normal(),
            dtype=settings.dtype,
            name=f"{name}_conv{i + 1}",
        )(x)
        x = settings.norm(f"{name}_conv{i + 1}_bn")(x)
        x = settings.activate(x, f"{name}_conv{i + 1}_act")
    return x


def box_head(
    roi_size, channels, num_classes, num_convs, num_filters, num_fcs, fc_dims, class_agnostic, settings, name
):
    """RoI features [N, roi_size, roi_size, channels] -> (class logits [N, num_classes],
    box deltas [N, 4 * (1 if class_agnostic else num_classes)])."""
    features = keras.Input((roi_size, roi_size, channels), name=f"{name}_roi_features")
    x = _conv_stack(features, settings, num_convs, num_filters, name)
    x = keras.layers.Flatten(dtype=settings.dtype, name=f"{name}_flatten")(x)
    for i in range(num_fcs):
        x = keras.layers.Dense(
            fc_dims,
            kernel_initializer=keras.initializers.VarianceScaling(
                scale=1 / 3.0, mode="fan_out", distribution="uniform"
            ),
            dtype=settings.dtype,
            name=f"{name}_fc{i + 1}",
        )(x)
        x = settings.norm(f"{name}_fc{i + 1}_bn")(x)
        x = settings.activate(x, f"{name}_fc{i + 1}_act")
    class_logits = keras.layers.Dense(
        num_classes,
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
        dtype="float32",
        name=f"{name}_classes",
    )(x)
    box_deltas = keras.layers.Dense(
        4 if class_agnostic else 4 * num_classes,
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
        dtype="float32",
        name=f"{name}_boxes",
    )(x)
    return keras.Model(features, [class_logits, box_deltas], name=name)


def mask_head(roi_size, channels, num_masks, num_convs, num_filters, settings, name="mask_head"):
    """RoI features [N, roi_size, roi_size, channels] -> mask logits
    [N, 2 * roi_size, 2 * roi_size, num_masks]."""
    features = keras.Input((roi_size, roi_size, channels), name=f"{name}_roi_features")
    x = _conv_stack(features, settings, num_convs, num_filters, name)
    x = keras.layers.Conv2DTranspose(
        num_filters,
        2,
        strides=2,
        kernel_initializer=_fan_out_normal(),
        dtype=settings.dtype,
        name=f"{name}_upsample",
    )(x)
    x = settings.norm(f"{name}_upsample_bn")(x)
    x = settings.activate(x, f"{name}_upsample_act")
    logits = keras.layers.Conv2D(
        num_masks, 1, kernel_initializer=_fan_out_normal(), dtype="float32", name=f"{name}_logits"
    )(x)
    return keras.Model(features, logits, name=name)
