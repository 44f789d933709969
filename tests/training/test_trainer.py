import keras
import numpy as np
import pytest

from spinenet_tf.training.config import load_config
from spinenet_tf.training.schedule import WarmupStepDecay
from spinenet_tf.training.trainer import build_model, make_optimizer
from tests.helpers import SMALL_BLOCK_SPECS, synthetic_batch


def test_schedule_warms_up_linearly_then_steps_down():
    schedule = WarmupStepDecay(0.4, warmup_steps=100, warmup_start_factor=0.1, decay_steps=(200, 300))
    rates = [float(schedule(step)) for step in (0, 50, 100, 199, 200, 300, 1000)]
    np.testing.assert_allclose(rates, [0.04, 0.22, 0.4, 0.4, 0.04, 0.004, 0.004], rtol=1e-5)
    assert WarmupStepDecay(**schedule.get_config()).get_config() == schedule.get_config()


def test_learning_rate_follows_the_global_batch():
    config = load_config("synthetic", ["train.batch_size=32", "train.optimizer.warmup_steps=0"])
    optimizer = make_optimizer(config)
    base = config.train.optimizer.learning_rate
    assert float(optimizer.learning_rate) == pytest.approx(base * 32 / config.train.optimizer.base_batch_size)


def test_freeze_backbone_freezes_weights_and_batch_norm_statistics():
    overrides = [
        "model.freeze_backbone=true",
        "data.image_size=128",
        "model.detector.num_filters=16",
        f"model.backbone.block_specs={SMALL_BLOCK_SPECS}",
        "model.backbone.endpoints_num_filters=16",
    ]
    config = load_config("synthetic", overrides)
    model = build_model(config)
    model.compile(optimizer=make_optimizer(config))
    assert model.backbone.trainable_weights == [] and model.trainable_weights
    before = [w.numpy().copy() for w in model.backbone.weights]
    head_before = [w.numpy().copy() for w in model.trainable_weights]
    images, labels = synthetic_batch(2)
    model.train_on_batch(images, labels)
    assert all(
        np.array_equal(a, w.numpy()) for a, w in zip(before, model.backbone.weights, strict=True)
    )  # incl. BN moving stats
    trained = zip(head_before, model.trainable_weights, strict=True)
    assert any(not np.array_equal(a, w.numpy()) for a, w in trained)


@pytest.mark.parametrize(
    "backbone", ["{type: spinenet, model_id: '49', filter_size_scale: 0.25}", "{type: resnet50}"]
)
def test_runtime_options_reach_every_backbone_and_the_head(backbone):
    overrides = [f"model.backbone={backbone}", "data.image_size=128", "runtime.sync_batch_norm=true"]
    model = build_model(load_config("synthetic", overrides))
    assert model.backbone.input_shape == (None, 128, 128, 3)
    for part in (model.backbone, model):  # the model's own layers: the head's (and an FPN's)
        norms = [layer for layer in part.layers if isinstance(layer, keras.layers.BatchNormalization)]
        assert norms and all(layer.synchronized for layer in norms), part.name
