"""optimize_for_inference: the same outputs as the model, from a graph without what only
training needs, on TensorFlow and on JAX."""

import json

import keras
import numpy as np
import pytest

from spinenet_tf import RetinaNet, SpineNetMobile, optimize_for_inference, profile
from spinenet_tf.inference import mixed_bfloat16_copy
from spinenet_tf.layers.resample import ResizeToLevel
from spinenet_tf.layers.stochastic_depth import StochasticDepth
from tests.helpers import (
    SMALL_BLOCK_SPECS,
    random_image,
    run_on_jax_without_tensorflow,
    tiny_backbone,
    tiny_classifier,
    tiny_detector,
    tiny_mask_rcnn,
)
from tests.test_case import perturb_float_weights

# |optimised - original| / max |original| of every output: the bar. Folding reorders
# float32 arithmetic only (measured 1e-6).
TOLERANCE = 1e-4


def tiny_mobile_detector():
    backbone = SpineNetMobile(
        "49XS",
        stochastic_depth_rate=0.2,
        image_shape=(128, 128, 3),
        filter_size_scale=0.25,
        endpoints_num_filters=16,
    )
    return RetinaNet(backbone, 3, num_convs=2, num_filters=16, use_separable_conv=True, activation="swish")


MODELS = {
    "retinanet": (tiny_detector, 128),
    "classifier": (lambda: tiny_classifier(dropout=0.2, embedding_filters=16), 96),
    "mobile-retinanet": (tiny_mobile_detector, 128),
    # 100 x 150: resizes (ResizeToLevel) between levels instead of plain up-sampling.
    "spinenet-odd-size": (lambda: tiny_backbone(size=None), (100, 150)),
}


def source(layer):
    """The layer whose output `layer` reads (its first input)."""
    return layer._inbound_nodes[0].input_tensors[0]._keras_history.operation


def relative_error(actual, expected):
    actual, expected = keras.ops.convert_to_numpy(actual), keras.ops.convert_to_numpy(expected)
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def layers_of(model, layer_type):
    """The layers of `type` in `model` and its nested models."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += layers_of(layer, layer_type)
        elif isinstance(layer, layer_type):
            found.append(layer)
    return found


@pytest.mark.parametrize("name", MODELS)
def test_same_outputs_and_class_without_batch_norms_outside_shared_convs(name):
    build, size = MODELS[name]
    height, width = (size, size) if isinstance(size, int) else size
    keras.utils.set_random_seed(0)
    model = build()
    perturb_float_weights(model)  # BN statistics, scales and offsets away from the identity
    x = np.random.default_rng(1).uniform(-2, 2, (2, height, width, 3)).astype("float32")
    expected = model(x, training=False)
    weights_before = [keras.ops.convert_to_numpy(w) for w in model.weights]

    optimized = optimize_for_inference(model)

    keras.tree.assert_same_structure(optimized(x, training=False), expected)
    for actual, wanted in zip(keras.tree.flatten(optimized(x, training=False)), keras.tree.flatten(expected)):
        assert relative_error(actual, wanted) <= TOLERANCE
    assert type(optimized) is type(model) and optimized.get_config() == model.get_config()
    for before, weight in zip(weights_before, model.weights):  # the original is left as it was
        np.testing.assert_array_equal(before, keras.ops.convert_to_numpy(weight))
    backbone = getattr(optimized, "backbone", optimized)
    assert backbone is not getattr(model, "backbone", model) and type(backbone) is type(
        getattr(model, "backbone", model)
    )
    # Every batch norm after an unshared conv is gone from the backbone; so are the identities.
    assert not layers_of(backbone, keras.layers.BatchNormalization)
    assert not layers_of(optimized, (StochasticDepth, keras.layers.Dropout))
    convs = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)
    activations = layers_of(backbone, keras.layers.Activation)
    assert not [layer.name for layer in activations if isinstance(source(layer), convs)]
    assert len(optimized.weights) < len(model.weights)


def test_shared_head_convs_keep_their_per_level_norms_and_pointwise_convs_move_before_upsampling():
    model = tiny_detector()
    optimized = optimize_for_inference(model)
    # RetinaNet's head: one conv per depth for all levels, a batch norm per level, kept.
    assert len(layers_of(optimized, keras.layers.BatchNormalization)) == len(
        layers_of(model, keras.layers.BatchNormalization)
    ) - len(layers_of(model.backbone, keras.layers.BatchNormalization))
    # Each up-sampling resampling's 1x1 match conv now reads the coarse map: fewer multiply-adds.
    upsamplings = layers_of(optimized.backbone, keras.layers.UpSampling2D)
    assert upsamplings
    assert all(source(layer).name.endswith("_match_conv") for layer in upsamplings)
    # Each conv now runs on the coarse pixels: (fine - coarse pixels) x in x out MACs less.
    saved = 0
    for layer in upsamplings:
        node = layer._inbound_nodes[0]
        coarse, fine = node.input_tensors[0].shape, node.outputs[0].shape
        saved += (fine[1] * fine[2] - coarse[1] * coarse[2]) * source(layer).kernel.shape[2] * fine[3]
    before, after = (profile(m, (128, 128, 3)).macs for m in (model, optimized))
    assert before - after == saved > 0


def test_resize_between_levels_moves_after_the_match_conv_too():
    backbone = tiny_backbone(size=None)
    optimized = optimize_for_inference(backbone)
    resizes = layers_of(optimized, ResizeToLevel)
    assert resizes
    sources = {source(resize).name for resize in resizes}
    assert all(name.endswith("_match_conv") for name in sources), sources


def test_mask_rcnn_predicts_the_same_detections():
    keras.utils.set_random_seed(0)
    model = tiny_mask_rcnn()
    perturb_float_weights(model)
    photos = [random_image(100, 130, seed=1), random_image(128, 90, seed=2)]
    expected = model.predict(photos, verbose=0)
    optimized = optimize_for_inference(model)
    actual = optimized.predict(photos, verbose=0)
    np.testing.assert_array_equal(actual["num_detections"], expected["num_detections"])
    np.testing.assert_array_equal(actual["classes"], expected["classes"])
    for key in ("boxes", "scores", "masks"):
        assert relative_error(actual[key], expected[key]) <= TOLERANCE, key
    assert not layers_of(optimized.backbone, keras.layers.BatchNormalization)


JAX_SCRIPT = """
import json, sys
import jax
import numpy as np
import keras

from spinenet_tf import RetinaNet, optimize_for_inference
assert keras.backend.backend() == "jax"
config, weights, inputs, out = sys.argv[1:]
model = RetinaNet.from_config(json.loads(config))
model.load_weights(weights)
optimized = optimize_for_inference(model)
x = np.load(inputs)
trainable = [v.value for v in optimized.trainable_variables]
non_trainable = [v.value for v in optimized.non_trainable_variables]
call = jax.jit(lambda t, n, x: optimized.stateless_call(t, n, x, training=False)[0])
jitted = call(trainable, non_trainable, x)
batch_norms = sum(isinstance(layer, keras.layers.BatchNormalization) for layer in optimized.backbone.layers)
np.savez(out, batch_norms=batch_norms, **{k: np.asarray(v) for k, v in jitted.items()})
"""


def test_same_outputs_on_jax_as_the_original_on_tensorflow(tmp_path):
    """Folded on JAX (TensorFlow blocked) and jitted, the copy computes the original's outputs."""
    model = tiny_detector(block_specs=SMALL_BLOCK_SPECS)
    perturb_float_weights(model)
    x = np.random.default_rng(1).uniform(-2, 2, (2, 128, 128, 3)).astype("float32")
    expected = model(x, training=False)
    model.save_weights(tmp_path / "w.weights.h5")
    np.save(tmp_path / "x.npy", x)
    result = run_on_jax_without_tensorflow(
        JAX_SCRIPT,
        json.dumps(model.get_config()),
        tmp_path / "w.weights.h5",
        tmp_path / "x.npy",
        tmp_path / "out.npz",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = np.load(tmp_path / "out.npz")
    assert int(outputs["batch_norms"]) == 0
    for name, value in expected.items():
        assert relative_error(outputs[name], value) <= TOLERANCE, name


def test_mixed_bfloat16_copy_computes_in_bfloat16_from_the_same_weights():
    """The bf16 SavedModel's model: every layer computes in bfloat16, from the
    float32 variables of the model, and gives its outputs to bfloat16's precision."""
    model = tiny_detector()
    x = np.random.default_rng(0).uniform(-1, 1, (1, 128, 128, 3)).astype("float32")
    copy = mixed_bfloat16_copy(model)
    convs = [layer for layer in copy.backbone.layers + copy.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs and all(layer.compute_dtype == "bfloat16" for layer in convs)
    for ours, theirs in zip(copy.weights, model.weights):
        assert ours.dtype == theirs.dtype == "float32"
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(theirs))
    expected = keras.ops.convert_to_numpy(model(x)["box_deltas"])
    actual = keras.ops.convert_to_numpy(copy(x)["box_deltas"]).astype("float32")
    assert 0 < np.abs(actual - expected).max() <= 0.05 * np.abs(expected).max()
