"""Shared checks that every model of the project gets (keras-hub style harness)."""

import json

import keras
import numpy as np


def assert_allclose_tree(actual, expected, atol=1e-5, rtol=1e-5):
    """The same structure (dict keys included) with close leaves."""
    keras.tree.assert_same_structure(actual, expected)
    for a, e in zip(keras.tree.flatten(actual), keras.tree.flatten(expected)):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(e), atol=atol, rtol=rtol
        )


def _weight_shapes(model):
    return [tuple(weight.shape) for weight in model.weights]


def _as_json(value):
    """`value` after a trip through JSON, as a `.keras` file stores it (tuples come back as lists)."""
    return json.loads(json.dumps(value))


def run_serialization_test(model):
    """get_config -> from_config, and the serialised model through JSON, rebuild an equal model.

    Equal: the same config and the same weight shapes, so that an argument that get_config
    drops, or that the constructor ignores, shows in one or the other.
    """
    config = model.get_config()
    clone = type(model).from_config(config)
    assert clone.get_config() == config
    assert _weight_shapes(clone) == _weight_shapes(model)
    revived = keras.saving.deserialize_keras_object(_as_json(keras.saving.serialize_keras_object(model)))
    assert type(revived) is type(model)
    assert _as_json(revived.get_config()) == _as_json(config)
    assert _weight_shapes(revived) == _weight_shapes(model)


def perturb_float_weights(model, seed=0):
    """Scales every float weight by 0.9..1.1 and adds 0..0.01, so that no weight keeps the value a
    fresh model starts with (BN's moving statistics start at 0 and 1, biases at 0)."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        if "float" in keras.backend.standardize_dtype(weight.dtype):
            value = keras.ops.convert_to_numpy(weight)
            noise = value * rng.uniform(0.9, 1.1, value.shape) + rng.uniform(0, 0.01, value.shape)
            weight.assign(noise.astype(value.dtype))


def run_saving_test(model, inputs, tmp_path):
    """A `.keras` file reloads with keras.saving.load_model with identical weights and outputs;
    returns the reloaded model.

    The model's float weights are perturbed first: a reload that drops a weight, or builds
    one afresh, then shows even where a fresh value is a constant (BN statistics, biases).
    """
    perturb_float_weights(model)
    expected = model(inputs, training=False)
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored) is type(model)
    assert [weight.path for weight in restored.weights] == [weight.path for weight in model.weights]
    for loaded, saved in zip(restored.weights, model.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded), keras.ops.convert_to_numpy(saved))
    assert_allclose_tree(restored(inputs, training=False), expected, atol=0, rtol=0)
    return restored


def run_precision_test(build_model, inputs, policy, output_dtype=None):
    """Builds and runs under a mixed policy: low-precision compute, float32 variables and BN state.

    Outputs are in the compute dtype unless the model states another (`output_dtype`: a
    detector's raw outputs are float32 for its loss and decoding)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model = build_model()
        outputs = model(inputs, training=True)
        expected = output_dtype or policy.split("_")[1]
        for output in keras.tree.flatten(outputs):
            assert keras.backend.standardize_dtype(output.dtype) == expected
            assert np.isfinite(keras.ops.convert_to_numpy(keras.ops.cast(output, "float32"))).all()
        assert all(weight.dtype == "float32" for weight in model.trainable_weights)
        # Found by variable path, so that the BN layers of nested models (a detector's backbone) count.
        statistics = [
            weight
            for weight in model.non_trainable_weights
            if weight.path.endswith(("moving_mean", "moving_variance"))
        ]
        assert statistics, "no batch-norm statistics found"
        assert all(weight.dtype == "float32" for weight in statistics)
        return model
    finally:
        keras.config.set_dtype_policy(previous)
