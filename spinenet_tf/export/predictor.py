"""One interface over exported models (a SavedModel directory, a .tflite file) and Keras ones.

`load_predictor(path)(image)` takes a uint8 [H, W, 3] image of any size and returns its
detections in that image's pixels, as numpy arrays trimmed to the real detections (with
"masks" [K, 28, 28] in each box's frame for Mask R-CNN);
`preset_predictor(name)` does the same with a pretrained preset's Keras model.
"""

import json
import os

import numpy as np
import tensorflow as tf
from keras import ops

from spinenet_tf.data.coco import COCO_CATEGORY_NAMES
from spinenet_tf.export.saved_model import LABELS_FILE, latest_version_dir
from spinenet_tf.export.serving import letterbox_uint8
from spinenet_tf.export.tflite import TFLiteDetector
from spinenet_tf.layers.image_converter import boxes_to_original
from spinenet_tf.pretrained.presets import preset_model

TFLITE_LABELS_FILE = "labels.json"  # beside the .tflite files


def _read_labels(path):
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return {int(k): v for k, v in json.load(f)["labels"].items()}


def _trim(outputs, index=0):
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
        self.labels = _read_labels(os.path.join(self.path, LABELS_FILE))

    def __call__(self, image):
        return _trim(self.serve(images=tf.constant(np.asarray(image, np.uint8)[None])))


class TFLitePredictor:
    """A .tflite export: letterboxes on the host, maps boxes back to the image's pixels."""

    def __init__(self, path, num_threads=None):
        self.path = str(path)
        self.detector = TFLiteDetector(path, num_threads)
        self.labels = _read_labels(os.path.join(os.path.dirname(self.path), TFLITE_LABELS_FILE))

    def __call__(self, image):
        image = np.asarray(image, np.uint8)
        letterboxed, scale = letterbox_uint8(image, self.detector.image_size)
        detections = _trim(self.detector(letterboxed))
        boxes = boxes_to_original(detections["boxes"][None], scale, image.shape[:2])[0]
        detections["boxes"] = ops.convert_to_numpy(boxes)
        return detections


class KerasPredictor:
    """A Keras detector (its `predict_on_batch` takes photos) with its class names."""

    def __init__(self, model, labels):
        self.model, self.labels = model, labels

    def __call__(self, image):
        answers = self.model.predict_on_batch(np.asarray(image)[None])
        count = int(answers["num_detections"][0])
        return {
            key: np.asarray(value)[0, :count] for key, value in answers.items() if key != "num_detections"
        }


def preset_predictor(name, checkpoint=None):
    """A preset's model (see `pretrained.presets`), labelled with COCO's category names."""
    return KerasPredictor(preset_model(name, checkpoint), COCO_CATEGORY_NAMES)


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
