"""Fine-tuning: a fresh run starts from a checkpoint's weights (`model.init_checkpoint`,
`model.init_modules`); a resumed run starts from its own checkpoint.

"Before the first step" is observed by wrapping `Task.fit`: the wrapper copies the weights
of the model the trainer is about to fit, after its initialisation and before any step.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from spinenet_tf.errors import ConfigError
from spinenet_tf.pretrained.presets import get_preset
from spinenet_tf.task import Task
from spinenet_tf.training.checkpoints import CheckpointDirectory
from spinenet_tf.training.config import load_config
from spinenet_tf.training.initialize import initialize_from, load_init_source, named_weights
from spinenet_tf.training.trainer import build_model, load_trained_model, train
from tests.helpers import SMALL_BLOCK_SPECS, tiny_detector
from tests.training.tiny_experiment import write_experiment

PREDICTOR = ("class_net_predict/bias", "class_net_predict/kernel")
ANCHORS_PER_LOCATION = 9  # 3 scales x 3 aspect ratios
PRESET_MODEL = "spinenet_tf.pretrained.presets.preset_weights"


class StopBeforeTraining(Exception):
    pass


class Interrupted(Exception):
    pass


def values(model):
    return {path: keras.ops.convert_to_numpy(weight).copy() for path, weight in named_weights(model).items()}


def record_fit_start(monkeypatch, then_stop=False):
    """A list that gets the weights of each model `fit` is called on, before its first step;
    `then_stop` raises StopBeforeTraining there instead of training."""
    starts, fit = [], Task.fit

    def recording_fit(self, *args, **kwargs):
        starts.append(values(self))
        if then_stop:
            raise StopBeforeTraining
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(Task, "fit", recording_fit)
    return starts


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """(model dir, data dir, weights) of a 2-step run of the tiny experiment (7 classes, seed 0)."""
    root = tmp_path_factory.mktemp("source")
    config = load_config(write_experiment(root, total_steps=2, checkpoint_interval=2))
    train(config, str(root / "model"), verbose=0)
    return root / "model", root / "data", values(load_trained_model(str(root / "model"))[0])


def test_a_fresh_run_starts_from_a_run_dir_and_once_interrupted_resumes_from_its_own_checkpoint(
    source_run, tmp_path, monkeypatch, capsys
):
    source_dir, data_dir, source = source_run
    overrides = [
        f"model.init_checkpoint={source_dir}",
        "model.init_modules=[all]",
        "model.num_classes=9",
        "runtime.seed=1",  # fresh weights unlike the source's: a copy is seen, not a coincidence
    ]
    config = load_config(write_experiment(tmp_path, data_dir, total_steps=4), overrides)
    model_dir = str(tmp_path / "model")
    save = CheckpointDirectory.save

    def save_then_die(self, model, step):
        save(self, model, step)
        raise Interrupted

    monkeypatch.setattr(CheckpointDirectory, "save", save_then_die)
    starts = record_fit_start(monkeypatch)
    with pytest.raises(Interrupted):
        train(config, model_dir, verbose=0)

    # Before the first step: everything but the class predictor is the source's.
    start = starts[0]
    assert set(start) == set(source)
    for path in set(source) - set(PREDICTOR):
        np.testing.assert_array_equal(start[path], source[path], err_msg=path)
    kernel = "class_net_predict/kernel"
    assert start[kernel].shape[-1] == 9 * ANCHORS_PER_LOCATION
    assert source[kernel].shape[-1] == 7 * ANCHORS_PER_LOCATION
    prior_bias = -math.log((1 - 0.01) / 0.01)  # the fresh prior-probability initialisation
    np.testing.assert_allclose(start["class_net_predict/bias"], prior_bias, rtol=1e-6)
    output = capsys.readouterr().out
    assert (
        f"initialised all from {source_dir}: {len(source) - 2} weights loaded, 2 re-initialised "
        "(class_net_predict/bias, class_net_predict/kernel: num_classes differs" in output
    ), output

    # Training went on from there up to the step-2 checkpoint, where the run was cut.
    checkpoint = values(load_trained_model(model_dir)[0])
    for path in ("backbone/stem_conv/kernel", "box_net_conv1/kernel", kernel):
        assert not np.array_equal(checkpoint[path], start[path]), path

    # Restarted, it continues from that checkpoint, not from the source's weights.
    monkeypatch.setattr(CheckpointDirectory, "save", save)
    restarts = record_fit_start(monkeypatch, then_stop=True)
    with pytest.raises(StopBeforeTraining):
        train(config, model_dir, verbose=0)
    output = capsys.readouterr().out
    assert "ckpt-2 at step 2" in output and "initialised" not in output, output
    for path, value in checkpoint.items():
        np.testing.assert_array_equal(restarts[0][path], value, err_msg=path)


def test_backbone_from_a_keras_file_fills_the_frozen_backbone_of_a_distributed_model(
    source_run, tmp_path, monkeypatch
):
    source_dir, data_dir, _ = source_run
    monkeypatch.chdir(tmp_path)  # the file is named relative to the working directory
    load_trained_model(str(source_dir))[0].save("source.keras")
    overrides = ["model.init_checkpoint=source.keras", "model.freeze_backbone=true"]
    config = load_config(write_experiment(tmp_path, data_dir), overrides)
    assert config.model.init_modules == ("backbone",)  # the default
    keras.utils.set_random_seed(1)
    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        model = build_model(config)
    assert isinstance(model.weights[0].value, tf.distribute.DistributedValues)
    assert model.backbone.trainable_weights == []  # frozen variables are filled all the same
    fresh = values(model)
    source_model = load_init_source(config.model.init_checkpoint)
    source = values(source_model)

    report = initialize_from(model, source_model, config.model.init_modules)
    now = values(model)
    backbone = [path for path in now if path.startswith("backbone/")]
    head = [path for path in now if path not in backbone]
    assert report.loaded == tuple(backbone) and report.reinitialised == ()
    assert not np.array_equal(fresh["backbone/stem_conv/kernel"], source["backbone/stem_conv/kernel"])
    for path in backbone:
        np.testing.assert_array_equal(now[path], source[path], err_msg=path)
    for path in head:
        np.testing.assert_array_equal(now[path], fresh[path], err_msg=path)
    kernels = [path for path in head if path.endswith("kernel")]
    assert kernels and all(not np.array_equal(now[path], source[path]) for path in kernels)


@pytest.mark.parametrize(
    ("source_arguments", "modules", "expected"),
    [
        (  # block 2 a bottleneck (3 convs) instead of a residual block (2 convs)
            {"block_specs": [SMALL_BLOCK_SPECS[0], [5, "bottleneck", [1, 2], False], *SMALL_BLOCK_SPECS[2:]]},
            ("backbone",),
            r"20 weights differ \(backbone/block2_r1_3_conv/kernel: only in the checkpoint; .*; \.\.\.\)\. "
            r"The experiment's model.backbone must match",
        ),
        (
            {"num_filters": 16},
            ("all",),
            r"box_net_conv1/kernel: shape \(3, 3, 32, 32\) here, \(3, 3, 32, 16\) in the checkpoint; .*"
            r"The experiment.s model.backbone and model.detector \(or model.classifier\) must match",
        ),
    ],
)
def test_another_architecture_is_refused_listing_the_weights_and_nothing_is_assigned(
    source_arguments, modules, expected
):
    model = tiny_detector(num_classes=3)
    before = values(model)
    with pytest.raises(
        ConfigError, match=rf"^model.init_checkpoint: the checkpoint does not fit .*{expected}"
    ):
        initialize_from(model, tiny_detector(num_classes=3, **source_arguments), modules)
    for path, value in values(model).items():
        np.testing.assert_array_equal(value, before[path], err_msg=path)


@pytest.mark.parametrize("modules", ["[head]", "[backbone, all]", "[]"])
def test_init_modules_other_than_backbone_or_all_is_refused_naming_the_key(modules):
    with pytest.raises(ConfigError, match=r"^model.init_modules: .* not one of the allowed values"):
        load_config("synthetic", [f"model.init_modules={modules}"])


def test_init_modules_takes_a_plain_string():
    assert load_config("synthetic", ["model.init_modules=all"]).model.init_modules == ("all",)


def test_a_name_that_is_no_file_or_directory_is_asked_of_the_presets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    asked = []

    def preset_model(name):
        asked.append(name)
        if name != "retinanet_spinenet49_coco":
            raise ConfigError(f"unknown preset {name!r};\n known presets: retinanet_spinenet49_coco.")
        return "the preset's model"

    monkeypatch.setattr(PRESET_MODEL, preset_model)
    assert load_init_source("retinanet_spinenet49_coco") == "the preset's model"
    with pytest.raises(ConfigError) as error:
        load_init_source("runs/typo")
    assert asked == ["retinanet_spinenet49_coco", "runs/typo"]
    assert str(error.value) == (
        f"model.init_checkpoint: 'runs/typo' is not a file or directory (relative to {tmp_path}), and as a "
        "preset name: unknown preset 'runs/typo'; known presets: retinanet_spinenet49_coco."
    )


def test_the_fine_tuning_recipe_loads_and_builds_the_model_of_the_preset_it_starts_from():
    recipe = load_config("finetune_custom")
    assert recipe.model.init_checkpoint == "retinanet_spinenet49_coco" and recipe.model.init_modules == (
        "all",
    )
    preset = get_preset(recipe.model.init_checkpoint)
    published = load_config(preset.experiment, preset.overrides)
    assert recipe.model.backbone == published.model.backbone
    assert recipe.model.detector == published.model.detector
    assert recipe.data.image_size == preset.image_size == 640
    assert recipe.model.num_classes != published.model.num_classes  # a CHANGE ME placeholder: 4


@pytest.mark.parametrize(
    ("name", "make", "expected"),
    [
        ("runs/empty", lambda path: path.mkdir(parents=True), "is a directory but not a training run"),
        ("model.weights.h5", lambda path: path.write_text("x"), r"is a file but not a \.keras model"),
    ],
)
def test_a_file_or_directory_that_cannot_be_a_source_is_refused_without_asking_the_presets(
    name, make, expected, tmp_path, monkeypatch
):
    monkeypatch.setattr(PRESET_MODEL, lambda name: pytest.fail(f"the presets were asked for {name}"))
    monkeypatch.chdir(tmp_path)
    make(tmp_path / name)
    with pytest.raises(ConfigError, match=rf"^model.init_checkpoint: {name} {expected}"):
        load_init_source(name)


# slow: 49 s on 2 AVX2-only cores
@pytest.mark.slow
def test_a_mask_rcnn_initialises_from_a_mask_rcnn_or_a_detectors_backbone():
    """Paths reach into the networks a Mask R-CNN is made of: [all] copies every weight of
    another Mask R-CNN; [backbone] takes a RetinaNet's backbone and leaves the heads alone."""
    from tests.helpers import tiny_mask_rcnn

    model, source = tiny_mask_rcnn(), tiny_mask_rcnn(seed=3)
    for weight in source.weights:
        if weight.dtype == "float32":
            weight.assign(weight + 0.5)
    assert len(named_weights(model)) == len(model.weights)  # one path per weight, none lost
    initialize_from(model, source, ("all",))
    assert all(np.array_equal(values(model)[path], value) for path, value in values(source).items())

    fresh, retinanet = tiny_mask_rcnn(), tiny_detector()
    heads_before = {path: value for path, value in values(fresh).items() if not path.startswith("backbone/")}
    initialize_from(fresh, retinanet, ("backbone",))
    after = values(fresh)
    for path, value in values(retinanet).items():
        if path.startswith("backbone/"):
            np.testing.assert_array_equal(after[path], value)
    assert all(np.array_equal(after[path], value) for path, value in heads_before.items())
