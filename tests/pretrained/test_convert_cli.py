"""`spinenet convert`, `spinenet predict --preset` and `spinenet presets`, run in-process."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from spinenet_tf.cli import main
from spinenet_tf.data.coco import COCO_CATEGORY_NAMES
from spinenet_tf.pretrained import presets
from tests.pretrained.fixtures import archive_preset, fixture, fixture_experiment, relative_error


def run_user_error(argv, capsys):
    """The one stderr line of a command that fails with a user error (exit status 2)."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_convert_writes_a_model_that_computes_what_the_reference_computed(tmp_path, capsys):
    experiment, _, arrays = fixture_experiment("tpu_49", tmp_path / "tiny.yaml")
    checkpoint, _, _ = fixture("tpu_49")
    out = tmp_path / "x.keras"
    assert main(["convert", "--from", "tpu", checkpoint, "--config", experiment, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tpu checkpoint" in printed and "830 weights loaded, 0 left as initialised" in printed
    assert f"wrote {out}" in printed
    model = keras.saving.load_model(out)
    outputs = model(arrays["image"], training=False)
    for key in ("class_logits", "box_deltas"):
        assert relative_error(outputs[key], arrays[key]) <= 1e-4, key


def test_convert_from_the_wrong_code_base_is_one_line(tmp_path, capsys):
    experiment, _, _ = fixture_experiment("tpu_49", tmp_path / "tiny.yaml")
    checkpoint, _, _ = fixture("tpu_49")
    argv = [
        "convert",
        "--from",
        "model-garden",
        checkpoint,
        "--config",
        experiment,
        "--out",
        f"{tmp_path}/x.keras",
    ]
    line = run_user_error(argv, capsys)
    assert line.startswith("spinenet convert: ") and "name-based (TF1) checkpoint; use --from tpu" in line
    assert not (tmp_path / "x.keras").exists()


def test_an_unknown_source_format_is_one_line(tmp_path, capsys):
    line = run_user_error(
        ["convert", "--from", "caffe", "ckpt", "--config", "x.yaml", "--out", "x.keras"], capsys
    )
    assert line == "spinenet convert: Unknown source format 'caffe'; use one of ['model-garden', 'tpu']."


def test_predict_with_a_preset_writes_coco_labelled_detections(tmp_path, monkeypatch, capsys):
    preset, _ = archive_preset("model_garden_49", tmp_path)
    monkeypatch.setattr(presets, "PRESETS", (*presets.PRESETS, preset))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    image = tmp_path / "street.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 160, 3), np.uint8)).save(image)
    out = tmp_path / "out"
    argv = ["predict", "--preset", preset.name, str(image), "--out", str(out), "--min-score", "0"]
    assert main(argv) == 0
    assert (tmp_path / "cache" / "spinenet_tf" / "presets" / f"{preset.name}.keras").exists()
    result = json.loads((out / "detections.json").read_text())
    assert result["preset"] == preset.name and len(result["images"]) == 1
    found = result["images"][0]["detections"]
    assert found and all(d["label"] == COCO_CATEGORY_NAMES[d["class_id"]] for d in found)
    assert all(0 <= d["box_yxyx"][0] <= d["box_yxyx"][2] <= 96 for d in found)  # in the photo's pixels
    assert Image.open(out / "street.png").size == (160, 96)


@pytest.mark.slow  # a minute and a half on 2 cores: SavedModel export and two predict runs
def test_an_exported_preset_serves_what_the_preset_predicts(tmp_path, monkeypatch):
    preset, _ = archive_preset("model_garden_49", tmp_path)
    monkeypatch.setattr(presets, "PRESETS", (*presets.PRESETS, preset))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    image = tmp_path / "street.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (120, 90, 3), np.uint8)).save(image)
    argv = [
        "predict",
        "--preset",
        preset.name,
        str(image),
        "--out",
        str(tmp_path / "out"),
        "--min-score",
        "0",
    ]
    assert main(argv) == 0
    found = json.loads((tmp_path / "out" / "detections.json").read_text())["images"][0]["detections"]
    assert main(["export", "--preset", preset.name, "--out", str(tmp_path / "export")]) == 0
    argv = ["predict", "--model", str(tmp_path / "export"), str(image), "--out", str(tmp_path / "served")]
    assert main([*argv, "--min-score", "0"]) == 0
    served = json.loads((tmp_path / "served" / "detections.json").read_text())["images"][0]["detections"]
    assert [d["label"] for d in served] == [d["label"] for d in found]
    np.testing.assert_allclose([d["score"] for d in served], [d["score"] for d in found], rtol=1e-4)
    np.testing.assert_allclose([d["box_yxyx"] for d in served], [d["box_yxyx"] for d in found], atol=1e-2)


def test_a_preset_is_not_exported_to_int8(tmp_path, capsys):
    argv = ["export", "--preset", "retinanet_spinenet49_coco", "--out", str(tmp_path), "--format", "tflite"]
    line = run_user_error([*argv, "--quantize", "int8"], capsys)
    assert "int8 calibrates on a training run's images" in line and not list(tmp_path.iterdir())


def test_predict_checkpoint_needs_a_preset(tmp_path, capsys):
    argv = ["predict", "--model", f"{tmp_path}/m", "--checkpoint", "c", "a.jpg", "--out", str(tmp_path)]
    line = run_user_error(argv, capsys)
    assert (
        line
        == "spinenet predict: --checkpoint is the local copy of a --preset's checkpoint; give --preset too."
    )


def test_presets_lists_the_registry_without_loading_tensorflow():
    code = (
        "import sys\nfrom spinenet_tf.cli import main\nmain(['presets'])\n"
        "print('loaded:', sorted(name for name in ('tensorflow', 'keras') if name in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = run.stdout.splitlines()
    assert lines[-1] == "loaded: []", run.stdout + run.stderr
    assert lines[0].split() == ["preset", "source", "input", "published", "params", "available"]
    rows = {line.split()[0]: line for line in lines[1:-1]}
    assert list(rows) == presets.preset_names()
    assert rows["retinanet_spinenet49_coco"].split()[1:] == [
        "model-garden",
        "640",
        "44.2",
        "box",
        "AP",
        "28.5",
        "M",
        "yes",
    ]
    assert rows["maskrcnn_spinenet49_coco_tpu"].endswith(
        "backbone only (needs the conversion of its Mask R-CNN heads)"
    )
    assert rows["classification_spinenet49_imagenet_tpu"].split()[1:] == [
        "tpu",
        "224",
        "78.1",
        "top-1",
        "22.1",
        "M",
        "yes",
    ]
