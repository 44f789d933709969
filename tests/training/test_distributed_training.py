"""Data parallelism: the same global batch gives the same loss under every strategy.

Three runs of the same tiny experiment (4 steps, global batch 4, synchronised batch
norm, no augmentation or shuffling, so every run sees the same batches): one process on
one device, one process with MirroredStrategy over two logical CPUs, and two worker
processes on localhost under MultiWorkerMirroredStrategy. The per-step losses each run
logs to TensorBoard must agree.
"""

import json
import socket

import numpy as np
import pytest
import tensorflow as tf

from tests.training.tiny_experiment import spinenet, write_experiment

TWO_LOGICAL_CPUS = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
"""


def experiment(tmp_path, data_dir):
    return write_experiment(
        tmp_path,
        data_dir,
        data={"flip": False, "scale_range": [1.0, 1.0], "shuffle_buffer": 1},
        runtime={"sync_batch_norm": True},
        batch_size=4,
        total_steps=4,
    )


def train(config, model_dir, *extra, prelude="", env=()):
    return spinenet(
        "train",
        "--config",
        str(config),
        "--model-dir",
        str(model_dir),
        "--progress",
        "lines",
        *extra,
        prelude=prelude,
        env=env,
    )


def finish(run):
    output = run.communicate(timeout=900)[0]
    assert run.returncode == 0, output[-5000:]
    return output


def logged_losses(model_dir):
    """{step: loss} from the run's TensorBoard event files."""
    losses = {}
    for path in tf.io.gfile.glob(str(model_dir / "logs" / "train" / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == "loss":
                    losses[event.step] = float(tf.make_ndarray(value.tensor))
    return losses


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    """The reference run; it also writes the synthetic dataset the other runs share."""
    tmp_path = tmp_path_factory.mktemp("one_device")
    data_dir = tmp_path / "data"
    finish(train(experiment(tmp_path, data_dir), tmp_path / "model"))
    losses = logged_losses(tmp_path / "model")
    assert sorted(losses) == [1, 2, 3, 4] and all(np.isfinite(list(losses.values())))
    return data_dir, losses


def assert_same_losses(losses, reference):
    assert sorted(losses) == sorted(reference)
    steps = sorted(reference)
    np.testing.assert_allclose([losses[s] for s in steps], [reference[s] for s in steps], rtol=2e-4)


@pytest.mark.slow
def test_mirrored_over_two_logical_cpus_gives_the_one_device_loss(one_device, tmp_path):
    data_dir, reference = one_device
    output = finish(
        train(
            experiment(tmp_path, data_dir),
            tmp_path / "model",
            "--strategy",
            "mirrored",
            prelude=TWO_LOGICAL_CPUS,
        )
    )
    assert "strategy mirrored: 2 replicas" in output, output[-3000:]
    assert_same_losses(logged_losses(tmp_path / "model"), reference)


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_worker_processes_give_the_one_process_loss(one_device, tmp_path):
    data_dir, reference = one_device
    config, model_dir = experiment(tmp_path, data_dir), tmp_path / "model"
    cluster = {"worker": [f"localhost:{free_port()}", f"localhost:{free_port()}"]}
    workers = [
        train(
            config,
            model_dir,
            "--strategy",
            "multi_worker",
            env={"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})},
        )
        for index in (0, 1)
    ]
    outputs = [finish(worker) for worker in workers]
    assert all("strategy multi_worker: 2 replicas" in output for output in outputs), outputs
    assert_same_losses(logged_losses(model_dir), reference)
    assert json.loads((model_dir / "metrics.json").read_text())["step"] == 4


@pytest.mark.slow
def test_jax_data_parallel_over_two_devices_gives_the_one_device_loss(one_device, tmp_path):
    """keras.distribution.DataParallel on two XLA CPU devices against one device, both on JAX."""
    data_dir, _ = one_device
    env = {
        "KERAS_BACKEND": "jax",
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    }
    losses = {}
    for strategy in ("default", "mirrored"):
        run_dir = tmp_path / strategy
        run_dir.mkdir()
        output = finish(
            train(experiment(run_dir, data_dir), run_dir / "model", "--strategy", strategy, env=env)
        )
        assert f"strategy {strategy}: {2 if strategy == 'mirrored' else 1} replicas" in output, output[-3000:]
        losses[strategy] = logged_losses(run_dir / "model")
        assert json.loads((run_dir / "model" / "metrics.json").read_text())["step"] == 4
    assert sorted(losses["default"]) == [1, 2, 3, 4]
    assert_same_losses(losses["mirrored"], losses["default"])
