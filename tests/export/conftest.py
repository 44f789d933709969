"""A training run directory shared by the export CLI and benchmark tests."""

import pytest
import yaml

from spinenet_tf.training.checkpoints import CheckpointDirectory
from spinenet_tf.training.config import load_config, to_dict
from spinenet_tf.training.trainer import build_model, ensure_synthetic_dataset, make_optimizer
from tests.training.tiny_experiment import write_experiment


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """A run directory as `spinenet train` leaves it: config.yaml and a checkpoint (untrained weights)."""
    root = tmp_path_factory.mktemp("run")
    # Score threshold 0: the untrained model's ~0.01 scores still give detections to check.
    config = load_config(write_experiment(root), ["model.detector.score_threshold=0.0"])
    ensure_synthetic_dataset(config.data)
    model = build_model(config)
    model.compile(optimizer=make_optimizer(config))
    model_dir = root / "model"
    CheckpointDirectory(str(model_dir / "checkpoints"), 2).save(model, 4)
    (model_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config)))
    return model_dir
