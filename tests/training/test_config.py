import pathlib

import pytest

from spinenet_tf.training.config import ConfigError, ExperimentConfig, load_config

EXPERIMENTS = sorted(str(p) for p in pathlib.Path("experiments").rglob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS)
def test_shipped_experiments_load(path):
    config = load_config(path)
    assert (
        isinstance(config, ExperimentConfig)
        and config.train.total_steps % config.train.checkpoint_interval == 0
    )


def test_overrides_are_typed_and_checked_like_the_file():
    overrides = ["train.total_steps=50", "train.checkpoint_interval=25", "data.scale_range=[0.5, 2]"]
    config = load_config("experiments/retinanet/synthetic.yaml", overrides)
    assert config.train.total_steps == 50 and config.data.scale_range == (0.5, 2.0)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["train.total_step=5"], r"train.total_step: unknown key; allowed keys here are \['batch_size', "),
        (["train.batch_size=eight"], r"train.batch_size: expected int, got 'eight' \(str\)"),
        (["train.batch_size=true"], r"train.batch_size: expected int, got True"),
        (["data.scale_range=[0.5]"], r"data.scale_range: expected 2 values, got 1"),
        (
            ["runtime.strategy=horovod"],
            r"runtime.strategy: 'horovod' is not one of the allowed values \['default', ",
        ),
        (
            ["runtime.mixed_precision=float8"],
            r"runtime.mixed_precision: 'float8' is not one of the allowed values",
        ),
        (
            ["model.detector.min_level=6", "model.detector.max_level=5"],
            r"model.detector.min_level: 6 is greater than max_level 5",
        ),
        (["data.image_size=200"], r"data.image_size: 200 is not a positive multiple of 2\*\*max_level = 128"),
        (
            ["model.detector.num_filter=3"],
            r"model.detector.num_filter: unknown key; allowed keys here are \[",
        ),
        (["model.backbone.model=49"], r"model.backbone.model: unknown key"),
        (["model.backbone.type=vgg"], r"model.backbone.type: 'vgg' is not one of the allowed values"),
        (
            ["train.total_steps=600", "train.checkpoint_interval=7"],
            r"train.checkpoint_interval: 7 does not divide train.total_steps 600",
        ),
        (["train.optimizer.decay_steps=[400, 200]"], r"train.optimizer.decay_steps: must increase"),
        (["data.copy_paste_probability=1.5"], r"data.copy_paste_probability: must be in \[0, 1\]"),
        (["train.batch_size=0"], r"train.batch_size: must be >= 1, got 0"),
        (["nonsense"], r"expected key=value"),
    ],
)
def test_config_errors_name_the_key_and_the_allowed_values(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("experiments/retinanet/synthetic.yaml", overrides)


def test_missing_and_broken_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(tmp_path / "bad.yaml")
