"""tensorflow/tpu classifier checkpoints -> ImageClassifier: parity with that code at ImageNet's
224 px (not a multiple of 128) and at 136 px, and loud failures."""

import numpy as np
import pytest
import tensorflow as tf

from spinenet_tf import ImageClassifier
from spinenet_tf.errors import ModelError
from spinenet_tf.layers import resample
from spinenet_tf.pretrained.convert import load_reference_checkpoint
from tests.pretrained.fixtures import (
    CLASSIFIER,
    fixture,
    fixture_backbone,
    fixture_classifier,
    fixture_model,
    relative_error,
)

LEVELS = ("P3", "P4", "P5", "P6", "P7")
# Both sides float32 with activations of O(100): measured <= 2e-6 (oneDNN CPU).
TOLERANCE = 1e-5


def _relative_errors(model, expected):
    features = model.backbone(expected["image"], training=False)
    errors = {level: relative_error(features[level], expected[level]) for level in LEVELS}
    errors["logits"] = relative_error(model(expected["image"], training=False), expected["logits"])
    return errors


@pytest.mark.parametrize("image_size", [224, 136])
def test_a_converted_tpu_classifier_computes_what_the_tpu_code_computed(image_size):
    """Same weights at both sizes; 136's level widths (17, 9, 5, 3, 2) take the stride-1 pools
    and the nearest resizes between most levels."""
    checkpoint, arch, expected = fixture(CLASSIFIER, image_size)
    model = fixture_classifier(arch, image_size=image_size)
    report = load_reference_checkpoint(model, checkpoint, "tpu")
    assert report.not_loaded == [] and len(report.loaded) == len(model.weights)
    assert not any(report.unused.values())
    errors = _relative_errors(model, expected)
    assert max(errors.values()) <= TOLERANCE, errors


def test_at_224_the_tpu_classifiers_need_the_tpu_ops():
    """Model Garden's ops (its "same" padding on strided convs, a pool per factor 2) on the same
    weights give other numbers at every level."""
    checkpoint, arch, expected = fixture(CLASSIFIER)
    model = fixture_classifier(arch, ops_flavor="model_garden")
    load_reference_checkpoint(model, checkpoint, "tpu")
    errors = _relative_errors(model, expected)
    assert min(errors.values()) > 0.05, errors


def test_at_224_the_tpu_pooling_rule_is_decided_on_the_level_widths(monkeypatch):
    """The tensorflow/tpu pool (size, stride) follows the widths, which at 224 do not divide
    (P7's parent at level 4, 14 -> 2: a 5x5/3 pool to 3 then a resize, where the level factor 8
    says 5x5/4): decided on the factor alone, P7 and the logits move well past the tolerance."""
    by_factor = resample._tpu_pooling
    monkeypatch.setattr(
        resample, "_tpu_pooling", lambda source, target, factor: by_factor(None, None, factor)
    )
    checkpoint, arch, expected = fixture(CLASSIFIER)
    model = fixture_classifier(arch)
    load_reference_checkpoint(model, checkpoint, "tpu")
    errors = _relative_errors(model, expected)
    assert errors["P3"] <= TOLERANCE and errors["P7"] > 1e-3 and errors["logits"] > 10 * TOLERANCE, errors


def _with_embedding(checkpoint, path, filters, rng):
    """The fixture's checkpoint with a head embedding (a 1x1 conv + BN before the dense layer, named
    as tensorflow/tpu's ClassificationHead names them), written name-based as that code does."""
    reader = tf.train.load_checkpoint(checkpoint)
    values = {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()}
    width, classes = values["classification_head/dense/kernel"].shape
    values["classification_head/conv2d/kernel"] = rng.normal(0, 0.2, (1, 1, width, filters))
    for weight in ("gamma", "beta", "moving_mean", "moving_variance"):
        values[f"classification_head/batch_normalization/{weight}"] = rng.uniform(0.5, 1.5, filters)
    values["classification_head/dense/kernel"] = rng.normal(0, 0.2, (filters, classes))
    values = {key: np.asarray(value, "float32") for key, value in values.items()}
    names = sorted(values)
    tensors = [tf.constant(values[name]) for name in names]
    tf.raw_ops.SaveV2(
        prefix=str(path), tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors
    )
    return str(path), values


def test_the_head_embedding_loads_into_embedding_conv_and_bn(tmp_path):
    checkpoint, arch, _ = fixture(CLASSIFIER)
    checkpoint, values = _with_embedding(checkpoint, tmp_path / "ckpt", 16, np.random.default_rng(0))
    model = fixture_classifier(arch, embedding_filters=16)
    report = load_reference_checkpoint(model, checkpoint, "tpu")
    assert report.not_loaded == []
    layers = {
        "embedding_conv": "classification_head/conv2d",
        "embedding_bn": "classification_head/batch_normalization",
        "logits": "classification_head/dense",
    }
    for name, scope in layers.items():
        for weight in model.get_layer(name).weights:
            np.testing.assert_array_equal(np.asarray(weight), values[f"{scope}/{weight.name}"])
    with pytest.raises(ModelError, match="head has an embedding conv, this model's embedding_filters is 0"):
        load_reference_checkpoint(fixture_classifier(arch), checkpoint, "tpu")


def test_a_classifier_checkpoints_backbone_starts_a_detector():
    """ImageNet pre-training for detection: the backbone loads, the RetinaNet head stays fresh."""
    checkpoint, _, _ = fixture(CLASSIFIER)
    detector = fixture_model(fixture("tpu_49")[1])
    report = load_reference_checkpoint(detector, checkpoint, "tpu", modules="backbone")
    assert len(report.loaded) == len(detector.backbone.weights)
    assert all(path.startswith(("class_net", "box_net")) for path in report.not_loaded)
    assert sorted(report.unused["other model parts"]) == [
        "classification_head/dense/bias",
        "classification_head/dense/kernel",
    ]


def _retinanet():
    return fixture_model(fixture("tpu_49")[1])


def _classifier_of(name, num_classes=5):
    return lambda: ImageClassifier(fixture_backbone(fixture(name)[1]), num_classes=num_classes)


@pytest.mark.parametrize(
    "build, checkpoint_of, message",
    [
        (_retinanet, CLASSIFIER, r"no RetinaNet head \(retinanet/class_net/\)"),
        (_classifier_of("tpu_49"), "tpu_49", r"no classification head \(classification_head/dense/\)"),
        (
            lambda: fixture_classifier({**fixture(CLASSIFIER)[1], "num_classes": 1001}),
            CLASSIFIER,
            r"logits/kernel \[32, 1001\] vs classification_head/dense/kernel \[32, 10\]",
        ),
        (
            _classifier_of("model_garden_49"),
            "model_garden_49",
            "Model Garden classifier heads are not mapped",
        ),
    ],
    ids=["retinanet-from-classifier", "classifier-from-retinanet", "num-classes", "model-garden"],
)
def test_another_task_or_head_fails_before_assigning_anything(build, checkpoint_of, message):
    checkpoint, arch, _ = fixture(checkpoint_of)
    model = build()
    before = [np.array(weight) for weight in model.weights]
    with pytest.raises(ModelError, match=message):
        load_reference_checkpoint(model, checkpoint, arch["format"])
    assert all(np.array_equal(a, np.array(b)) for a, b in zip(before, model.weights))
