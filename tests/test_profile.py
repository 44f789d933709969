import keras
import pytest

from spinenet_tf import SpineNet, profile


def small_model():
    image = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", use_bias=True)(image)  # 27*16 MACs/pos
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)  # 9*16 MACs/pos
    x = keras.layers.SeparableConv2D(8, 3, padding="same", use_bias=False)(x)  # (9*16 + 16*8)/pos
    x = keras.layers.Conv2DTranspose(4, 2, strides=2, use_bias=False)(x)  # 2*2*4*8 per input pos
    inner = keras.Model(image, x)
    outer_input = keras.Input((None, None, 3))
    y = keras.layers.GlobalAveragePooling2D()(inner(outer_input))
    y = keras.layers.Dense(10)(y)  # 4*10
    return keras.Model(outer_input, y)


def test_hand_computed_counts_through_a_nested_model():
    result = profile(small_model(), (32, 48, 3))
    half = 16 * 24
    expected = half * 27 * 16 + half * 9 * 16 + half * (9 * 16 + 16 * 8) + half * 2 * 2 * 4 * 8 + 4 * 10
    assert result.macs == expected
    conv, bn, dw, sep, tconv, dense = (
        27 * 16 + 16,
        2 * 16,
        9 * 16,
        9 * 16 + 16 * 8 + 8,
        4 * 4 * 8 + 4,
        4 * 10 + 10,
    )
    # SeparableConv2D and Conv2DTranspose default to use_bias=True unless told otherwise.
    assert result.trainable_params == conv + bn + dw + (sep - 8) + (tconv - 4) + dense
    assert result.non_trainable_params == 2 * 16  # BN moving mean and variance


def test_spinenet_macs_scale_with_area_and_static_equals_dynamic():
    dynamic = SpineNet("49", filter_size_scale=0.25, endpoints_num_filters=16)
    static = SpineNet("49", filter_size_scale=0.25, endpoints_num_filters=16, image_shape=(256, 384, 3))
    assert profile(dynamic, (256, 384, 3)) == profile(static, (256, 384, 3))
    small, large = profile(dynamic, (128, 128, 3)).macs, profile(dynamic, (256, 256, 3)).macs
    assert large == 4 * small


def test_wrong_number_of_shapes_is_an_error():
    with pytest.raises(ValueError, match="has 1 inputs but 2 shapes"):
        profile(small_model(), [(32, 32, 3), (32, 32, 3)])
