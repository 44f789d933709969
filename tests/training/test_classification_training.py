"""A classifier experiment end to end, and the Proper Reuse path: classify -> freeze -> detect."""

import json

import keras
import numpy as np
import pytest
import yaml

from spinenet_tf.errors import ConfigError
from spinenet_tf.training.config import load_config
from spinenet_tf.training.initialize import initialize_from, load_init_source, named_weights
from spinenet_tf.training.trainer import build_model, load_trained_model, train
from tests.helpers import SMALL_BLOCK_SPECS
from tests.training.tiny_experiment import write_experiment

BACKBONE = {
    "type": "spinenet",
    "model_id": "49",
    "filter_size_scale": 0.25,
    "endpoints_num_filters": 16,
    "block_specs": SMALL_BLOCK_SPECS,
}


def write_classifier_experiment(tmp_path, **model):
    data_dir = tmp_path / "shapes"
    config = {
        "model": {
            "type": "classifier",
            "backbone": BACKBONE,
            "classifier": {"weight_decay": 0.0},
            "num_classes": 8,
        }
        | model,
        "data": {
            "synthetic": {"out_dir": str(data_dir), "num_train": 16, "num_val": 8, "image_size": 64},
            "image_size": 80,  # not a multiple of 128, nor the images' size
            "cache": True,
        },
        "train": {
            "batch_size": 4,
            "total_steps": 4,
            "checkpoint_interval": 2,
            "optimizer": {"type": "adamw", "learning_rate": 0.004, "warmup_steps": 1, "schedule": "cosine"},
        },
        "eval": {"batch_size": 3},
    }
    path = tmp_path / "classifier.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("classifier")
    config = load_config(write_classifier_experiment(tmp_path))
    metrics = train(config, str(tmp_path / "run"), verbose=0)
    return tmp_path / "run", metrics


def test_a_classifier_experiment_trains_evaluates_and_names_its_classes(classifier_run):
    run, metrics = classifier_run
    written = json.loads((run / "metrics.json").read_text())
    assert written["step"] == 4 and written["num_images"] == 8
    assert 0.0 <= written["top1"] <= written["top5"] <= 1.0
    assert written["top1"] == metrics["top1"]
    names = json.loads((run / "class_names.json").read_text())
    assert names == sorted(names) and len(names) == 8 and set(written["per_class_top1"]) <= set(names)
    model, config, _ = load_trained_model(str(run))
    assert config.model.type == "classifier" and model.backbone.input.shape[1:3] == (80, 80)


def test_classifier_backbone_initialises_a_frozen_detector_that_keeps_it(classifier_run, tmp_path):
    """The transfer of the Proper Reuse recipe: the detector's backbone equals the classifier's
    before its first step and, frozen, after its training (BN statistics included)."""
    run, _ = classifier_run
    experiment = write_experiment(tmp_path, total_steps=2)
    overrides = [f"model.init_checkpoint={run}", "model.freeze_backbone=true"]
    overrides += [
        f"model.backbone.{key}={json.dumps(value)}" for key, value in BACKBONE.items() if key != "type"
    ]
    config = load_config(experiment, overrides)
    classifier = load_init_source(str(run))
    detector = build_model(config)
    initialize_from(detector, classifier, ("backbone",))
    source = named_weights(classifier.backbone)
    for path, weight in named_weights(detector.backbone).items():
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(weight), keras.ops.convert_to_numpy(source[path])
        )

    train(config, str(tmp_path / "detector"), verbose=0)
    trained, _, _ = load_trained_model(str(tmp_path / "detector"))
    for path, weight in named_weights(trained.backbone).items():
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(weight), keras.ops.convert_to_numpy(source[path])
        )
    head = trained.get_layer("box_net_conv1").kernel
    assert not np.array_equal(
        keras.ops.convert_to_numpy(head),
        keras.ops.convert_to_numpy(detector.get_layer("box_net_conv1").kernel),
    )


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "model.detector={num_convs: 2}",
            "model.detector: a classifier model takes its arguments in model.classifier",
        ),
        ("model.classifier.aggregation=mean", None),
        ("model.classifier.pooling=avg", r"model.classifier.pooling: unknown key"),
        (
            "train.optimizer.decay_steps=[2]",
            "train.optimizer.decay_steps: a cosine schedule decays continuously",
        ),
        ("data.crop_area_range=[0.5, 1.5]", r"data.crop_area_range: need 0 < low <= high <= 1"),
    ],
)
def test_classifier_config_errors_name_the_key(tmp_path, override, message):
    path = write_classifier_experiment(tmp_path)
    if message is None:  # a value the constructor refuses: named when the model is built
        config = load_config(path, [override])
        with pytest.raises(Exception, match="Unknown aggregation 'mean'"):
            build_model(config)
        return
    with pytest.raises(ConfigError, match=message):
        load_config(path, [override])
