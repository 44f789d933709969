"""SavedModel export in the TF Serving layout: `<base_dir>/<version>/` with three signatures.

The SavedModel holds the whole graph (preprocessing, network, post-processing) and the
weights, so it loads with plain TensorFlow; neither Keras nor spinenet_tf is needed.
"""

import json
import os
import shutil

import keras
import tensorflow as tf

from spinenet_tf.errors import ModelError
from spinenet_tf.export.serving import TaskServing
from spinenet_tf.inference import mixed_bfloat16_copy, optimize_for_inference

LABELS_FILE = os.path.join("assets.extra", "labels.json")
SAVED_MODEL_QUANTIZATIONS = ("none", "bf16")


def next_version(base_dir):
    """1 + the largest numeric version directory in `base_dir` (1 when there is none)."""
    versions = (
        [int(name) for name in os.listdir(base_dir) if name.isdigit()] if os.path.isdir(base_dir) else []
    )
    return max(versions, default=0) + 1


def latest_version_dir(path):
    """`path` itself if it holds a saved_model.pb, else its largest numeric version directory."""
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    version = next_version(path) - 1
    if version == 0:
        raise FileNotFoundError(f"{path} holds no SavedModel (no saved_model.pb and no version directory).")
    return os.path.join(path, str(version))


def write_labels(path, labels, image_size, crop_fraction=None):
    """{class id: name}, the model size and a classifier's `crop_fraction` (its .tflite takes the
    centre crop made on the host) as the JSON `spinenet predict` reads."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    contents = {"image_size": image_size, "labels": {str(k): v for k, v in labels.items()}}
    if crop_fraction is not None:
        contents["crop_fraction"] = crop_fraction
    with open(path, "w") as f:
        json.dump(contents, f, indent=1)


def export_saved_model(model, base_dir, version=None, labels=None, quantize="none"):
    """Writes `base_dir/<version>/` (version: the next free one by default) and returns its path.

    `quantize`: "none" (float32) or "bf16" (`mixed_bfloat16_copy`: bfloat16 convs, float32
    weights and answers).

    `labels` ({class id: name}; a classifier's label i is class i) go to
    `assets.extra/labels.json` for `spinenet predict`. The graph is `optimize_for_inference`'s
    copy of the model (batch norms folded, activations fused).
    The version is written aside and renamed into place, so TF Serving, which watches
    `base_dir`, never sees a half-written one.
    """
    if quantize not in SAVED_MODEL_QUANTIZATIONS:
        raise ModelError(f"SavedModel quantize must be one of {SAVED_MODEL_QUANTIZATIONS}, got {quantize!r}.")
    version = next_version(base_dir) if version is None else int(version)
    target = os.path.join(base_dir, str(version))
    if os.path.exists(target):
        raise FileExistsError(f"{target} exists; choose another version or remove it.")
    model = optimize_for_inference(mixed_bfloat16_copy(model) if quantize == "bf16" else model)
    serving = TaskServing(model)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serving.serve_images, [tf.TensorSpec(None, tf.uint8, "images")])
    archive.add_endpoint(
        "serve_image_bytes", serving.serve_image_bytes, [tf.TensorSpec([None], tf.string, "image_bytes")]
    )
    archive.add_endpoint(
        "serve_tf_example", serving.serve_tf_example, [tf.TensorSpec([None], tf.string, "examples")]
    )
    partial = os.path.join(base_dir, f".{version}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    archive.write_out(partial, verbose=False)
    if labels:
        write_labels(os.path.join(partial, LABELS_FILE), labels, serving.image_size)
    os.replace(partial, target)
    return target
