"""ResNet50Backbone: its pyramid contract, its options, and the harness's config and `.keras` round trips."""

import keras
import numpy as np

from spinenet_tf import ResNet50Backbone
from tests.test_case import run_saving_test, run_serialization_test


def images(height, width, batch=1, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (batch, height, width, 3)).astype("float32")


def batch_norms(model):
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def test_pyramid_matches_its_declared_strides_and_channels():
    model = ResNet50Backbone(image_shape=(64, 96, 3))
    features = model(images(64, 96), training=False)
    assert sorted(features) == ["P3", "P4", "P5"]
    assert model.pyramid_channels == {"P3": 512, "P4": 1024, "P5": 2048}
    for name, feature in features.items():
        stride = model.pyramid_strides[name]
        assert tuple(feature.shape) == (1, 64 // stride, 96 // stride, model.pyramid_channels[name])
    assert model.size_multiple == 32 == max(model.pyramid_strides.values())
    # The defaults: ResNet v1.5 (stride on the 3x3 conv), batch norm per replica.
    assert model.get_layer("conv3_block1_1_conv").strides == (1, 1)
    assert model.get_layer("conv3_block1_2_conv").strides == (2, 2)
    assert not any(norm.synchronized for norm in batch_norms(model))


def test_config_and_keras_file_round_trip_keep_the_options(tmp_path):
    model = ResNet50Backbone(image_shape=(64, 64, 3), stride_in_1x1=True, sync_batch_norm=True, name="r50")
    run_serialization_test(model)
    restored = run_saving_test(model, images(64, 64, batch=2), tmp_path)
    assert restored.name == "r50"
    assert restored.get_layer("conv3_block1_1_conv").strides == (2, 2)  # v1: stride on the 1x1 conv
    assert restored.get_layer("conv3_block1_2_conv").strides == (1, 1)
    assert all(norm.synchronized for norm in batch_norms(restored))
