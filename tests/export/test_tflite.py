"""TFLite export: raw-output parity per quantisation, detections inside the .tflite, int8 layout."""

import numpy as np
import pytest
import tensorflow as tf

from spinenet_tf.detection.retinanet import RetinaNet
from spinenet_tf.export import TFLiteDetector, export_tflite
from spinenet_tf.export.serving import POSTPROCESS_SCOPE, detect_letterboxed, letterbox_uint8
from tests.helpers import random_image, spread_detector

# Largest |tflite - keras| / max |keras| of the raw outputs; measured on this random model:
# 6e-7, 1e-3, 2e-2 and 0.1 (logits) / 0.16 (box deltas) for int8 (an int8 backbone, a float head). int8's
# bound only catches a broken model (an all-zero output is 1.0); its accuracy is shown by
# mAP on the synthetic val split (`python -m benchmarks.export_formats`).
RAW_TOLERANCE = {"none": 1e-4, "fp16": 5e-3, "dynamic": 5e-2, "int8": 0.6}


@pytest.fixture(scope="module")
def model_and_images():
    model = spread_detector()
    images = [random_image(90 + 9 * i, 128, seed=i) for i in range(6)]
    letterboxed = [letterbox_uint8(image, 128)[0] for image in images]
    return model, letterboxed


def relative_error(actual, expected):
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize("quantize", ["none", "fp16", "dynamic", "int8"])
def test_tflite_outputs_match_keras_within_the_quantisation_tolerance(model_and_images, quantize, tmp_path):
    model, images = model_and_images
    path = tmp_path / "model.tflite"
    size = export_tflite(model, str(path), quantize, images if quantize == "int8" else None)
    assert size == path.stat().st_size > 0 and not (tmp_path / "model.tflite.partial").exists()
    detector = TFLiteDetector(path)
    assert detector.image_size == 128
    for image in images[:2]:
        outputs = detector(image)
        raw, detections = detect_letterboxed(model, tf.cast(image[None], tf.float32))
        for name in ("class_logits", "box_deltas"):
            assert relative_error(outputs[name], raw[name].numpy()) < RAW_TOLERANCE[quantize], name
        assert outputs["detection_boxes"].shape == (1, 100, 4)
        assert 0 < int(outputs["num_detections"][0]) <= 100
        if quantize == "none":  # float: the same detections as Keras
            count = int(detections["num_detections"][0])
            assert int(outputs["num_detections"][0]) == count
            np.testing.assert_array_equal(outputs["detection_classes"][0], detections["classes"][0])
            np.testing.assert_allclose(
                outputs["detection_boxes"][0], detections["boxes"][0], atol=1e-3, rtol=0
            )
            np.testing.assert_allclose(outputs["detection_scores"][0], detections["scores"][0], atol=1e-5)
    if quantize == "int8":  # int8 backbone convolutions; the head and the IoU division of NMS in float
        tensors = {t["name"]: t for t in detector.interpreter.get_tensor_details()}
        convolutions = [
            t for name, t in tensors.items() if name.endswith("convolution") and len(t["shape"]) == 4
        ]
        in_head = [
            any(f"/{layer}_" in t["name"] for layer in RetinaNet.int8_float_layers) for t in convolutions
        ]
        assert not all(in_head) and all(t["dtype"] == np.int8 for t, h in zip(convolutions, in_head) if not h)
        assert any(in_head) and all(t["dtype"] == np.float32 for t, h in zip(convolutions, in_head) if h)
        assert tensors[f"{POSTPROCESS_SCOPE}/truediv"]["dtype"] == np.float32


def test_tflite_rejects_a_wrong_input_and_int8_needs_images(model_and_images, tmp_path):
    model, images = model_and_images
    path = tmp_path / "model.tflite"
    export_tflite(model, str(path))
    with pytest.raises(
        ValueError, match=r"one letterboxed uint8 image of shape \(1, 128, 128, 3\); got float32"
    ):
        TFLiteDetector(path)(images[0].astype(np.float32))
    with pytest.raises(ValueError, match="int8 quantisation needs representative images"):
        export_tflite(model, str(tmp_path / "int8.tflite"), "int8")
    with pytest.raises(ValueError, match="quantize must be one of"):
        export_tflite(model, str(tmp_path / "x.tflite"), "int4")
