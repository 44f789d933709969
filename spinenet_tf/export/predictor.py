"""One interface over exported models (a SavedModel directory, a .tflite file) and Keras ones.

`load_predictor(path)(image)` takes a uint8 [H, W, 3] image of any size and returns, as
numpy arrays, a detector's detections in that image's pixels, trimmed to the real ones
("boxes", "scores", "classes", and "masks" [K, 28, 28] in each box's frame for Mask R-CNN),
or a classifier's "probabilities" [C] and its top k (k = min(5, C)) "classes" and "scores",
best first; `preset_predictor(name)` does the same with a pretrained preset's Keras model.
"""

import json
import os

import numpy as np
import tensorflow as tf

from spinenet_tf.classification.image_classifier import ImageClassifier
from spinenet_tf.data.coco import COCO_CATEGORY_NAMES
from spinenet_tf.export.saved_model import LABELS_FILE, latest_version_dir
from spinenet_tf.export.serving import center_crop_uint8, letterbox_uint8
from spinenet_tf.export.tflite import TFLiteDetector
from spinenet_tf.inference import optimize_for_inference
from spinenet_tf.layers.image_converter import CENTER_CROP_FRACTION
from spinenet_tf.pretrained.presets import preset_model

TFLITE_LABELS_FILE = "labels.json"  # beside the .tflite files
CLASSIFIER_KEYS = ("probabilities", "classes", "scores")
DETECTION_KEYS = (
    "detection_boxes",
    "detection_scores",
    "detection_classes",
    "num_detections",
    "detection_masks",
)
ANSWER_OUTPUTS = CLASSIFIER_KEYS + DETECTION_KEYS  # what `_answer` reads, of a signature's outputs


def _read_labels_file(path):
    """The labels JSON of `saved_model.write_labels` ({} when there is none)."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _labels(contents):
    return {int(k): v for k, v in contents.get("labels", {}).items()}


def _answer(outputs, index=0):
    """One image's answer from the outputs of a serving signature or a .tflite."""
    if "probabilities" in outputs:
        return {key: np.asarray(outputs[key])[index] for key in CLASSIFIER_KEYS}
    count = int(np.asarray(outputs["num_detections"])[index])
    trimmed = {
        "boxes": np.asarray(outputs["detection_boxes"])[index, :count],
        "scores": np.asarray(outputs["detection_scores"])[index, :count],
        "classes": np.asarray(outputs["detection_classes"])[index, :count].astype(np.int64),
    }
    if "detection_masks" in outputs:
        trimmed["masks"] = np.asarray(outputs["detection_masks"])[index, :count]
    return trimmed


class SavedModelPredictor:
    """A SavedModel export (a version directory, or its base directory: the latest version)."""

    def __init__(self, path):
        self.path = latest_version_dir(path)
        self.loaded = tf.saved_model.load(self.path)
        self.serve = self.loaded.signatures["serving_default"]
        self.labels = _labels(_read_labels_file(os.path.join(self.path, LABELS_FILE)))
        self.is_classifier = "probabilities" in self.serve.structured_outputs

    def __call__(self, image):
        return _answer(self.serve(images=tf.constant(np.asarray(image, np.uint8)[None])))


class TFLitePredictor:
    """A .tflite export: letterboxes (a detector) or centre-crops (a classifier: the fraction
    from labels.json beside it, default ImageClassifier's) on the host, and maps boxes back to
    the image's pixels."""

    def __init__(self, path, num_threads=None):
        self.path = str(path)
        self.detector = TFLiteDetector(path, num_threads)
        contents = _read_labels_file(os.path.join(os.path.dirname(self.path), TFLITE_LABELS_FILE))
        self.labels = _labels(contents)
        self.crop_fraction = contents.get("crop_fraction", CENTER_CROP_FRACTION)
        self.is_classifier = self.detector.is_classifier
        self.answer_outputs = [name for name in self.detector.output_indices if name in ANSWER_OUTPUTS]

    def __call__(self, image):
        image = np.asarray(image, np.uint8)
        if self.is_classifier:
            return _answer(
                self.detector(
                    center_crop_uint8(image, self.detector.image_size, self.crop_fraction),
                    self.answer_outputs,
                )
            )
        letterboxed, scale = letterbox_uint8(image, self.detector.image_size)
        detections = _answer(self.detector(letterboxed, self.answer_outputs))
        # `boxes_to_original` in numpy: as eager TensorFlow ops it took 2 ms, a tenth of
        # SpineNet-49-Mobile's int8 .tflite.
        limits = np.tile(np.float32(image.shape[:2]), 2)
        detections["boxes"] = np.clip(detections["boxes"] / np.tile(scale, 2), 0.0, limits)
        return detections


class KerasPredictor:
    """A Keras task model (its `predict_on_batch` takes photos) with its class names."""

    def __init__(self, model, labels):
        self.model, self.labels = optimize_for_inference(model), labels
        self.is_classifier = isinstance(model, ImageClassifier)

    def __call__(self, image):
        answers = self.model.predict_on_batch(np.asarray(image)[None])
        if self.is_classifier:  # its answers have the serving names
            return _answer(answers)
        count = int(answers["num_detections"][0])
        return {
            key: np.asarray(value)[0, :count] for key, value in answers.items() if key != "num_detections"
        }


def preset_labels(model):
    """A preset's class names: COCO's categories for a detector; none for an ImageNet classifier
    (its 1001 labels, 0 background, are shown as numbers)."""
    return {} if isinstance(model, ImageClassifier) else COCO_CATEGORY_NAMES


def preset_predictor(name, checkpoint=None):
    """A preset's model (see `pretrained.presets`) with its class names (`preset_labels`)."""
    model = preset_model(name, checkpoint)
    return KerasPredictor(model, preset_labels(model))


def load_predictor(path, num_threads=None):
    """A predictor for a .tflite file or a SavedModel directory."""
    path = str(path)
    if path.endswith(".tflite"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such .tflite file.")
        return TFLitePredictor(path, num_threads)
    if os.path.isdir(path):
        return SavedModelPredictor(path)
    raise FileNotFoundError(f"{path} is neither a .tflite file nor a SavedModel directory.")


def coco_metrics(predictor, source, annotations_file):
    """The COCO metrics of an exported model on a dataset source (see data.pipeline): box, and
    mask when it predicts masks."""
    from spinenet_tf.data.pipeline import decode
    from spinenet_tf.evaluation import CocoEvaluator

    evaluator = None
    for example in source.dataset().map(decode).ignore_errors():
        detections = predictor(example["image"].numpy())
        if evaluator is None:
            evaluator = CocoEvaluator(
                annotations_file, iou_types=("bbox", "segm") if "masks" in detections else "bbox"
            )
        evaluator.update(example["image_id"].numpy()[None], {k: v[None] for k, v in detections.items()})
    return (evaluator or CocoEvaluator(annotations_file)).result()
