"""The model code runs unchanged on the JAX backend and computes the same function."""

import json
import os
import subprocess
import sys

import numpy as np

from spinenet_tf import SpineNet

JAX_SCRIPT = """
import json, sys
sys.modules["tensorflow"] = None  # model code must not need TensorFlow
import numpy as np
import keras
from spinenet_tf import SpineNet
assert keras.backend.backend() == "jax"
config, weights, inputs, out = sys.argv[1:]
model = SpineNet.from_config(json.loads(config))
model.load_weights(weights)
x = np.load(inputs)
eager = model(x, training=False)
jitted = model.predict(x, batch_size=2, verbose=0)
np.savez(out, **{k: np.asarray(v) for k, v in eager.items()}, **{"jit_" + k: v for k, v in jitted.items()})
"""


def test_same_outputs_on_jax_as_on_tensorflow(tmp_path):
    model = SpineNet(
        "49", filter_size_scale=0.25, endpoints_num_filters=16, activation="swish", image_shape=(128, 256, 3)
    )
    x = np.random.default_rng(1).uniform(-1, 1, (2, 128, 256, 3)).astype("float32")
    model(x, training=True)  # move BN statistics away from their initial values
    expected = model(x, training=False)
    model.save_weights(tmp_path / "w.weights.h5")
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            JAX_SCRIPT,
            json.dumps(model.get_config()),
            str(tmp_path / "w.weights.h5"),
            str(tmp_path / "x.npy"),
            str(tmp_path / "out.npz"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = np.load(tmp_path / "out.npz")
    for name, value in expected.items():
        np.testing.assert_allclose(outputs[name], value.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(outputs["jit_" + name], value.numpy(), rtol=1e-4, atol=1e-4)


def test_detection_ops_pass_their_hand_computed_cases_on_jax():
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-n",
            "0",
            "tests/detection/test_ops.py",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
