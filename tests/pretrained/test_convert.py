"""Published-checkpoint conversion: parity with the reference code, and loud failures."""

import os
import subprocess
import sys

import numpy as np
import pytest

from spinenet_tf.errors import ModelError
from spinenet_tf.pretrained.convert import load_reference_checkpoint
from tests.pretrained.fixtures import NAMES, fixture, fixture_model, relative_error

LEVELS = ("P3", "P4", "P5", "P6", "P7")


def _weights(model):
    return {weight.path: np.array(weight) for weight in model.weights}


@pytest.mark.parametrize("name", NAMES)
def test_converted_checkpoint_computes_what_the_reference_computed(name):
    checkpoint, arch, expected = fixture(name)
    model = fixture_model(arch)
    report = load_reference_checkpoint(model, checkpoint, arch["format"])
    assert report.not_loaded == [] and len(report.loaded) == len(model.weights)
    assert not report.unused["other model parts"]
    if name.endswith("_49"):  # written with the step and momentum slots: read past, never loaded
        assert len(report.unused["training state (step, optimizer)"]) > len(model.trainable_weights)
    features = model.backbone(expected["image"], training=False)
    outputs = model(expected["image"], training=False)
    for level in LEVELS:
        assert relative_error(features[level], expected[level]) <= 1e-4, level
    for key in ("class_logits", "box_deltas"):
        assert relative_error(outputs[key], expected[key]) <= 1e-4, key


def test_tpu_checkpoints_need_the_tpu_ops():
    """Model Garden's padding and pooling on tensorflow/tpu weights give other numbers."""
    checkpoint, arch, expected = fixture("tpu_49")
    model = fixture_model(arch, ops_flavor="model_garden")
    load_reference_checkpoint(model, checkpoint, "tpu")
    assert relative_error(model.backbone(expected["image"])["P3"], expected["P3"]) > 1e-2


def test_backbone_only_load_leaves_the_head_as_initialised_and_says_so():
    checkpoint, arch, expected = fixture("model_garden_49")
    model = fixture_model(arch)
    head_before = {
        path: value for path, value in _weights(model).items() if path.startswith(("class_net", "box_net"))
    }
    report = load_reference_checkpoint(model, checkpoint, "model-garden", modules="backbone")
    assert sorted(report.not_loaded) == sorted(head_before)
    assert len(report.unused["other model parts"]) == sum(1 for _ in head_before)
    after = _weights(model)
    assert all(np.array_equal(after[path], value) for path, value in head_before.items())
    assert relative_error(model.backbone(expected["image"])["P5"], expected["P5"]) <= 1e-4
    assert "left as initialised" in report.summary()


def test_a_spinenet_backbone_loads_from_a_retinanet_checkpoint():
    checkpoint, arch, expected = fixture("tpu_143")
    backbone = fixture_model(arch).backbone
    report = load_reference_checkpoint(backbone, checkpoint, "tpu")
    assert report.modules == "backbone" and not report.not_loaded
    assert relative_error(backbone(expected["image"])["P7"], expected["P7"]) <= 1e-4


@pytest.mark.parametrize(
    "name, change, message",
    [
        ("model_garden_49", {"block_repeats": 2}, "blocks: the checkpoint has"),
        ("tpu_143", {"block_repeats": 1}, "the checkpoint has"),
        ("model_garden_143", {"num_classes": 7}, "class_net_predict"),
        ("tpu_49", {"endpoints_num_filters": 48}, "do not match"),
    ],
)
def test_another_architecture_fails_before_assigning_anything(name, change, message):
    checkpoint, arch, _ = fixture(name)
    model = fixture_model({**arch, **change})
    before = _weights(model)
    with pytest.raises(ModelError, match=message):
        load_reference_checkpoint(model, checkpoint, arch["format"])
    after = _weights(model)
    assert all(np.array_equal(after[path], value) for path, value in before.items())


@pytest.mark.parametrize("name, wrong", [("tpu_49", "model-garden"), ("model_garden_49", "tpu")])
def test_the_wrong_source_format_is_named(name, wrong):
    checkpoint, arch, _ = fixture(name)
    with pytest.raises(ModelError, match="use --from"):
        load_reference_checkpoint(fixture_model(arch), checkpoint, wrong)


def test_a_missing_checkpoint_is_named(tmp_path):
    _, arch, _ = fixture("tpu_49")
    with pytest.raises(FileNotFoundError, match="no TensorFlow checkpoint"):
        load_reference_checkpoint(fixture_model(arch), tmp_path / "nothing", "tpu")


@pytest.mark.slow
def test_a_converted_tpu_model_computes_the_same_on_jax(tmp_path):
    """The tpu ops (explicit padding, single pools) are keras.ops: a saved model gives the
    reference's numbers on JAX too, in a process where TensorFlow cannot be imported."""
    checkpoint, arch, expected = fixture("tpu_49")
    model = fixture_model(arch)
    load_reference_checkpoint(model, checkpoint, "tpu")
    model.save(tmp_path / "tpu.keras")
    np.save(tmp_path / "image.npy", expected["image"])
    script = f"""
import sys
sys.modules["tensorflow"] = None
import keras, numpy as np
import spinenet_tf.detection.retinanet
model = keras.saving.load_model({str(tmp_path / "tpu.keras")!r})
outputs = model(np.load({str(tmp_path / "image.npy")!r}))
np.save({str(tmp_path / "jax.npy")!r}, np.asarray(outputs["class_logits"]))
"""
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=300)
    assert relative_error(np.load(tmp_path / "jax.npy"), expected["class_logits"]) <= 1e-4
