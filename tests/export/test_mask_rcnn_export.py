"""Mask R-CNN export: the SavedModel's three signatures and the float .tflite give the Keras
model's detections and masks, int8 is refused, `spinenet predict` tints and lists the masks,
and `coco_metrics` scores them."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from pycocotools import mask as mask_utils

from spinenet_tf.cli import main
from spinenet_tf.data.pipeline import coco_source, decode
from spinenet_tf.data.synthetic import write_synthetic_coco
from spinenet_tf.errors import ModelError
from spinenet_tf.evaluation.coco_evaluator import COCO_METRIC_NAMES, MASK_METRIC_NAMES
from spinenet_tf.export import coco_metrics, export_saved_model, export_tflite, load_predictor
from spinenet_tf.export.predictor import TFLITE_LABELS_FILE, TFLitePredictor
from spinenet_tf.export.saved_model import write_labels
from spinenet_tf.export.serving import letterbox_uint8
from spinenet_tf.masks import paste_masks
from spinenet_tf.viz.detections import draw_detections
from tests.helpers import SIZE, encode, random_image, tiny_mask_rcnn

LABELS = {1: "one", 2: "two"}
# |export - Keras| of the mask probabilities; measured 1e-6 (SavedModel) and 2e-6 (.tflite).
MASK_TOLERANCE = 1e-4
DETECTION_KEYS = ("boxes", "scores", "classes", "masks")


# Standard deviations of the random kernels that `model` gives the predictors. Their own
# initialisers (1e-5 for the RPN's scores) make every proposal score the same, to 1e-5: a
# float rounding then reorders them, and the detections of two runtimes differ.
PREDICTOR_STDDEVS = {"rpn_scores": 0.3, "rpn_boxes": 0.02, "box_head_classes": 0.1, "box_head_boxes": 0.02}


@pytest.fixture(scope="module")
def model():
    """tiny_mask_rcnn with random predictors (scores 0.05 to 0.8, about 75 detections a photo,
    masks spread over (0, 1)) and batch-norm scales, offsets and statistics moved by up to
    20 %, so an export that lost them shows. (Moving every weight, as test_case's
    `_perturb_float_weights` does, saturates it to two image-sized boxes.)"""
    keras.utils.set_random_seed(0)
    model = tiny_mask_rcnn()
    rng = np.random.default_rng(0)
    for weight in model.weights:
        name = weight.path.rsplit("/", 1)[-1]
        if name in ("gamma", "beta", "moving_mean", "moving_variance"):
            value = keras.ops.convert_to_numpy(weight)
            shift = 0.0 if name == "moving_variance" else rng.uniform(-0.1, 0.1, value.shape)
            weight.assign((value * rng.uniform(0.8, 1.2, value.shape) + shift).astype(value.dtype))
    layers = {layer.name: layer for part in (model.dense_network, *model.box_heads) for layer in part.layers}
    for name, stddev in PREDICTOR_STDDEVS.items():
        kernel, bias = layers[name].get_weights()
        layers[name].set_weights([rng.normal(0, stddev, kernel.shape).astype(kernel.dtype), bias])
    return model


@pytest.fixture(scope="module")
def saved_model(model, tmp_path_factory):
    base = tmp_path_factory.mktemp("export") / "mask_rcnn"
    return base, export_saved_model(model, str(base), labels=LABELS)


@pytest.fixture(scope="module")
def tflite_path(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("tflite") / "model.tflite"
    export_tflite(model, str(path))
    write_labels(str(path.parent / TFLITE_LABELS_FILE), LABELS, SIZE)
    return path


def keras_detections(model, photo):
    """The Keras model's own answer for one photo: its real detections, in the photo's pixels.
    (Passed as a list, the photo is letterboxed before the traced step: one trace for all sizes.)"""
    answers = model.predict_on_batch([photo])
    count = int(answers["num_detections"][0])
    return {key: np.asarray(answers[key])[0, :count] for key in DETECTION_KEYS}


def served(outputs, index):
    """One image's real detections from a serving signature's outputs."""
    count = int(outputs["num_detections"][index])
    return {key: np.asarray(outputs[f"detection_{key}"])[index, :count] for key in DETECTION_KEYS}


def assert_same_detections(actual, expected):
    count = len(expected["scores"])
    assert len(actual["scores"]) == count > 10
    np.testing.assert_array_equal(actual["classes"], expected["classes"])
    np.testing.assert_allclose(actual["scores"], expected["scores"], rtol=1e-5, atol=1e-6)
    tolerance = 1e-3 * max(1.0, float(np.abs(expected["boxes"]).max()))  # 1e-3 px relative to the photo
    np.testing.assert_allclose(actual["boxes"], expected["boxes"], atol=tolerance, rtol=0)
    np.testing.assert_allclose(actual["masks"], expected["masks"], atol=MASK_TOLERANCE, rtol=0)


def example_of(encoded):
    """A serialized tf.Example holding `encoded` as its image."""
    feature = tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded]))
    return tf.train.Example(
        features=tf.train.Features(feature={"image/encoded": feature})
    ).SerializeToString()


def test_saved_model_signatures_equal_the_keras_model(model, saved_model):
    """Photos of other sizes than the model's 128 px, so letterboxing and the mapping back run."""
    _, path = saved_model
    wide, tall = random_image(100, 150, seed=1), random_image(150, 90, seed=2)
    expected_wide, expected_tall = keras_detections(model, wide), keras_detections(model, tall)
    masks = expected_wide["masks"]
    assert masks.shape[1:] == (28, 28) and masks.std() > 0.1 and 0.01 < (masks > 0.5).mean() < 0.99
    loaded = tf.saved_model.load(path)
    assert set(loaded.signatures) == {"serving_default", "serve_image_bytes", "serve_tf_example"}

    outputs = loaded.signatures["serving_default"](images=tf.constant(np.stack([wide, wide])))
    assert outputs["detection_masks"].shape == (2, 100, 28, 28)
    assert outputs["detection_masks"].dtype == tf.float32
    assert_same_detections(served(outputs, 0), expected_wide)
    assert_same_detections(served(outputs, 1), expected_wide)

    outputs = loaded.signatures["serve_image_bytes"](image_bytes=tf.constant([encode(wide), encode(tall)]))
    assert_same_detections(served(outputs, 0), expected_wide)
    assert_same_detections(served(outputs, 1), expected_tall)

    outputs = loaded.signatures["serve_tf_example"](examples=tf.constant([example_of(encode(tall))]))
    assert_same_detections(served(outputs, 0), expected_tall)


RUN_WITHOUT_SPINENET_TF = """
import sys
sys.modules["spinenet_tf"] = None  # importing it fails: the SavedModel must not need it
import numpy as np, tensorflow as tf
path, photo_file, out = sys.argv[1:]
outputs = tf.saved_model.load(path).signatures["serving_default"](images=np.load(photo_file)[None])
np.savez(out, **{key: value.numpy() for key, value in outputs.items()})
assert "spinenet_tf" not in [name.split(".")[0] for name in sys.modules if sys.modules[name]]
"""


def test_saved_model_runs_with_plain_tensorflow(model, saved_model, tmp_path):
    _, path = saved_model
    photo = random_image(120, 80, seed=3)
    np.save(tmp_path / "photo.npy", photo)
    arguments = [path, str(tmp_path / "photo.npy"), str(tmp_path / "out.npz")]
    result = subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT_SPINENET_TF, *arguments],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_detections(served(np.load(tmp_path / "out.npz"), 0), keras_detections(model, photo))


def doubled_photo(seed):
    """A 200 x 256 photo, each pixel doubled: the letterbox halves it exactly, so the .tflite's
    uint8 input (rounded on the host) equals the float input the Keras model letterboxes itself."""
    return np.repeat(np.repeat(random_image(100, 128, seed=seed), 2, axis=0), 2, axis=1)


def test_tflite_float_equals_the_keras_model(model, tflite_path):
    photo = doubled_photo(seed=4)
    predictor = load_predictor(tflite_path)
    assert isinstance(predictor, TFLitePredictor) and predictor.labels == LABELS
    expected = keras_detections(model, photo)
    assert_same_detections(predictor(photo), expected)
    assert expected["boxes"][:, 2:].max() > 0.6 * 256  # boxes mapped back to the photo's pixels
    # Mask R-CNN's output is its detections: the .tflite has no raw outputs beside them.
    outputs = predictor.detector(letterbox_uint8(photo, SIZE)[0])
    assert sorted(outputs) == sorted([f"detection_{key}" for key in DETECTION_KEYS] + ["num_detections"])


def test_int8_is_refused_in_one_line(model, tmp_path):
    path = tmp_path / "model_int8.tflite"
    with pytest.raises(ModelError) as info:
        export_tflite(model, str(path), "int8", [np.zeros((SIZE, SIZE, 3), np.uint8)])
    assert str(info.value) == (
        "int8 export covers RetinaNet; export a MaskRCNN with quantize none, fp16 or dynamic."
    )
    assert not path.exists()


@pytest.mark.parametrize("export_format", ["saved_model", "tflite"])
def test_predict_command_tints_the_masks_and_lists_them(export_format, model, request, tmp_path):
    """The picture and detections.json of `spinenet predict` on a photo whose detections by
    either format are the Keras model's (see `doubled_photo`)."""
    model_path = (
        request.getfixturevalue("saved_model")[0]
        if export_format == "saved_model"
        else request.getfixturevalue("tflite_path")
    )
    photo = doubled_photo(seed=5)
    height, width = photo.shape[:2]
    Image.fromarray(photo).save(tmp_path / "photo.png")
    detections = keras_detections(model, photo)
    # Five detections drawn: the bar halfway between the fifth and sixth scores, clear of the
    # float rounding by which an export's scores differ from the Keras model's.
    min_score = float(np.mean(np.sort(detections["scores"])[-6:-4]))
    out = tmp_path / "predictions"
    main(
        [
            "predict",
            "--model",
            str(model_path),
            str(tmp_path / "photo.png"),
            "--out",
            str(out),
            "--min-score",
            str(min_score),
        ]
    )
    keep = detections["scores"] >= min_score
    assert keep.sum() == 5 and len(keep) > 10

    with Image.open(out / "photo.png") as picture:
        drawn = np.asarray(picture.convert("RGB"))
    without_masks = {key: value for key, value in detections.items() if key != "masks"}
    boxes_only = np.asarray(draw_detections(photo, without_masks, LABELS, min_score))
    masks = paste_masks(detections["masks"][keep], detections["boxes"][keep], height, width).any(0)
    tinted = (drawn != boxes_only).any(-1)
    covered = (boxes_only != photo).any(-1)  # box outlines and labels, drawn over the masks
    assert masks.sum() > 500
    assert not (tinted & ~masks).any()  # the undrawn detections' masks are not tinted
    assert (tinted | covered)[masks].all()  # every drawn mask pixel is, where no outline covers it
    assert tinted.sum() > 0.5 * masks.sum()

    entries = json.loads((out / "detections.json").read_text())["images"][0]["detections"]
    assert len(entries) == keep.sum()
    for entry, box, class_id, mask in zip(
        entries, detections["boxes"][keep], detections["classes"][keep], detections["masks"][keep]
    ):
        assert entry["label"] == LABELS[int(class_id)]
        np.testing.assert_allclose(entry["box_yxyx"], box, atol=0.01)
        assert entry["segmentation"]["size"] == [height, width]
        np.testing.assert_array_equal(
            mask_utils.decode(entry["segmentation"]), paste_masks(mask[None], box[None], height, width)[0]
        )


@pytest.fixture(scope="module")
def own_detections_coco(model, tmp_path_factory):
    """Synthetic photos whose ground truth is the Keras model's own detections (those with a
    non-empty mask): its mask AP is high there, and an export whose masks differ scores lower."""
    split = write_synthetic_coco(
        tmp_path_factory.mktemp("coco"), num_train=0, num_val=3, min_size=96, max_size=160, max_objects=2
    )["val"]
    with open(split["annotations_file"]) as f:
        data = json.load(f)
    data["annotations"] = []
    for example in coco_source(split["dir"], split["annotations_file"]).dataset().map(decode):
        image = example["image"].numpy()
        detections = keras_detections(model, image)
        pasted = paste_masks(detections["masks"], detections["boxes"], *image.shape[:2])
        for (ymin, xmin, ymax, xmax), class_id, mask in zip(
            detections["boxes"], detections["classes"], pasted
        ):
            if mask.any():
                rle = mask_utils.encode(np.asfortranarray(mask))
                data["annotations"].append(
                    {
                        "id": len(data["annotations"]) + 1,
                        "image_id": int(example["image_id"]),
                        "category_id": int(class_id),
                        "bbox": [float(xmin), float(ymin), float(xmax - xmin), float(ymax - ymin)],
                        "area": float(mask.sum()),
                        "iscrowd": 0,
                        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                    }
                )
    with open(split["annotations_file"], "w") as f:
        json.dump(data, f)
    return coco_source(split["dir"], split["annotations_file"]), split["annotations_file"]


# |metric(export) - metric(Keras)|: the SavedModel's detections are the Keras model's (measured
# 0); the .tflite's input is rounded to uint8 after letterboxing, which moves a few mask pixels
# (measured 7e-4 on mask_AP).
METRIC_TOLERANCE = {"saved_model": 1e-6, "tflite": 0.01}


def test_coco_metrics_of_the_exports_score_their_masks(model, saved_model, tflite_path, own_detections_coco):
    source, annotations = own_detections_coco
    expected = coco_metrics(lambda image: keras_detections(model, image), source, annotations)
    assert sorted(expected) == sorted(COCO_METRIC_NAMES + MASK_METRIC_NAMES)
    assert expected["AP"] > 0.9 and expected["mask_AP"] > 0.9  # measured 1.0: its own detections
    for export_format, path in [("saved_model", saved_model[0]), ("tflite", tflite_path)]:
        metrics = coco_metrics(load_predictor(path), source, annotations)
        assert sorted(metrics) == sorted(expected)
        for name, value in expected.items():
            assert metrics[name] == pytest.approx(value, abs=METRIC_TOLERANCE[export_format]), name
