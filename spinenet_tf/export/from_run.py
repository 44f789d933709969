"""Export of a training run (its config and latest checkpoint): what `spinenet export` does."""

import itertools
import os

from spinenet_tf.data.coco import category_names
from spinenet_tf.errors import ModelError
from spinenet_tf.export.predictor import TFLITE_LABELS_FILE
from spinenet_tf.export.saved_model import export_saved_model, write_labels
from spinenet_tf.export.serving import letterbox_uint8
from spinenet_tf.export.tflite import export_tflite

FORMATS = ("saved_model", "tflite")


def tflite_file_name(quantize):
    return "model.tflite" if quantize == "none" else f"model_{quantize}.tflite"


def run_category_names(config):
    """{class id: name} from the run's COCO annotations (val, else train); {} for TFRecord data."""
    for split in (config.data.val, config.data.train):
        if split.annotations and os.path.exists(split.annotations):
            return category_names(split.annotations)
    return {}


def representative_images(config, count):
    """The first `count` training images, letterboxed to the model size as uint8 (int8 calibration)."""
    from spinenet_tf.data.pipeline import decode, make_source

    dataset = make_source(config.data.train).dataset().map(decode).ignore_errors()
    for example in itertools.islice(dataset, count):
        yield letterbox_uint8(example["image"], config.data.image_size)[0]


def export_run(
    model_dir,
    out,
    export_format="saved_model",
    quantize="none",
    config_path=None,
    version=None,
    calibration_images=100,
):
    """Exports the run in `model_dir` under `out`; returns (written path, checkpoint exported)."""
    from spinenet_tf.training.trainer import load_trained_model

    if export_format not in FORMATS:
        raise ModelError(f"format must be one of {FORMATS}, got {export_format!r}.")
    model, config, checkpoint = load_trained_model(model_dir, config_path)
    labels = run_category_names(config)
    if export_format == "saved_model":
        if quantize != "none":
            raise ModelError("SavedModel export is float32; --quantize applies to --format tflite.")
        return export_saved_model(model, out, version, labels), checkpoint
    path = os.path.join(out, tflite_file_name(quantize))
    calibration = representative_images(config, calibration_images) if quantize == "int8" else None
    export_tflite(model, path, quantize, calibration)
    if labels:
        write_labels(os.path.join(out, TFLITE_LABELS_FILE), labels, config.data.image_size)
    return path, checkpoint
