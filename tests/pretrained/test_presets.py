"""Presets: download -> convert -> cache on a file:// archive, offline failures, the registry."""

import contextlib
import dataclasses
import io
import os
import socket
import tarfile
import time

import keras
import numpy as np
import pytest

from spinenet_tf import ImageClassifier, RetinaNet, SpineNet, preset_names
from spinenet_tf.errors import ModelError
from spinenet_tf.pretrained import convert, presets
from spinenet_tf.published import DETECTOR_REFERENCE
from spinenet_tf.training.initialize import initialize_from
from tests.pretrained.fixtures import CLASSIFIER, archive_preset, fixture, fixture_model, relative_error

LEVELS = ("P3", "P4", "P5", "P6", "P7")


def register(monkeypatch, preset):
    monkeypatch.setattr(presets, "PRESETS", (*presets.PRESETS, preset))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The first `from_preset` of a fixture preset: (preset, io arrays, cache dir, model, its output)."""
    tmp_path = tmp_path_factory.mktemp("preset")
    preset, arrays = archive_preset("model_garden_49", tmp_path)
    cache = tmp_path / "cache"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as monkeypatch, contextlib.redirect_stdout(printed):
        register(monkeypatch, preset)
        model = RetinaNet.from_preset(preset.name, cache_dir=cache)
    return preset, arrays, cache, model, printed.getvalue()


def test_the_first_use_downloads_converts_and_keeps_only_the_keras_file(converted):
    preset, arrays, cache, model, printed = converted
    assert f"preset {preset.name}: model-garden checkpoint" in printed
    assert "830 weights loaded, 0 left as initialised" in printed
    assert sorted(os.listdir(cache)) == [f"{preset.name}.keras"]  # archive and its files deleted
    outputs = model(arrays["image"], training=False)
    for key in ("class_logits", "box_deltas"):
        assert relative_error(outputs[key], arrays[key]) <= 1e-4, key


def test_later_uses_load_the_cache_without_network_or_conversion(converted, monkeypatch, capsys):
    preset, arrays, cache, first, _ = converted
    register(monkeypatch, preset)

    def fail(*args, **kwargs):
        raise AssertionError("downloaded or converted again")

    monkeypatch.setattr(convert, "convert_checkpoint", fail)
    monkeypatch.setattr(keras.utils, "get_file", fail)
    model = RetinaNet.from_preset(preset.name, cache_dir=cache)
    assert isinstance(model, RetinaNet) and model is not first
    assert capsys.readouterr().out == ""
    np.testing.assert_array_equal(
        model(arrays["image"], training=False)["class_logits"], first(arrays["image"])["class_logits"]
    )


def test_spinenet_from_preset_is_the_detectors_backbone(converted, monkeypatch):
    preset, arrays, cache, _, _ = converted
    register(monkeypatch, preset)
    backbone = SpineNet.from_preset(preset.name, cache_dir=cache)
    assert isinstance(backbone, SpineNet)
    features = backbone(arrays["image"], training=False)
    assert sorted(features) == list(LEVELS)
    for level in LEVELS:
        assert relative_error(features[level], arrays[level]) <= 1e-4, level


@pytest.fixture(scope="module")
def converted_classifier(tmp_path_factory):
    """`ImageClassifier.from_preset` of a preset whose archive holds the tensorflow/tpu classifier
    fixture (224 px): (preset, io arrays, cache dir, model, its output)."""
    tmp_path = tmp_path_factory.mktemp("classifier_preset")
    preset, arrays = archive_preset(CLASSIFIER, tmp_path, "tiny_classifier_fixture", task="classification")
    cache = tmp_path / "cache"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as monkeypatch, contextlib.redirect_stdout(printed):
        register(monkeypatch, preset)
        model = ImageClassifier.from_preset(preset.name, cache_dir=cache)
    return preset, arrays, cache, model, printed.getvalue()


def test_a_classifier_preset_is_the_tpu_image_classifier_it_was_trained_as(converted_classifier):
    preset, arrays, cache, model, printed = converted_classifier
    assert isinstance(model, ImageClassifier) and model.backbone.ops_flavor == "tpu"
    assert (model.num_classes, model.aggregation, tuple(model.backbone.input.shape[1:3])) == (
        10,
        "all",
        (224, 224),
    )
    assert f"preset {preset.name}: tpu checkpoint" in printed
    assert "652 weights loaded, 0 left as initialised" in printed
    assert sorted(os.listdir(cache)) == [f"{preset.name}.keras"]
    assert relative_error(model(arrays["image"], training=False), arrays["logits"]) <= 1e-5
    photo = np.random.default_rng(0).integers(0, 256, (1, 300, 200, 3), np.uint8)  # centre-cropped to 224
    answer = model.predict(photo, verbose=0)
    assert answer["probabilities"].shape == (1, 10) and answer["classes"].shape == (1, 5)
    np.testing.assert_allclose(answer["probabilities"].sum(), 1.0, rtol=1e-5)


def test_a_classifier_presets_backbone_is_its_spinenet_and_no_detector(converted_classifier, monkeypatch):
    preset, arrays, cache, _, _ = converted_classifier
    register(monkeypatch, preset)
    monkeypatch.setattr(convert, "convert_checkpoint", lambda *a, **k: pytest.fail("converted again"))
    backbone = SpineNet.from_preset(preset.name, cache_dir=cache)
    assert isinstance(backbone, SpineNet) and backbone.ops_flavor == "tpu"
    features = backbone(arrays["image"], training=False)
    for level in LEVELS:
        assert relative_error(features[level], arrays[level]) <= 1e-5, level
    with pytest.raises(
        ModelError, match="is an ImageNet classifier; load it with ImageClassifier.from_preset"
    ):
        RetinaNet.from_preset(preset.name, cache_dir=cache)


def test_a_local_checkpoint_replaces_the_download(tmp_path, monkeypatch):
    """An offline machine: the URL is unreachable, the tensorflow/tpu checkpoint is given."""
    preset, arrays = archive_preset("tpu_49", tmp_path)
    register(monkeypatch, dataclasses.replace(preset, url="https://unreachable.invalid/x.tar.gz"))
    monkeypatch.setattr(keras.utils, "get_file", lambda *a, **k: pytest.fail("tried to download"))
    checkpoint, _, _ = fixture("tpu_49")
    model = RetinaNet.from_preset(preset.name, checkpoint=checkpoint, cache_dir=tmp_path / "cache")
    assert (
        relative_error(model(arrays["image"], training=False)["class_logits"], arrays["class_logits"]) <= 1e-4
    )
    assert os.listdir(tmp_path / "cache") == [f"{preset.name}.keras"]


def test_without_network_a_preset_fails_at_once_naming_the_url_and_the_way_out(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    preset = presets.get_preset("retinanet_spinenet49_coco")
    start = time.monotonic()
    with pytest.raises(ModelError) as error:
        RetinaNet.from_preset(preset.name, cache_dir=tmp_path)
    assert time.monotonic() - start < 5
    message = str(error.value)
    assert "\n" not in message and preset.url in message and "network blocked by the test" in message
    assert f"from_preset('{preset.name}', checkpoint=\"path/to/spinenet-49-i640.tar.gz\")" in message
    assert f"--preset {preset.name} --checkpoint" in message
    assert os.listdir(tmp_path) == []  # no partial download left behind


def test_a_damaged_download_is_deleted_and_named(tmp_path, monkeypatch):
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"\x1f\x8b" + b"not a tar archive" * 10)
    preset, _ = archive_preset("model_garden_49", tmp_path)
    register(monkeypatch, dataclasses.replace(preset, url=broken.as_uri(), sha256=None))
    with pytest.raises(ModelError, match="cannot extract it"):
        presets.preset_model(preset.name, cache_dir=tmp_path / "cache")
    assert os.listdir(tmp_path / "cache") == []  # the next call downloads again


def test_an_archive_member_outside_the_folder_is_refused(tmp_path, monkeypatch):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(__file__, arcname="../escaped.py")
    preset, _ = archive_preset("model_garden_49", tmp_path)
    register(monkeypatch, preset)
    with pytest.raises(ModelError, match="refused to extract '../escaped.py'"):
        presets.preset_model(preset.name, checkpoint=archive, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "escaped.py").exists() and not (tmp_path / "escaped.py").exists()


def test_an_unknown_preset_lists_the_known_ones():
    with pytest.raises(
        ModelError, match="Unknown preset 'spinenet49'; the presets are: .*retinanet_spinenet49_coco"
    ):
        RetinaNet.from_preset("spinenet49")


@pytest.mark.parametrize(
    "load, name, missing",
    [
        (
            RetinaNet.from_preset,
            "maskrcnn_spinenet49_coco_tpu",
            "needs the conversion of its Mask R-CNN heads, not in",
        ),
        (
            presets.preset_model,
            "maskrcnn_spinenet190_coco_tpu",
            "its backbone loads with SpineNet.from_preset",
        ),
    ],
)
def test_a_preset_of_a_missing_task_says_which(load, name, missing, tmp_path):
    with pytest.raises(ModelError, match=missing):
        load(name, cache_dir=tmp_path)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "load, name, message",
    [
        (
            ImageClassifier.from_preset,
            "retinanet_spinenet49_coco",
            "is a RetinaNet; load it with RetinaNet.from_preset",
        ),
        (
            RetinaNet.from_preset,
            "classification_spinenet96_imagenet_tpu",
            "is an ImageNet classifier; load it with ImageClassifier.from_preset",
        ),
    ],
)
def test_a_task_class_loads_only_its_own_presets(load, name, message, tmp_path):
    with pytest.raises(ModelError, match=message):
        load(name, cache_dir=tmp_path)
    assert os.listdir(tmp_path) == []


# === The registry ===
def test_preset_names_are_unique_and_public():
    names = preset_names()
    assert len(names) == len(set(names)) == len(presets.PRESETS) == 20
    assert all(name == name.lower() for name in names)


def _config(preset):
    return convert.reference_config(preset.experiment, preset.source_format, preset.overrides)


@pytest.mark.parametrize(
    "preset", [p for p in presets.PRESETS if p.task == "retinanet"], ids=lambda p: p.name
)
def test_each_detector_preset_has_a_valid_experiment_at_its_input_size(preset):
    config = _config(preset)
    assert config.data.image_size == preset.image_size
    assert f"spinenet{config.model.backbone['model_id'].lower()}_" in preset.name
    assert preset.url.startswith("https://storage.googleapis.com/") and preset.url.endswith(".tar.gz")
    relu = "_relu_" in preset.name
    assert (
        config.model.backbone["activation"]
        == config.model.detector["activation"]
        == ("relu" if relu else "swish")
    )
    assert (config.model.backbone["stochastic_depth_rate"] > 0) != relu
    anchor_size = config.model.detector.get("anchor_size", 3.0)
    assert anchor_size == (4.0 if config.model.backbone["model_id"] in ("143", "190") else 3.0)


@pytest.mark.parametrize(
    "preset", [p for p in presets.PRESETS if p.task == "classification"], ids=lambda p: p.name
)
def test_each_classifier_preset_is_the_zoo_classifier(preset):
    """The tensorflow/tpu ImageNet configs: 1001 classes at 224 px, swish, BN 0.9 / 1e-5,
    aggregation "all" and that code's ops."""
    config = _config(preset)
    backbone, classifier = config.model.backbone, config.model.classifier
    assert (
        preset.available and config.model.is_classifier and preset.image_size == config.data.image_size == 224
    )
    assert f"spinenet{backbone['model_id']}_" in preset.name and config.model.num_classes == 1001
    assert backbone["ops_flavor"] == "tpu" and backbone["activation"] == classifier["activation"] == "swish"
    assert (backbone["norm_momentum"], backbone["norm_epsilon"]) == (0.9, 1e-5)
    assert classifier["aggregation"] == "all" and not classifier.get("embedding_filters")
    assert preset.url.startswith(presets.TPU_URL + "classification/") and preset.url.endswith(
        "-imagenet.tar.gz"
    )


@pytest.mark.parametrize("preset", [p for p in presets.PRESETS if not p.available], ids=lambda p: p.name)
def test_presets_of_missing_tasks_build_a_tpu_backbone_with_their_training_settings(preset):
    config = _config(preset)
    backbone = config.model.backbone
    assert f"spinenet{backbone['model_id'].lower()}_" in preset.name and backbone["ops_flavor"] == "tpu"
    # Their configs' BN settings replace the tensorflow/tpu RetinaNet defaults (1e-4, 0.997).
    assert (backbone["norm_epsilon"], backbone["norm_momentum"]) != (1e-4, 0.997)


def test_a_backbone_of_a_missing_task_loads_alone_and_is_cached(tmp_path, monkeypatch):
    """A Mask R-CNN checkpoint: its SpineNet loads (the archive here holds the tpu_49 fixture)."""
    preset, arrays = archive_preset("tpu_49", tmp_path, "tiny_maskrcnn_fixture", task="maskrcnn")
    register(monkeypatch, preset)
    with pytest.raises(ModelError, match="needs the conversion of its Mask R-CNN heads"):
        RetinaNet.from_preset(preset.name, cache_dir=tmp_path / "cache")
    backbone = SpineNet.from_preset(preset.name, cache_dir=tmp_path / "cache")
    assert isinstance(backbone, SpineNet) and backbone.ops_flavor == "tpu"
    for level in LEVELS:
        assert relative_error(backbone(arrays["image"], training=False)[level], arrays[level]) <= 1e-4, level
    assert os.listdir(tmp_path / "cache") == [f"{preset.name}.backbone.keras"]
    # ... and starts a detector's fine-tuning (model.init_checkpoint: <preset>, init_modules: [backbone]).
    detector = fixture_model(fixture("tpu_49")[1], num_classes=3)
    source = presets.preset_weights(preset.name, cache_dir=tmp_path / "cache")
    report = initialize_from(detector, source, ("backbone",))
    assert len(report.loaded) == len(detector.backbone.weights)
    assert all(np.array_equal(a, b) for a, b in zip(detector.backbone.get_weights(), backbone.get_weights()))


@pytest.mark.slow
@pytest.mark.parametrize("preset", [p for p in presets.PRESETS if p.available], ids=lambda p: p.name)
def test_each_available_preset_has_the_published_parameter_count(preset):
    from spinenet_tf.training.trainer import build_model

    config = _config(preset)
    params = sum(int(np.prod(weight.shape)) for weight in build_model(config).trainable_weights)
    # The published 11.9 M of 49S counts 256 endpoint filters; these checkpoints have 128.
    expected = DETECTOR_REFERENCE["49S"]["params"] / 1e6 if "49s" in preset.name else preset.params_m
    assert abs(params / 1e6 - expected) <= 0.05, params
