"""Shared checks that every model of the project gets (keras-hub style harness)."""

import keras
import numpy as np


def assert_allclose_tree(actual, expected, atol=1e-5, rtol=1e-5):
    actual_flat, expected_flat = keras.tree.flatten(actual), keras.tree.flatten(expected)
    assert len(actual_flat) == len(expected_flat)
    for a, e in zip(actual_flat, expected_flat):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(e), atol=atol, rtol=rtol
        )


def run_serialization_test(model):
    """get_config -> from_config, and a JSON round trip, rebuild an equal model."""
    config = model.get_config()
    clone = type(model).from_config(config)
    assert clone.get_config() == config
    assert len(clone.weights) == len(model.weights)
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert type(revived) is type(model)
    assert revived.get_config() == config


def run_saving_test(model, inputs, tmp_path):
    """A `.keras` file reloads with keras.saving.load_model and gives identical outputs."""
    expected = model(inputs, training=False)
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored) is type(model)
    assert_allclose_tree(restored(inputs, training=False), expected, atol=0, rtol=0)


def run_precision_test(build_model, inputs, policy):
    """Builds and runs under a mixed policy: low-precision compute, float32 BN state."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model = build_model()
        outputs = model(inputs, training=True)
        compute = policy.split("_")[1]
        for output in keras.tree.flatten(outputs):
            assert keras.backend.standardize_dtype(output.dtype) == compute
            assert np.isfinite(keras.ops.convert_to_numpy(keras.ops.cast(output, "float32"))).all()
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                assert layer.moving_mean.dtype == "float32"
                assert layer.moving_variance.dtype == "float32"
        return model
    finally:
        keras.config.set_dtype_policy(previous)
