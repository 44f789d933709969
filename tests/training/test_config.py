import numpy as np
import pytest
import yaml

from spinenet_tf.training.config import (
    EXPERIMENTS_DIR,
    ConfigError,
    experiment_names,
    experiment_path,
    load_config,
    to_dict,
)
from spinenet_tf.training.trainer import make_optimizer


@pytest.mark.parametrize("name", experiment_names())
def test_shipped_experiments_survive_the_round_trip_through_a_runs_config_yaml(name, tmp_path):
    # A run saves its resolved config as config.yaml; eval, export and resume load it back.
    config = load_config(name)
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    assert load_config(saved) == config


def test_experiments_are_found_by_name_or_path(tmp_path):
    assert experiment_names()[-1] == "retinanet/synthetic"
    shipped = experiment_path("synthetic")
    assert shipped.startswith(EXPERIMENTS_DIR) and shipped.endswith("retinanet/synthetic.yaml")
    assert experiment_path("retinanet/spinenet49_coco.yaml") == experiment_path("spinenet49_coco")
    (tmp_path / "synthetic").write_text("{}")  # a file of that name wins over the shipped experiment
    assert experiment_path(tmp_path / "synthetic") == str(tmp_path / "synthetic")
    with pytest.raises(ConfigError, match=r"config nope: no such file, .*retinanet/synthetic\)"):
        experiment_path("nope")


def test_the_default_writes_its_synthetic_set_to_a_cache_dir_not_the_working_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = load_config(overrides=["data.synthetic.num_train=5"]).data
    out_dir = str(tmp_path / "cache" / "spinenet_tf" / "synthetic-num_train5-num_val100-seed0")
    assert data.synthetic["out_dir"] == out_dir
    assert data.train.images == f"{out_dir}/train"
    assert data.val.annotations == f"{out_dir}/annotations/instances_val.json"


def test_overrides_are_typed_and_checked_like_the_file():
    overrides = ["train.total_steps=50", "train.checkpoint_interval=25", "data.scale_range=[0.5, 2]"]
    config = load_config("synthetic", overrides)
    assert config.train.total_steps == 50 and config.data.scale_range == (0.5, 2.0)


def learning_rates(total_steps, steps, experiment="synthetic"):
    optimizer = make_optimizer(load_config(experiment, [f"train.total_steps={total_steps}"]))
    rates = []
    for step in steps:
        optimizer.iterations.assign(step)
        rates.append(float(optimizer.learning_rate.numpy()))
    return rates


def test_schedule_steps_given_as_fractions_follow_total_steps():
    # The synthetic default warms up over 0.0715 and decays at 0.857 of the run: steps 50 and
    # 600 of 700, 100 and 1200 of 1400. Peak rate: 0.016 * batch 8 / base batch 64.
    np.testing.assert_allclose(learning_rates(700, [50, 599, 600]), [0.002, 0.002, 0.0002], rtol=1e-5)
    np.testing.assert_allclose(
        learning_rates(700, [0, 25, 49, 50, 599, 600]), learning_rates(1400, [0, 50, 98, 100, 1199, 1200])
    )


def test_the_cosine_schedule_warms_up_then_follows_half_a_cosine_to_zero():
    # The ImageNet recipe: 1.6 per 4096 images, 1564 warm-up steps from 0, cosine to the end.
    rates = learning_rates(62557, [0, 782, 1564, 1564 + (62557 - 1564) // 2, 62557], "spinenet49_imagenet")
    np.testing.assert_allclose(rates, [0.0, 0.8, 1.6, 0.8, 0.0], atol=1e-4)


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
        (["data.image_size=200"], r"data.image_size: 200 is not a multiple of 128, .*use 128 or 2"),
        # SpineNet-49's table has level-7 blocks: 2**7 even when the outputs stop at P5.
        (
            ["model.backbone.max_level=5", "model.detector.max_level=5", "data.image_size=160"],
            r"data.image_size: 160 is not a multiple of 128",
        ),
        (
            ["model.backbone.type=resnet50", "model.backbone={type: resnet50}", "data.image_size=80"],
            r"data.image_size: 80 is not a multiple of 32, which this detector.s resnet50 backbone needs",
        ),
        (
            ["model.backbone.block_specs=[[9, bottleneck, [0, 1], true]]"],
            r"model.backbone: Block 1 .*level 9",
        ),
        (
            ["model.detector.num_filter=3"],
            r"model.detector.num_filter: unknown key; allowed keys here are \[",
        ),
        (["model.backbone.model=49"], r"model.backbone.model: unknown key"),
        (["model.backbone.image_shape=[256, 256, 3]"], r"model.backbone.image_shape: set by data.image_size"),
        (["model.detector.sync_batch_norm=true"], r"model.detector.sync_batch_norm: set by runtime.sync"),
        (["model.backbone.type=vgg"], r"model.backbone.type: 'vgg' is not one of the allowed values"),
        (["data.synthetic.num_tests=3"], r"data.synthetic.num_tests: unknown key; allowed keys here are"),
        (
            ["train.total_steps=600", "train.checkpoint_interval=7"],
            r"train.checkpoint_interval: 7 does not divide train.total_steps 600",
        ),
        (["train.optimizer.decay_steps=[400, 200]"], r"train.optimizer.decay_steps: must increase"),
        (["train.optimizer.decay_steps=[0.9, 200]"], r"train.optimizer.decay_steps: must increase"),
        (
            ["train.total_steps=300", "train.optimizer.decay_steps=[300]"],
            r"train.optimizer.decay_steps\[0\]: step 300 is not inside the run \(1..299, train.total_steps=3",
        ),
        (
            ["train.optimizer.warmup_steps=800"],
            r"train.optimizer.warmup_steps: 800 is outside 0..train.total_steps \(700\)",
        ),
        (
            ["train.optimizer.warmup_steps=1.5"],
            r"train.optimizer.warmup_steps: 1.5 is neither a step count \(an integer\) nor a fraction",
        ),
        (
            ["model.detector.weight_decay=4.0e-5"],
            r"model.detector.weight_decay \(4e-05\) and train.optimizer.weight_decay both put L2",
        ),
        (
            ["model.detector={}"],  # RetinaNet's default weight_decay applies
            r"model.detector.weight_decay \(4e-05, RetinaNet's default\) and train.optimizer.weight_decay",
        ),
        (
            ["train.optimizer.weight_decay=0", "model.detector={}", "model.backbone.kernel_regularizer=1e-4"],
            r"model.detector.weight_decay .* and model.backbone.kernel_regularizer both put L2",
        ),
        (
            ["train.optimizer.type=sgd"],
            r"train.optimizer.weight_decay: only AdamW uses it",
        ),
        (["data.val.annotations=null", "data.val.tfrecord=x*"], r"data.val.annotations: COCO evaluation"),
        (["data.copy_paste_probability=1.5"], r"data.copy_paste_probability: must be in \[0, 1\]"),
        (["train.batch_size=0"], r"train.batch_size: must be >= 1, got 0"),
        (["nonsense"], r"expected key=value"),
    ],
)
def test_config_errors_name_the_key_and_the_allowed_values(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("synthetic", overrides)


def test_a_broken_file_is_named(tmp_path):
    (tmp_path / "bad.yaml").write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(tmp_path / "bad.yaml")
