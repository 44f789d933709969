"""Training run directories (a detector's, a classifier's) shared by the export CLI and benchmark tests."""

import json

import pytest
import yaml

from spinenet_tf.data.classification import classification_source
from spinenet_tf.training.checkpoints import CheckpointDirectory
from spinenet_tf.training.config import load_config, to_dict
from spinenet_tf.training.trainer import (
    CLASS_NAMES_FILE,
    build_model,
    ensure_synthetic_dataset,
    make_optimizer,
)
from tests.helpers import SMALL_BLOCK_SPECS
from tests.training.tiny_experiment import write_experiment


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """A run directory as `spinenet train` leaves it: config.yaml and a checkpoint (untrained weights)."""
    root = tmp_path_factory.mktemp("run")
    # Score threshold 0: the untrained model's ~0.01 scores still give detections to check.
    config = load_config(write_experiment(root), ["model.detector.score_threshold=0.0"])
    ensure_synthetic_dataset(config)
    model = build_model(config)
    model.compile(optimizer=make_optimizer(config))
    model_dir = root / "model"
    CheckpointDirectory(str(model_dir / "checkpoints"), 2).save(model, 4)
    (model_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config)))
    return model_dir


@pytest.fixture(scope="session")
def classifier_run_dir(tmp_path_factory):
    """A classifier run as `spinenet train` leaves it: config.yaml, class_names.json and a checkpoint
    (untrained weights) of the synthetic classification experiment, with a small SpineNet and 16
    images a split."""
    root = tmp_path_factory.mktemp("classifier_run")
    overrides = [
        f"data.synthetic.out_dir={root / 'data'}",
        "data.synthetic.num_train=16",
        "data.synthetic.num_val=16",
        "model.backbone.endpoints_num_filters=16",
        f"model.backbone.block_specs={json.dumps(SMALL_BLOCK_SPECS)}",
    ]
    config = load_config("classification/synthetic", overrides)
    ensure_synthetic_dataset(config)
    model = build_model(config)
    model.compile(optimizer=make_optimizer(config))
    model_dir = root / "model"
    CheckpointDirectory(str(model_dir / "checkpoints"), 2).save(model, 4)
    (model_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config)))
    (model_dir / CLASS_NAMES_FILE).write_text(
        json.dumps(classification_source(config.data.train).class_names)
    )
    return model_dir
