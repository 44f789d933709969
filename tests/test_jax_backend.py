"""The model code runs unchanged on the JAX backend and computes the same function."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras.ops import convert_to_numpy as keras_numpy

from spinenet_tf import ImageClassifier, SpineNet
from tests.helpers import run_on_jax_without_tensorflow

JAX_SCRIPT = """
import json, sys
import jax
import numpy as np
import keras

import spinenet_tf  # registers the models for deserialisation
assert keras.backend.backend() == "jax"
serialized, weights, inputs, out = sys.argv[1:]
model = keras.saving.deserialize_keras_object(json.loads(serialized))
model.load_weights(weights)
x = np.load(inputs)
eager = model(x, training=False)
trainable = [v.value for v in model.trainable_variables]
non_trainable = [v.value for v in model.non_trainable_variables]
call = jax.jit(lambda t, n, x: model.stateless_call(t, n, x, training=False))
jitted, _ = call(trainable, non_trainable, x)
if not isinstance(eager, dict):
    eager, jitted = {"out": eager}, {"out": jitted}
np.savez(out, **{k: np.asarray(v) for k, v in eager.items()}, **{"jit_" + k: v for k, v in jitted.items()})
"""


def _tiny_spinenet(image_shape):
    return SpineNet(
        "49", filter_size_scale=0.25, endpoints_num_filters=16, activation="swish", image_shape=image_shape
    )


@pytest.mark.parametrize(
    "build, image_shape",
    [
        (_tiny_spinenet, (128, 256, 3)),
        (_tiny_spinenet, (100, 150, 3)),  # not multiples of 128: resizes between levels
        (lambda shape: ImageClassifier(_tiny_spinenet(shape), 5, embedding_filters=8), (96, 96, 3)),
    ],
    ids=["spinenet", "spinenet-odd-size", "classifier"],
)
def test_same_outputs_on_jax_as_on_tensorflow(tmp_path, build, image_shape):
    model = build(image_shape)
    x = np.random.default_rng(1).uniform(-1, 1, (2, *image_shape)).astype("float32")
    model(x, training=True)  # move BN statistics away from their initial values
    expected = model(x, training=False)
    expected = expected if isinstance(expected, dict) else {"out": expected}
    model.save_weights(tmp_path / "w.weights.h5")
    np.save(tmp_path / "x.npy", x)
    result = run_on_jax_without_tensorflow(  # model code must not need TensorFlow
        JAX_SCRIPT,
        json.dumps(keras.saving.serialize_keras_object(model)),
        tmp_path / "w.weights.h5",
        tmp_path / "x.npy",
        tmp_path / "out.npz",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = np.load(tmp_path / "out.npz")
    for name, value in expected.items():
        np.testing.assert_allclose(outputs[name], keras_numpy(value), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(outputs["jit_" + name], keras_numpy(value), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "test_file",
    [
        "tests/detection/test_ops.py",
        pytest.param("tests/detection/test_two_stage_ops.py", marks=pytest.mark.slow),  # 50 s of compiles
    ],
)
def test_detection_ops_pass_their_hand_computed_cases_on_jax(test_file):
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
            test_file,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


MASK_RCNN_JAX_SCRIPT = """
import json, sys
import numpy as np
import keras
from spinenet_tf import MaskRCNN
assert keras.backend.backend() == "jax"
config, weights, inputs, labels, out = sys.argv[1:]
model = MaskRCNN.from_config(json.loads(config))
model.load_weights(weights)
x = np.load(inputs)
detections = model(x, training=False)
statistics = [w for w in model.non_trainable_weights if w.path.endswith("moving_mean")]
before = [np.array(w.value) for w in statistics]
model.compile(optimizer=keras.optimizers.Adam(1e-3))
loss = model.train_on_batch(x, dict(np.load(labels)))
moved = sum(not np.allclose(np.array(w.value), b) for w, b in zip(statistics, before))
np.savez(out, loss=loss, moved=moved, **{k: np.asarray(v) for k, v in detections.items()})
"""


@pytest.mark.slow  # tracing the two-stage training step under JAX: 60 s
def test_mask_rcnn_detects_alike_and_trains_on_jax(tmp_path):
    """The same detections and masks as on TensorFlow; a training step updates the batch-norm
    statistics of every network (the second stage runs inside `call`, also in training)."""
    from spinenet_tf.layers.image_converter import normalise_image
    from tests.helpers import synthetic_instances, tiny_mask_rcnn
    from tests.test_case import perturb_float_weights

    photos, labels, _ = synthetic_instances(2)
    x = keras_numpy(normalise_image(photos))
    model = tiny_mask_rcnn()
    perturb_float_weights(model)
    expected = model(x, training=False)
    model.save_weights(tmp_path / "w.weights.h5")
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "labels.npz", **labels)
    arguments = [json.dumps(model.get_config()), tmp_path / "w.weights.h5", tmp_path / "x.npy"]
    arguments += [tmp_path / "labels.npz", tmp_path / "out.npz"]
    result = run_on_jax_without_tensorflow(MASK_RCNN_JAX_SCRIPT, *arguments, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = np.load(tmp_path / "out.npz")
    count = int(expected["num_detections"][0])
    assert count > 0 and (outputs["num_detections"] == keras_numpy(expected["num_detections"])).all()
    for name in ("boxes", "scores", "classes", "masks"):
        np.testing.assert_allclose(outputs[name], keras_numpy(expected[name]), rtol=1e-3, atol=1e-3)
    assert np.isfinite(outputs["loss"])
    assert int(outputs["moved"]) > 20  # backbone, RPN, box head and mask head statistics
