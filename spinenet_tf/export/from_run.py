"""Export of a training run (its config and latest checkpoint) or of a pretrained preset:
what `spinenet export` does."""

import itertools
import os

import tensorflow as tf

from spinenet_tf.data.coco import category_names
from spinenet_tf.errors import ModelError
from spinenet_tf.export.predictor import TFLITE_LABELS_FILE, preset_labels
from spinenet_tf.export.saved_model import SAVED_MODEL_QUANTIZATIONS, export_saved_model, write_labels
from spinenet_tf.export.serving import center_crop_uint8, letterbox_uint8, model_image_size
from spinenet_tf.export.tflite import QUANTIZATIONS, export_tflite

FORMATS = ("saved_model", "tflite")


def tflite_file_name(quantize):
    return "model.tflite" if quantize == "none" else f"model_{quantize}.tflite"


def run_category_names(config):
    """{class id: name} from the run's COCO annotations (val, else train); {} for TFRecord data."""
    for split in (config.data.val, config.data.train):
        if split.annotations and os.path.exists(split.annotations):
            return category_names(split.annotations)
    return {}


def run_labels(model_dir, config):
    """{class id: name}: a classifier's class folders (label i is name i), a detector's COCO
    categories; {} when the run's data has none (TFRecords)."""
    from spinenet_tf.training.trainer import run_class_names

    if config.model.is_classifier:
        return dict(enumerate(run_class_names(model_dir) or []))
    return run_category_names(config)


def representative_images(config, count, crop_fraction=None):
    """The first `count` training images as the .tflite takes them (int8 calibration): uint8,
    letterboxed to the model size, or a classifier's centre crops (its converter's `crop_fraction`)."""
    if config.model.is_classifier:
        return _centre_crops(config, count, crop_fraction)
    return _letterboxed_images(config, count)


def _letterboxed_images(config, count):
    from spinenet_tf.data.pipeline import decode, make_source

    dataset = make_source(config.data.train).dataset().map(decode).ignore_errors()
    for example in itertools.islice(dataset, count):
        yield letterbox_uint8(example["image"], config.data.image_size)[0]


def _centre_crops(config, count, crop_fraction):
    """The training split's images centre-cropped on the host as `spinenet predict` does it."""
    from spinenet_tf.data.classification import classification_source

    def decode(example):
        return tf.io.decode_image(example["encoded"], channels=3, dtype=tf.uint8, expand_animations=False)

    images = classification_source(config.data.train).dataset().map(decode).ignore_errors()
    for image in itertools.islice(images, count):
        yield center_crop_uint8(image.numpy(), config.data.image_size, crop_fraction)


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

    _check_format(export_format, quantize)
    model, config, checkpoint = load_trained_model(model_dir, config_path)
    calibration = None
    if quantize == "int8":
        calibration = representative_images(config, calibration_images, model.image_converter.crop_fraction)
    labels = run_labels(model_dir, config)
    return _export(model, out, export_format, quantize, version, labels, calibration), checkpoint


def export_preset(name, out, export_format="saved_model", quantize="none", version=None, checkpoint=None):
    """Exports a pretrained preset's model (labels: `preset_labels`) under `out`; returns the written path.

    int8 is refused: its calibration needs images, which a training run provides.
    """
    from spinenet_tf.pretrained.presets import preset_model

    _check_format(export_format, quantize)
    if quantize == "int8":
        raise ModelError(
            "--quantize int8 calibrates on a training run's images; a preset has none: export it with "
            "--quantize fp16 or dynamic, or fine-tune it (model.init_checkpoint) and export that run."
        )
    model = preset_model(name, checkpoint)
    return _export(model, out, export_format, quantize, version, preset_labels(model))


def _check_format(export_format, quantize):
    if export_format not in FORMATS:
        raise ModelError(f"format must be one of {FORMATS}, got {export_format!r}.")
    allowed = SAVED_MODEL_QUANTIZATIONS if export_format == "saved_model" else QUANTIZATIONS
    if quantize not in allowed:
        raise ModelError(f"--format {export_format} takes --quantize {' or '.join(allowed)}, not {quantize}.")


def _export(model, out, export_format, quantize, version, labels, calibration=None):
    if export_format == "saved_model":
        return export_saved_model(model, out, version, labels, quantize)
    path = os.path.join(out, tflite_file_name(quantize))
    export_tflite(model, path, quantize, calibration)
    crop_fraction = model.image_converter.crop_fraction  # a classifier's host-side crop, for predict
    if labels or crop_fraction is not None:
        write_labels(os.path.join(out, TFLITE_LABELS_FILE), labels, model_image_size(model), crop_fraction)
    return path
