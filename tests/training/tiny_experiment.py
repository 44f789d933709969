"""A tiny experiment (8 synthetic 64-96 px images, a 4-block SpineNet) and a way to run the CLI on it."""

import os
import subprocess
import sys

import yaml

from tests.helpers import SMALL_BLOCK_SPECS


def write_experiment(tmp_path, data_dir=None, data=(), runtime=(), **train):
    """Writes tmp_path/experiment.yaml; `data`, `runtime` and `train` update those sections."""
    data_dir = data_dir or tmp_path / "data"
    config = {
        "model": {
            "backbone": {
                "type": "spinenet",
                "model_id": "49",
                "filter_size_scale": 0.25,
                "endpoints_num_filters": 16,
                "block_specs": SMALL_BLOCK_SPECS,
            },
            "detector": {"num_convs": 1, "num_filters": 16},
            "num_classes": 7,
        },
        "data": {
            "synthetic": {
                "out_dir": str(data_dir),
                "num_train": 8,
                "num_val": 4,
                "seed": 0,
                "min_size": 64,
                "max_size": 96,
            },
            "train": {
                "images": str(data_dir / "train"),
                "annotations": str(data_dir / "annotations" / "instances_train.json"),
            },
            "val": {
                "images": str(data_dir / "val"),
                "annotations": str(data_dir / "annotations" / "instances_val.json"),
            },
            "image_size": 128,
            "max_boxes": 8,
            "cache": True,
            **dict(data),
        },
        "train": {
            "batch_size": 2,
            "total_steps": 6,
            "checkpoint_interval": 2,
            "keep_checkpoints": 5,
            "optimizer": {"warmup_steps": 2, "learning_rate": 0.01},
            **train,
        },
        "eval": {"batch_size": 2},
        "runtime": dict(runtime),
    }
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def spinenet(*args, prelude="", env=()):
    """`spinenet ARGS` in a subprocess (stdout and stderr together); `prelude` is Python run first."""
    code = f"import sys\n{prelude}\nfrom spinenet_tf.cli import main\nmain(sys.argv[1:])"
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **dict(env)}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environment,
    )
