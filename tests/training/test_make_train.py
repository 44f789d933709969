"""The main job, as `make train` runs it: the embedded default trains to a useful mAP on CPU."""

import json
import subprocess
import sys

import pytest

# Measured 2026-11-23 on 2 CPU cores: AP50 0.563 (BENCHMARKS.md, `make train`); a margin for run-to-run noise.
MIN_AP50 = 0.45


@pytest.mark.slow
def test_synthetic_default_reaches_the_stated_map(tmp_path):
    data = tmp_path / "synthetic"
    overrides = [
        f"data.synthetic.out_dir={data}",
        f"data.train.images={data / 'train'}",
        f"data.train.annotations={data / 'annotations' / 'instances_train.json'}",
        f"data.val.images={data / 'val'}",
        f"data.val.annotations={data / 'annotations' / 'instances_val.json'}",
    ]
    config = "experiments/retinanet/synthetic.yaml"
    command = [sys.executable, "-m", "spinenet_tf.cli", "train", "--config", config,
               "--model-dir", str(tmp_path / "model"), "--verbose", "2"]  # fmt: skip
    for override in overrides:
        command += ["--set", override]
    run = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert metrics["AP50"] >= MIN_AP50, metrics
