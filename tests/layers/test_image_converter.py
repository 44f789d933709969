"""The one preprocessing path: letterboxing, normalisation, boxes back to the photo, photo checks."""

import numpy as np
import pytest
import tensorflow as tf

from spinenet_tf import ImageConverter, RetinaNet, SpineNet
from spinenet_tf.errors import ModelError
from spinenet_tf.export.serving import center_crop_uint8, letterbox_uint8
from spinenet_tf.layers.image_converter import MEAN_RGB, STDDEV_RGB, boxes_to_original, center_crop, letterbox
from tests.helpers import random_image, spread_detector
from tests.test_case import run_serialization_test


def to_uint8(image):
    return np.clip(np.round(np.asarray(image)), 0, 255).astype(np.uint8)


# Down- and up-scaling, both orientations, an exact fit and odd sizes.
SIZES = [(300, 500), (77, 41), (128, 128), (640, 480), (33, 200), (128, 64)]


def tf_letterbox(image, size):
    """What the training pipeline's resize gives: tf.image.resize (bilinear, no antialias), then
    zero padding bottom/right."""
    height, width = image.shape[:2]
    scale = min(size / height, size / width)
    resized_size = [max(round(height * scale), 1), max(round(width * scale), 1)]
    resized = tf.image.resize(tf.constant(image), resized_size, method="bilinear")
    return tf.image.pad_to_bounding_box(resized, 0, 0, size, size).numpy(), np.divide(
        resized_size, (height, width)
    )


@pytest.mark.parametrize("height,width", SIZES)
def test_letterbox_equals_tensorflow_resize_and_padding(height, width):
    image = random_image(height, width, seed=height)
    expected, expected_scale = tf_letterbox(image, 128)
    boxed, scale = letterbox(image[None], (128, 128))
    np.testing.assert_allclose(boxed.numpy()[0], expected, atol=1e-4)
    np.testing.assert_allclose(scale.numpy(), expected_scale, rtol=1e-6)
    # In a graph that learns the photo's size only when it runs (a SavedModel request).
    graph = tf.function(
        lambda x: letterbox(x, (128, 128)), input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8)]
    )
    dynamic, dynamic_scale = graph(image[None])
    np.testing.assert_allclose(dynamic.numpy()[0], expected, atol=1e-4)
    np.testing.assert_allclose(dynamic_scale.numpy(), expected_scale, rtol=1e-6)
    # The host-side input of a .tflite (tf.image.resize, not gathers): the same pixels, rounded.
    host, host_scale = letterbox_uint8(image, 128)
    np.testing.assert_array_equal(host, to_uint8(boxed[0]))
    np.testing.assert_array_equal(host_scale, scale.numpy())


def test_boxes_map_back_to_each_photo_and_are_clipped_to_it():
    boxes = np.array([[[10.0, 20.0, 60.0, 128.0]], [[0.0, 0.0, 128.0, 128.0]]], np.float32)
    scales = np.array([[0.5, 0.25], [2.0, 2.0]], np.float32)
    sizes = np.array([[256, 400], [50, 64]])
    mapped = np.asarray(boxes_to_original(boxes, scales, sizes))
    np.testing.assert_allclose(mapped[0, 0], [20, 80, 120, 400])
    np.testing.assert_allclose(mapped[1, 0], [0, 0, 50, 64])  # 64 x 64 in photo pixels, clipped to 50 x 64


def test_converter_normalises_and_pads_a_dynamic_model_to_its_size_multiple():
    photo = np.full((1, 130, 70, 3), 200, np.uint8)
    inputs, scale = ImageConverter(None, size_multiple=128)(photo)
    inputs = np.asarray(inputs)
    assert inputs.shape == (1, 256, 128, 3)
    np.testing.assert_allclose(scale, [1.0, 1.0])
    np.testing.assert_allclose(
        inputs[0, :130, :70],
        np.broadcast_to((200 - np.array(MEAN_RGB)) / STDDEV_RGB, (130, 70, 3)),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        inputs[0, 130:], np.broadcast_to(-np.array(MEAN_RGB) / STDDEV_RGB, (126, 128, 3)), rtol=1e-6
    )
    converter = ImageConverter((256, 192), 32)
    assert ImageConverter.from_config(converter.get_config()).get_config() == {
        "image_size": [256, 192],
        "size_multiple": 32,
        "crop_fraction": None,
    }


def test_a_model_built_for_dynamic_input_predicts_photos_of_any_size():
    backbone = SpineNet("49", filter_size_scale=0.25, endpoints_num_filters=16)
    model = RetinaNet(backbone, 3, num_convs=1, num_filters=16, score_threshold=0.0)
    run_serialization_test(model)
    photos = [random_image(150, 90, seed=1), random_image(70, 200, seed=2)]
    listed = model.predict(photos, verbose=0)  # both padded to 256 x 256
    for n, photo in enumerate(photos):
        alone = model.predict(photo[None], verbose=0)  # padded to 256 x 128 or 128 x 256
        for answer, index in ((listed, n), (alone, 0)):
            assert answer["num_detections"][index] == 100  # score threshold 0
            assert (answer["boxes"][index, :, 2:] <= photo.shape[:2]).all()


@pytest.mark.parametrize(
    "photos,message",
    [
        (
            np.zeros((90, 120, 3), np.uint8),
            r"got one photo of shape \(90, 120, 3\): pass photo\[None\] or \[photo\]",
        ),
        (
            [np.zeros((90, 120, 3), np.uint8), np.zeros((90, 120), np.uint8)],
            r"photo 1 of the list has shape \(90, 120\)",
        ),
        ([], "got an empty list"),
        (
            np.zeros((1, 90, 120, 4), np.uint8),
            r"takes photos \[batch, height, width, 3\]; got shape \(1, 90, 120, 4\)",
        ),
    ],
)
def test_photos_of_a_wrong_shape_are_named(photos, message):
    with pytest.raises(ModelError, match=message):
        spread_detector().predict(photos, verbose=0)


def test_photos_scaled_to_one_get_a_warning():
    with pytest.warns(UserWarning, match="takes pixel values 0..255"):
        spread_detector().predict(np.full((1, 64, 64, 3), 0.5, np.float32), verbose=0)


def test_a_dataset_of_photos_predicts_like_the_array():
    model = spread_detector()
    photos = np.stack([random_image(150, 90, seed=n) for n in range(3)])
    from_dataset = model.predict(tf.data.Dataset.from_tensor_slices(photos).batch(2), verbose=0)
    from_array = model.predict(photos, verbose=0)
    np.testing.assert_allclose(from_dataset["boxes"], from_array["boxes"], atol=1e-3)
    assert from_array["boxes"][..., 2].max() > 100  # in the 150 px photo's pixels, not the 128 px input's


def test_the_centre_crop_is_tf_image_crop_then_resize():
    """A classifier's view: the centred square of 0.875 x the shorter side (floored), resized
    bilinearly, for static and run-time sizes."""
    rng = np.random.default_rng(0)
    for height, width in [(100, 150), (300, 247), (57, 57)]:
        image = rng.integers(0, 256, (1, height, width, 3), np.uint8)
        crop = int(np.float32(0.875) * min(height, width))
        top, left = (height - crop) // 2, (width - crop) // 2
        expected = tf.image.resize(
            tf.cast(image[:, top : top + crop, left : left + crop], tf.float32), (64, 64)
        )
        np.testing.assert_allclose(np.asarray(center_crop(image, (64, 64), 0.875)), expected, atol=1e-4)
        traced = tf.function(
            lambda x: center_crop(x, (64, 64), 0.875),
            input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8)],
        )
        np.testing.assert_allclose(traced(image).numpy(), expected, atol=1e-4)
        host = center_crop_uint8(image[0], 64, 0.875)
        np.testing.assert_array_equal(host, to_uint8(center_crop(image, (64, 64), 0.875)[0]))
