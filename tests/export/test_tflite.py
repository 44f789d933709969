"""TFLite export: raw-output parity per quantisation, detections inside the .tflite, int8 layout."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from spinenet_tf.detection.nms import non_max_suppression
from spinenet_tf.detection.retinanet import RetinaNet
from spinenet_tf.export import TFLiteDetector, export_tflite
from spinenet_tf.export.serving import (
    POSTPROCESS_SCOPE,
    detect_letterboxed,
    greedy_suppression,
    letterbox_uint8,
)
from tests.helpers import assert_same_detections, random_image, spread_detector

# Largest |tflite - keras| / max |keras| of the raw outputs, measured on this random model:
# 1e-6, 1e-3, 2.5e-2, and for int8 (dynamic range in the head's prediction convs) 0.10
# (logits) / 0.16 (box deltas). int8's bound only catches a broken model (an all-zero output is 1.0);
# its accuracy is shown by AP on the synthetic val split (`python -m benchmarks.export_formats`).
RAW_TOLERANCE = {"none": 1e-4, "fp16": 5e-3, "dynamic": 5e-2, "int8": 0.6}


@pytest.fixture(scope="module")
def model_and_images():
    model = spread_detector()
    images = [random_image(90 + 9 * i, 128, seed=i) for i in range(6)]
    letterboxed = [letterbox_uint8(image, 128)[0] for image in images]
    return model, letterboxed


def real_detections(outputs):
    """The first image's detections, up to its count, from the .tflite's or Keras' outputs."""
    prefix = "detection_" if "num_detections" in outputs and "detection_boxes" in outputs else ""
    count = int(np.asarray(outputs["num_detections"])[0])
    return {key: np.asarray(outputs[prefix + key])[0, :count] for key in ("boxes", "scores", "classes")}


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
            assert_same_detections(real_detections(outputs), real_detections(detections))
    # int8: the backbone's and head's convolutions; the head's prediction convs with int8
    # weights on float activations (dynamic range); the post-processing in float.
    if quantize == "int8":
        tensors = {t["index"]: t for t in detector.interpreter.get_tensor_details()}
        convolutions = [
            (op, tensors[op["outputs"][0]])
            for op in detector.interpreter._get_ops_details()
            if op["op_name"] == "CONV_2D"
        ]
        predicting = [
            any(f"/{layer}_" in output["name"] for layer in RetinaNet.int8_dynamic_layers)
            for _, output in convolutions
        ]
        assert not all(predicting) and all(
            tensors[op["inputs"][0]]["dtype"] == output["dtype"] == np.int8
            for (op, output), dynamic in zip(convolutions, predicting)
            if not dynamic
        )
        assert any(predicting) and all(
            tensors[op["inputs"][1]]["dtype"] == np.int8 and output["dtype"] == np.float32
            for (op, output), dynamic in zip(convolutions, predicting)
            if dynamic
        )
        postprocess = [t for t in tensors.values() if t["name"].startswith(f"{POSTPROCESS_SCOPE}/")]
        assert postprocess and all(t["dtype"] != np.int8 for t in postprocess)


def crowded_candidates(seed, num=300):
    """Two images' sorted candidates in clusters (long suppression chains), with a pair at IoU
    exactly 0.5 (kept: suppression needs more), tied scores, and a third of them invalid."""
    rng = np.random.default_rng(seed)
    corners = rng.uniform(0, 100, (2, num, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(1, 40, (2, num, 2))], -1).astype("float32")
    boxes[0, :2] = [[0, 0, 10, 10], [0, 0, 10, 5]]
    scores = -np.sort(-rng.uniform(0, 1, (2, num)), axis=1).astype("float32")
    scores[:, 5] = scores[:, 4]
    return boxes, scores, scores > 0.3


@pytest.mark.parametrize("seed", range(3))
def test_greedy_suppression_keeps_what_the_keras_nms_keeps_in_tensorflow_and_litert(seed):
    boxes, scores, valid = crowded_candidates(seed)
    expected = np.asarray(non_max_suppression(boxes, scores, 0.5, valid))
    assert expected[0, :2].all() and 0 < expected.sum() < valid.sum()
    np.testing.assert_array_equal(greedy_suppression(boxes, scores, 0.5, valid).numpy(), expected)

    @tf.function(
        input_signature=[
            tf.TensorSpec(boxes.shape),
            tf.TensorSpec(scores.shape),
            tf.TensorSpec(valid.shape, tf.bool),
        ]
    )
    def suppress(boxes, scores, valid):
        return greedy_suppression(boxes, scores, 0.5, valid)

    content = tf.lite.TFLiteConverter.from_concrete_functions(
        [suppress.get_concrete_function()], suppress
    ).convert()
    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    for detail in interpreter.get_input_details():
        value = {"boxes": boxes, "scores": scores, "valid": valid}[
            detail["name"].split(":")[0].split("_")[-1]
        ]
        interpreter.set_tensor(detail["index"], value)
    interpreter.invoke()
    kept = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_array_equal(kept, expected)
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert "NON_MAX_SUPPRESSION_V4" in ops and "WHILE" not in ops


def test_class_agnostic_nms_exports_with_the_keras_detections(model_and_images, tmp_path):
    _, images = model_and_images
    model = spread_detector()
    model.detection_spec = dataclasses.replace(model.detection_spec, nms="class_agnostic")
    export_tflite(model, str(tmp_path / "model.tflite"))
    outputs = TFLiteDetector(tmp_path / "model.tflite")(images[0])
    _, detections = detect_letterboxed(model, tf.cast(images[0][None], tf.float32))
    assert_same_detections(real_detections(outputs), real_detections(detections))


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
