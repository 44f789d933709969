"""The training app end to end, in subprocesses: a run killed with SIGKILL resumes and finishes."""

import json
import signal
import time

import pytest

from spinenet_tf.data.synthetic import CATEGORIES
from tests.training.tiny_experiment import spinenet, write_experiment


@pytest.mark.slow
def test_sigkill_mid_run_then_restart_finishes_from_the_last_checkpoint(tmp_path):
    config, model_dir = write_experiment(tmp_path), tmp_path / "model"
    first = spinenet("train", "--config", str(config), "--model-dir", str(model_dir), "--progress", "lines")
    checkpoint = model_dir / "checkpoints" / "ckpt-2"
    deadline = time.time() + 300
    while not checkpoint.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert checkpoint.exists(), first.communicate()[0]
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (model_dir / "metrics.json").exists()  # it really died before the end

    second = spinenet("train", "--config", str(config), "--model-dir", str(model_dir), "--progress", "lines")
    output = second.communicate(timeout=600)[0]
    assert second.returncode == 0, output
    resumed_at = int(output.split("at step ")[1].split()[0])
    assert resumed_at >= 2 and resumed_at % 2 == 0, output
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["step"] == 6 and list(metrics["per_class_AP"]) == [c["name"] for c in CATEGORIES]
    losses = [
        float(line.rsplit("loss: ", 1)[1].split()[0]) for line in output.splitlines() if "loss: " in line
    ]
    assert losses and all(loss == loss and loss < 100 for loss in losses), output  # finite
    names = sorted(path.name for path in (model_dir / "checkpoints").iterdir())
    assert names == ["ckpt-2", "ckpt-4", "ckpt-6"], names  # keep_checkpoints 5; no partial write left

    # `spinenet eval` without --config evaluates the run with its own config.yaml and latest
    # checkpoint: the numbers of the evaluation that ended training.
    (model_dir / "metrics.json").unlink()
    evaluation = spinenet("eval", "--model-dir", str(model_dir))
    output = evaluation.communicate(timeout=600)[0]
    assert evaluation.returncode == 0, output
    assert f"config: {model_dir / 'config.yaml'}" in output, output
    assert json.loads((model_dir / "metrics.json").read_text()) == metrics


@pytest.mark.slow
def test_a_diverging_run_stops_naming_the_step_and_keeps_its_checkpoint(tmp_path):
    # The learning rate jumps from 0.01 to 1e12 at step 2, after the first checkpoint.
    optimizer = {
        "learning_rate": 0.01,
        "warmup_steps": 0,
        "global_clipnorm": None,
        "decay_steps": [2],
        "decay_factor": 1.0e14,
    }
    config, model_dir = write_experiment(tmp_path, optimizer=optimizer), tmp_path / "model"
    run = spinenet("train", "--config", str(config), "--model-dir", str(model_dir), "--progress", "lines")
    output = run.communicate(timeout=600)[0]
    assert run.returncode != 0
    message = output[output.index("loss became") :].splitlines()[0]
    step = int(message.split(" at step ")[1].split(";")[0])
    assert message.split()[2] in ("nan", "inf") and step > 2, message
    assert "Lower train.optimizer.learning_rate" in message, message
    kept = message.split("checkpoint is kept: ")[1].split(". ")[0]
    checkpoints = sorted((model_dir / "checkpoints").iterdir(), key=lambda path: int(path.name[5:]))
    assert kept == str(checkpoints[-1]) and int(checkpoints[-1].name[5:]) < step, (message, checkpoints)
