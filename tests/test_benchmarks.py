"""Smoke tests: each benchmark script runs on a tiny config and writes its section."""

import argparse
import pathlib
import subprocess
import sys

import pytest
from PIL import Image

from benchmarks import (
    accelerator_throughput,
    accuracy_budget,
    backbone_table,
    checkpoint_conversion,
    cpu_inference,
    detector_table,
    input_pipeline,
    plot,
    target_assignment,
    training_throughput,
    two_stage_inference,
)
from benchmarks.model_garden import VENV, Server
from benchmarks.report import write_section
from benchmarks.results import load_results, save_results
from spinenet_tf import MODEL_IDS
from spinenet_tf.data.synthetic import write_synthetic_coco
from spinenet_tf.published import DETECTOR_REFERENCE, TWO_STAGE_REFERENCE
from spinenet_tf.training.config import load_config, to_dict
from tests.helpers import run_on_jax_without_tensorflow

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_backbone_table_writes_its_section(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\n<!-- section:other -->\nkept\n<!-- /section:other -->\n")
    backbone_table.main(["--models", "49S", "--out", str(out)])
    text = out.read_text()
    assert "| SpineNet-49S | 0.65 | 0.5 | 1 | 128 | 640 | 9,089,215 | 9,089,215 | +0 |" in text
    assert "Command: `python" in text and "kept" in text


def test_sections_are_replaced_not_duplicated(tmp_path):
    out = tmp_path / "B.md"
    write_section("x", "Title", "first", out)
    write_section("x", "Title", "second", out)
    text = out.read_text()
    assert text.count("<!-- section:x -->") == 1 and "second" in text and "first" not in text


def test_detector_table_runs_as_a_module_and_names_its_command(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.detector_table", "--models", "49S", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    assert "| 49S | 640 | 11,265,942 | 11,265,942 | +0 |" in text
    assert f"Command: `python -m benchmarks.detector_table --models 49S --out {out}`" in text


@pytest.mark.slow
def test_every_detector_matches_the_reference_table():
    for name, reference in DETECTOR_REFERENCE.items():
        params, gmacs = detector_table.measure(name)
        if name == "R50-FPN":  # the zoo's rounded 34.0M; our ResNet-50 convs carry biases
            assert params == pytest.approx(reference["params"], rel=0.01)
        else:
            assert params == reference["params"], name
        if reference["gmacs"]:  # ours count conv and dense MACs only: 0.1-0.2% under the zoo's
            assert gmacs == pytest.approx(reference["gmacs"], rel=0.01), name


def test_target_assignment_benchmark_writes_its_section(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    target_assignment.main(["--size", "128", "--batch", "1", "--boxes", "4", "--out", str(out)])
    text = out.read_text()
    assert "| anchors at 128 px | 3,069 |" in text  # 9 x (16^2 + 8^2 + 4^2 + 2^2 + 1)
    assert "ms/image" in text


@pytest.mark.slow  # about a minute: 16 small pipelines in two processes
def test_input_pipeline_benchmark_compares_a_revision_with_the_working_tree(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    flags = ["--images", "4", "--size", "64", "--batch", "2", "--batches", "2", "--before", "HEAD"]
    input_pipeline.main([*flags, "--out", str(out)])
    assert "| source | augmentation | mask targets | HEAD images/s | now images/s |" in out.read_text()
    rows = _rows(out, "COCO JSON + JPEG files") + _rows(out, "TFRecord (4 shards)")
    assert [row[2] for row in rows] == ["no", "112x112"] * 4
    assert all(float(row[4]) > 0 and float(row[6]) > 0 for row in rows), rows  # the working tree's
    # A revision before issue 17 can segfault in copy-paste (see train_dataset): a cell says so.
    before = [value for row in rows for value in (row[3], row[5])]
    assert all(value.startswith("failed (crashed, signal") or float(value) > 0 for value in before), rows


def _rows(path, first_cell):
    """The table rows of a benchmarks file whose first cell is `first_cell`, split into cells."""
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in path.read_text().splitlines()
        if line.startswith(f"| {first_cell} |")
    ]


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    """A 4 + 2 image synthetic COCO dataset: the benchmarks' --images/--annotations flags."""
    return write_synthetic_coco(
        tmp_path_factory.mktemp("coco"), num_train=4, num_val=2, seed=0, min_size=64, max_size=96
    )


@pytest.mark.slow  # about a minute on 2 cores: `make test-all`
def test_cpu_inference_benchmark_times_every_mode_and_saves_json(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    cpu_inference.main(
        [
            "--models",
            "49S",
            "--size",
            "128",
            "--batches",
            "1",
            "--repeats",
            "1",
            "--no-model-garden",
            "--out",
            str(out),
            "--results",
            str(tmp_path),
        ]
    )
    rows = _rows(out, "49S")
    assert [row[3] for row in rows] == ["raw", "post-processed"]
    assert all(float(row[1]) > 0 and all(float(ms) > 0 for ms in row[4:]) for row in rows)
    assert "skipped: --no-model-garden" in out.read_text()
    saved = load_results("cpu_inference", tmp_path)["rows"]
    assert len(saved["ours"]) == 6 and saved["model_garden"] == [
        {"model": "all", "error": "--no-model-garden"}
    ]


def test_model_garden_comparison_divides_ours_by_theirs():
    params = {"trainable_params": 28_543_383}
    ours = [{"model": "49", "batch": 1, "output": "raw", "mode": "XLA", "ms_per_image": 30.0, **params}]
    theirs = [
        {"model": "49", "batch": 1, "mode": "XLA", "ms_per_image": 60.0, **params},
        {"model": "R50-FPN", "error": "benchmarks.model_garden_inference failed: ImportError"},
    ]
    table = cpu_inference.comparison_table(ours, theirs)
    assert table[2] == "| 49 | 1 | XLA | 30 | 60 | 0.50 | +0 |"
    assert "skipped: benchmarks.model_garden_inference failed: ImportError" in table[3]


def test_two_stage_tables_compare_ours_with_model_garden():
    rows = [
        {
            "model": "maskrcnn-49",
            "mode": "tf.function",
            "ours": {"ms_per_image": 3000.0, "detections": 0.0},
            "model_garden": {"ms_per_image": 4000.0, "detections": 2.5},
        },
        {
            "model": "maskrcnn-49",
            "mode": "XLA",
            "ours": {"error": "RuntimeError: no kernel"},
            "model_garden": {"skipped": "--no-model-garden"},
        },
    ]
    table = two_stage_inference.latency_table(rows)
    assert table[2:] == [
        "| maskrcnn-49 | tf.function | 3000 | 4000 | 0.75 | 0.0 / 2.5 |",
        "| maskrcnn-49 | XLA | failed (RuntimeError: no kernel) | skipped: --no-model-garden | n/a | - / - |",
    ]
    models = [
        {"model": "maskrcnn-49", "gmacs": 215.71, "params": {"ours": 40_753_521, "model_garden": 40_753_520}},
        {"model": "fasterrcnn-49", "gmacs": 130.2, "params": {"ours": 38_104_854, "model_garden": None}},
    ]
    assert two_stage_inference.params_table(models)[2:] == [
        "| maskrcnn-49 | 215.7 | 40,753,521 | 40,753,520 | 40,753,521 | +1 |",
        "| fasterrcnn-49 | 130.2 | 38,104,854 | n/a | 38,104,854 | n/a |",
    ]


@pytest.mark.slow  # about 2.5 minutes on 2 cores: both full-size Mask R-CNNs, at 128 px
@pytest.mark.skipif(not (VENV / "bin" / "python").exists(), reason="needs the Model Garden virtualenv")
def test_two_stage_inference_times_both_mask_rcnns_alternately(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    # A process of its own: the thread pools can only be set before TensorFlow's first op.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.two_stage_inference",
            *("--models", "maskrcnn-49", "--size", "128", "--modes", "tf.function", "--repeats", "1"),
            *("--out", str(out), "--results", str(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (latency, params) = _rows(out, "maskrcnn-49")
    assert latency[1] == "tf.function" and float(latency[2]) > 0 and float(latency[3]) > 0
    reference = f"{TWO_STAGE_REFERENCE['maskrcnn-49']['params']:,}"
    assert params[2:] == [reference, reference, reference, "+0"]
    saved = load_results("two_stage_inference", tmp_path)
    assert saved["settings"]["threads"] == 2 and len(saved["rows"]["latency"]) == 1


def test_a_server_that_dies_reports_its_last_log_line():
    server = Server(sys.executable, "benchmarks.no_such_module")
    with pytest.raises(RuntimeError, match="benchmarks.no_such_module failed: .*No module named"):
        server.ask("params")
    server.close()


@pytest.mark.slow  # about a minute on 2 cores: `make test-all`
def test_training_throughput_benchmark_measures_a_training_step(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    training_throughput.main(
        ["--runs", "synthetic", "--size", "128", "--batch", "2", "--steps", "1", "--out", str(out)]
    )
    (row,) = _rows(out, "synthetic")
    assert row[1:4] == ["SpineNet-49, filter scale 0.25", "128", "2"] and float(row[-1]) > 0
    device = accelerator_throughput.accelerator()
    gpu = "not measured yet: no device" if device is None else f"{device}: see the next section"
    assert _rows(out, "GPU")[0][-1] == gpu
    assert accelerator_throughput.ACCELERATOR_COMMAND in out.read_text()


def test_accelerator_section_says_not_measured_without_a_device(tmp_path, monkeypatch):
    monkeypatch.setattr(accelerator_throughput, "accelerator", lambda: None)
    out = tmp_path / "BENCHMARKS.md"
    accelerator_throughput.main(["--out", str(out)])
    text = out.read_text()
    assert "not measured yet: no device" in text and accelerator_throughput.ACCELERATOR_COMMAND in text


@pytest.mark.slow  # 2.5 CPU-minutes: two precisions, three compiled functions each
def test_accelerator_suite_runs_on_jax_without_tensorflow_at_a_tiny_size(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    flags = [
        "--allow-cpu",
        "--models",
        "49",
        "--size",
        "128",
        "--batch",
        "2",
        "--inference-batches",
        "1",
        "2",
    ]
    flags += ["--steps", "1", "--filter-size-scale", "0.25", "--max-boxes", "4", "--matmul-size", "256"]
    # As on the accelerator machines: JAX, and neither TensorFlow nor pycocotools to import.
    run_as_main = (
        "import runpy\n"
        "sys.argv[0] = 'benchmarks.accelerator_throughput'\n"
        "runpy.run_module('benchmarks.accelerator_throughput', run_name='__main__', alter_sys=True)\n"
        "assert sys.modules['tensorflow'] is None and sys.modules['pycocotools'] is None\n"
    )
    result = run_on_jax_without_tensorflow(run_as_main, *flags, "--out", out, "--results", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _rows(out, "49")
    assert [row[1] for row in rows] == ["float32", "mixed_bfloat16"], rows
    # GMACs, training images/s and MFU, ms/image at batch 1 and 2, inference MFU, first step.
    assert all(float(cell.rstrip("%")) > 0 for row in rows for cell in row[2:]), rows
    text = out.read_text()
    assert "| training images/s (batch 2) | training MFU | inference ms/image, batch 1 |" in text
    assert (
        f"Command: `KERAS_BACKEND=jax python -m benchmarks.accelerator_throughput {' '.join(flags)}" in text
    )
    saved = load_results("accelerator_throughput", tmp_path)
    assert [row["precision"] for row in saved["rows"]] == ["float32", "mixed_bfloat16"]
    assert set(saved["rows"][0]["inference_ms_per_image"]) == {"1", "2"}


@pytest.mark.slow  # about a minute on 2 cores: `make test-all`
def test_accuracy_budget_trains_evaluates_and_saves_json(tmp_path, tiny_coco):
    out = tmp_path / "BENCHMARKS.md"
    train, val = tiny_coco["train"], tiny_coco["val"]
    accuracy_budget.main(
        [
            "--models",
            "SpineNet-49S",
            "--steps",
            "2",
            "--size",
            "128",
            "--batch",
            "2",
            "--images",
            str(train["dir"]),
            "--annotations",
            str(train["annotations_file"]),
            "--val-images",
            str(val["dir"]),
            "--val-annotations",
            str(val["annotations_file"]),
            "--work-dir",
            str(tmp_path / "runs"),
            "--out",
            str(out),
            "--results",
            str(tmp_path),
        ]
    )
    (row,) = _rows(out, "SpineNet-49S")
    assert 0.0 <= float(row[1]) <= 1.0 and float(row[4]) > 0 and int(row[5].replace(",", "")) > 0
    assert "2 steps of batch 2 at 128x128 px" in out.read_text()
    (saved,) = load_results("accuracy_budget", tmp_path)["rows"]
    assert saved["model"] == "SpineNet-49S" and (tmp_path / "runs" / "SpineNet-49S" / "metrics.json").exists()


def test_plot_draws_both_panels_from_saved_results(tmp_path):
    accuracy = [
        {"model": "SpineNet-49S", "AP": 0.2, "AP50": 0.4, "gmacs": 2.2},
        {"model": "R50-FPN", "AP": 0.1, "AP50": 0.3, "gmacs": 5.7},
    ]
    save_results("accuracy_budget", {"size": 256, "steps": 300, "batch": 8}, accuracy, tmp_path)
    ours = [
        {"model": model, "gmacs": gmacs, "batch": 1, "output": "raw", "mode": mode, "ms_per_image": ms}
        for model, gmacs in (("49S", 30.8), ("49", 85.3))
        for mode, ms in (("eager", 900), ("XLA", 700))
    ]
    theirs = [{"model": "49S", "batch": 1, "mode": "tf.function", "ms_per_image": 800.0}]
    save_results("cpu_inference", {"size": 640}, {"ours": ours, "model_garden": theirs}, tmp_path)
    png = tmp_path / "plot.png"
    plot.main(["--results", str(tmp_path), "--out", str(png)])
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 800 and image.height > 300


def test_detector_table_covers_every_spinenet_variant():
    assert set(MODEL_IDS) <= set(DETECTOR_REFERENCE)


def test_accuracy_budget_configs_differ_only_in_the_backbone():
    args = argparse.Namespace(steps=300, size=256, batch=8, pyramid_filters=64, images=None)
    spinenet, resnet = (
        to_dict(
            load_config(training_throughput.SYNTHETIC_EXPERIMENT, accuracy_budget.overrides(args, backbone))
        )
        for backbone in accuracy_budget.BACKBONES.values()
    )
    assert spinenet["model"].pop("backbone") != resnet["model"].pop("backbone")
    assert spinenet == resnet
    assert (spinenet["train"]["total_steps"], spinenet["data"]["image_size"]) == (300, 256)


@pytest.mark.slow  # about a minute: the reference writes a 115 MB checkpoint
@pytest.mark.skipif(not (VENV / "bin" / "python").exists(), reason="needs the Model Garden virtualenv")
def test_a_full_size_model_garden_checkpoint_converts_with_every_variable_mapped(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    checkpoint_conversion.main(["--out", str(out)])
    row = next(line for line in out.read_text().splitlines() if line.startswith("| model-garden |"))
    variables, unmapped, ours, theirs, error = [cell.strip() for cell in row.split("|")[2:7]]
    loaded, _, total = variables.partition(" of ")
    assert loaded == total and unmapped == "0"
    assert int(ours.replace(",", "")) == int(theirs.replace(",", "")) == DETECTOR_REFERENCE["49"]["params"]
    assert float(error) <= 1e-4
