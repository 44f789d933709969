import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from spinenet_tf import RetinaNet, SpineNetMobile, build_detector, profile
from spinenet_tf.backbones.spinenet_mobile import spinenet_mobile_size_multiple
from spinenet_tf.block_graph import resolve_block_graph
from spinenet_tf.builders import input_size_multiple
from spinenet_tf.errors import ModelError
from spinenet_tf.export import export_tflite
from spinenet_tf.export.serving import detect_letterboxed, letterbox_uint8
from spinenet_tf.export.tflite import MIN_INT8_RANGE
from spinenet_tf.layers.stochastic_depth import StochasticDepth
from spinenet_tf.published import MOBILE_REFERENCE, mobile_config
from spinenet_tf.specs import MOBILE_BLOCK_TYPES, MOBILE_MODEL_IDS, MOBILE_STEM_BLOCKS
from tests.helpers import random_image, synthetic_batch
from tests.test_case import assert_allclose_tree, run_precision_test, run_saving_test, run_serialization_test

TINY = dict(filter_size_scale=0.25, endpoints_num_filters=16)
# Three output blocks, none at level 7: a quick Mobile SpineNet with outputs P3..P5.
SMALL_BLOCK_SPECS = [[3, "mbconv", [0, 1], True], [4, "mbconv", [1, 2], True], [5, "mbconv", [2, 3], True]]
FIXTURE = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "mobile" / "model_garden_49.npz"
# Our names of the parts of Model Garden's InvertedBottleneckBlock (block "<node>_r1_...").
BLOCK_PARTS = {
    "conv0": "expand_conv",
    "norm0": "expand_bn",
    "conv1": "depthwise_conv",
    "norm1": "depthwise_bn",
    "se_reduce": "se_reduce",
    "se_expand": "se_expand",
    "conv2": "project_conv",
    "norm2": "project_bn",
}


def images(height, width, batch=2, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (batch, height, width, 3)).astype("float32")


def layers_of_type(model, layer_type):
    return {layer.name: layer for layer in model.layers if type(layer) is layer_type}


def test_every_model_id_has_a_model_garden_reference():
    assert set(MOBILE_MODEL_IDS) == set(MOBILE_REFERENCE) == {"49", "49S", "49XS"}


@pytest.mark.parametrize("model_id", MOBILE_MODEL_IDS)
def test_model_id_matches_model_garden_params(model_id):
    # Parameter counts do not depend on the input size: the detector is built for dynamic input.
    reference = MOBILE_REFERENCE[model_id]
    detector = build_detector(mobile_config(model_id))
    assert profile(detector.backbone, (128, 128, 3)).trainable_params == reference["backbone_params"]
    assert profile(detector, (128, 128, 3)).trainable_params == reference["params"]
    assert detector.backbone.pyramid_channels["P3"] == {"49": 48, "49S": 40, "49XS": 24}[model_id]


def test_multiply_adds_match_the_model_zoo():
    detector = build_detector(mobile_config("49"))
    size = MOBILE_REFERENCE["49"]["size"]
    assert round(profile(detector, (size, size, 3)).gmacs, 1) == MOBILE_REFERENCE["49"]["gmacs"]


@pytest.mark.parametrize("height, width", [(128, 256), (256, 128)])
def test_pyramid_shapes_strides_and_channels(height, width):
    model = SpineNetMobile("49S", image_shape=(height, width, 3), **TINY)
    features = model(images(height, width, batch=1))
    assert sorted(features) == ["P3", "P4", "P5", "P6", "P7"]
    for name, feature in features.items():
        stride = model.pyramid_strides[name]
        assert stride == 2 ** int(name[1:])
        assert tuple(feature.shape) == (1, height // stride, width // stride, model.pyramid_channels[name])
    assert set(model.pyramid_channels.values()) == {16}


def test_dynamic_input_builds_the_same_network_as_static():
    static = SpineNetMobile(image_shape=(128, 128, 3), **TINY)
    dynamic = SpineNetMobile(**TINY)
    assert [w.path for w in dynamic.weights] == [w.path for w in static.weights]
    dynamic.set_weights(static.get_weights())
    x = images(128, 128)
    assert_allclose_tree(dynamic(x), static(x), atol=1e-6, rtol=1e-6)
    # The level-5 output block (14th) also sums the 11th, which no block consumed.
    assert len(dynamic.get_layer("block14_sum").input) == 3


def test_blocks_follow_model_gardens_mbconv():
    model = SpineNetMobile(image_shape=(128, 128, 3), **TINY)  # widths 2 (stem conv), 4, 6, 10, 20, 28
    assert model.get_layer("stem_conv").filters == 2
    # The stride-1 level-1 stem block expands its 2-channel input 6x; SE on the input width.
    assert model.get_layer("stem1_r1_expand_conv").filters == 12
    assert model.get_layer("stem1_r1_se_reduce").filters == 1  # max(1, int(0.2 * 2))
    assert model.get_layer("stem1_r1_se_expand").filters == 12
    assert model.get_layer("stem2_r1_depthwise_conv").strides == (2, 2)
    assert model.get_layer("block12_r1_se_reduce").filters == int(0.2 * 20)
    assert model.get_layer("block12_r1_project_conv").filters == 20
    # A shortcut only where width and stride are kept: not in the stem, in every other block.
    adds = layers_of_type(model, keras.layers.Add)
    assert not any(name.startswith("stem") for name in adds)
    assert {f"block{n}_r1_add" for n in range(1, 17)} <= set(adds)
    # Resampling: no reduction, one 3x3/2 depthwise per level down (block 3, level 4, from the
    # level-2 stem block), nearest up-sampling by the level factor (block 10, level 5, from
    # block 9, level 7), then a 1x1 conv to the target's width.
    names = {layer.name for layer in model.layers}
    assert {"block3_from_stem2_down1_conv", "block3_from_stem2_down2_conv"} <= names
    assert "block3_from_stem2_down3_conv" not in names
    assert not any(name.endswith("_reduce_conv") for name in names)
    assert model.get_layer("block10_from_block9_up").size == (4, 4)
    assert model.get_layer("block10_from_block9_match_conv").filters == 28
    gates = [layer for layer in model.layers if layer.name.endswith("_se_gate")]
    assert gates and {layer.activation.__name__ for layer in gates} == {"hard_sigmoid"}


def test_size_multiple_is_the_coarsest_level_for_the_config_check():
    assert SpineNetMobile.size_multiple == 128
    assert input_size_multiple({"type": "spinenet_mobile", "model_id": "49XS"}) == 128
    for min_level, max_level in [(3, 7), (3, 5), (4, 6)]:
        assert spinenet_mobile_size_multiple(None, min_level, max_level) == 128
    assert spinenet_mobile_size_multiple(SMALL_BLOCK_SPECS, 3, 5) == 32
    model = SpineNetMobile(block_specs=SMALL_BLOCK_SPECS, max_level=5, image_shape=(96, 96, 3), **TINY)
    assert model.size_multiple == 32 and model(images(96, 96))["P5"].shape == (2, 3, 3, 16)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"model_id": "96"}, "Unknown SpineNetMobile model_id '96'"),
        ({"activation": "gelu"}, "Unknown activation 'gelu'"),
        ({"filter_size_scale": 0}, "filter_size_scale must be a positive number"),
        ({"expand_ratio": 0}, "expand_ratio must be an integer >= 1"),
        ({"se_ratio": 1.5}, r"se_ratio must be in \[0, 1\]"),
        ({"stochastic_depth_rate": 1.0}, r"stochastic_depth_rate must be in \[0, 1\)"),
        ({"image_shape": (192, 128, 3)}, "Input height 192 is not a multiple of 128"),
        ({"block_specs": [[3, "bottleneck", [0, 1], True]]}, "unknown block type 'bottleneck'"),
        ({"max_level": 8}, "min_level=3, max_level=8"),
    ],
)
def test_invalid_configs_name_the_problem(kwargs, message):
    with pytest.raises(ModelError, match=message):
        SpineNetMobile(**kwargs)


def test_options_reach_the_layers():
    model = SpineNetMobile(
        norm_momentum=0.9,
        norm_epsilon=1e-4,
        sync_batch_norm=True,
        kernel_regularizer=3e-5,
        expand_ratio=1,
        se_ratio=0.0,
        image_shape=(128, 128, 3),
        **TINY,
    )
    norms = layers_of_type(model, keras.layers.BatchNormalization).values()
    convs = layers_of_type(model, keras.layers.Conv2D).values()
    depthwise = layers_of_type(model, keras.layers.DepthwiseConv2D).values()
    assert all(n.momentum == 0.9 and n.epsilon == 1e-4 and n.synchronized for n in norms)
    assert all(c.kernel_regularizer is not None for c in convs)
    assert depthwise and all(d.depthwise_regularizer is None for d in depthwise)  # as Model Garden
    assert len(model.losses) == len(convs)
    names = {layer.name for layer in model.layers}
    assert not any(name.endswith(("_expand_conv", "_se_scale")) for name in names)
    activations = {
        layer.activation.__name__ for layer in model.layers if isinstance(layer, keras.layers.Activation)
    }
    assert activations == {"silu"}  # swish by default, as the Mobile SpineNet recipes


def test_stochastic_depth_rate_grows_linearly_and_only_changes_training():
    rate = 0.4
    model = SpineNetMobile(stochastic_depth_rate=rate, image_shape=(128, 128, 3), **TINY)
    drop_layers = {layer.name: layer.rate for layer in model.layers if isinstance(layer, StochasticDepth)}
    assert drop_layers["block1_r1_drop_path"] == pytest.approx(rate * 1 / 16)
    assert drop_layers["block16_r1_drop_path"] == pytest.approx(rate * 16 / 16)
    assert not any(name.startswith("stem") for name in drop_layers)
    for layer in model.layers:  # BN in inference mode, so only drop-path can differ
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    x = images(128, 128, batch=4)
    inference = model(x, training=False)
    assert_allclose_tree(model(x, training=False), inference, atol=0, rtol=0)
    trained = model(x, training=True)
    assert not np.allclose(
        keras.ops.convert_to_numpy(trained["P3"]), keras.ops.convert_to_numpy(inference["P3"])
    )


def test_config_and_keras_file_round_trip(tmp_path):
    model = SpineNetMobile(
        "49XS",
        stochastic_depth_rate=0.1,
        kernel_regularizer=1e-4,
        block_repeats=2,
        block_specs=SMALL_BLOCK_SPECS,
        max_level=5,
        image_shape=(128, 128, 3),
        **TINY,
    )
    assert model.get_layer("block3_r2_add")  # the repeat keeps width and stride: a shortcut
    run_serialization_test(model)
    model(images(128, 128, batch=4), training=True)  # BN statistics away from their start
    run_saving_test(model, images(128, 128), tmp_path)


def test_mixed_precision():
    run_precision_test(
        lambda: SpineNetMobile(image_shape=(128, 128, 3), **TINY), images(128, 128), "mixed_bfloat16"
    )


def test_separable_head_has_model_gardens_weights_and_initialisers():
    def backbone():
        return SpineNetMobile(block_specs=SMALL_BLOCK_SPECS, max_level=5, image_shape=(128, 128, 3), **TINY)

    model = RetinaNet(backbone(), 3, max_level=5, num_convs=2, num_filters=8, use_separable_conv=True)
    assert model.get_config()["use_separable_conv"] is True
    tower = model.get_layer("class_net_conv1")
    predict = model.get_layer("class_net_predict")
    assert isinstance(tower, keras.layers.SeparableConv2D) and isinstance(
        predict, keras.layers.SeparableConv2D
    )
    # 3x3 depthwise + pointwise + bias: (9 * 16 + 16 * 8 + 8), then (9 * 8 + 8 * 8 + 8) for conv2.
    assert tower.count_params() == 9 * 16 + 16 * 8 + 8
    assert isinstance(tower.depthwise_initializer, keras.initializers.GlorotUniform)
    assert predict.depthwise_initializer.stddev == predict.pointwise_initializer.stddev == 0.03
    prior = -np.log((1 - 0.01) / 0.01)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(predict.bias), prior, rtol=1e-6)
    plain = RetinaNet(backbone(), 3, max_level=5, num_convs=2, num_filters=8)
    assert type(plain.get_layer("class_net_conv1")) is keras.layers.Conv2D


@pytest.mark.slow  # a fit step and an int8 calibration of a 128 px detector: 90 s of CPU
def test_tiny_mobile_retinanet_trains_with_fit_and_exports_to_int8_tflite(tmp_path):
    keras.utils.set_random_seed(0)
    model = RetinaNet(
        SpineNetMobile("49XS", stochastic_depth_rate=0.2, image_shape=(128, 128, 3), **TINY),
        3,
        num_convs=2,
        num_filters=16,
        use_separable_conv=True,
        activation="swish",
        score_threshold=0.0,
    )
    x, y = synthetic_batch(4)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    layers = [
        model.backbone.get_layer(name)
        for name in ("stem_conv", "stem1_r1_se_reduce", "block1_r1_depthwise_conv")
    ]
    layers += [model.get_layer(name) for name in ("class_net_predict", "box_net_predict")]
    before = [keras.ops.convert_to_numpy(layer.weights[0]) for layer in layers]
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    # The gradient reaches the predictors and, through MBConvs and squeeze-excitation, the stem.
    for layer, value in zip(layers, before):
        assert not np.allclose(value, keras.ops.convert_to_numpy(layer.weights[0])), layer.name

    representative = [letterbox_uint8(random_image(128, 128, seed=i), 128)[0] for i in range(4)]
    path = tmp_path / "mobile.tflite"
    export_tflite(model, str(path), "int8", representative)
    # LiteRT's default CPU delegate, XNNPACK, as a user runs it: it aborts the process on int8
    # tensors of a near-empty range, which the export widens.
    interpreter = Interpreter(model_path=str(path), num_threads=2)
    outputs = interpreter.get_signature_runner("serving_default")(images=representative[0][None])
    raw, _ = detect_letterboxed(model, tf.cast(representative[0][None], tf.float32))
    for name in ("class_logits", "box_deltas"):  # int8's bound only catches a broken model
        error = np.abs(outputs[name] - raw[name].numpy()).max() / np.abs(raw[name].numpy()).max()
        assert error < 0.6, name
    assert outputs["detection_boxes"].shape == (1, 100, 4) and int(outputs["num_detections"][0]) > 0
    tensors = interpreter.get_tensor_details()
    depthwise = [t for t in tensors if "depthwise" in t["name"] and len(t["shape"]) == 4]
    assert depthwise and any(t["dtype"] == np.int8 for t in depthwise)  # the backbone's MBConvs in int8
    # The squeeze-excitations' ReLUs, some of which stay near 0 on the calibration images, in
    # int8 of a scale no finer than MIN_INT8_RANGE over 255 steps.
    reduced = [
        t for t in tensors if "_se_reduce" in t["name"] and "Relu" in t["name"] and len(t["shape"]) == 4
    ]
    assert reduced and all(t["dtype"] == np.int8 for t in reduced)
    assert min(t["quantization"][0] for t in reduced) >= 0.999 * MIN_INT8_RANGE / 255


JAX_SCRIPT = """
import json, sys
sys.modules["tensorflow"] = None  # model code must not need TensorFlow
import jax
import keras
import numpy as np
from spinenet_tf import RetinaNet
assert keras.backend.backend() == "jax"
config, weights, inputs, out = sys.argv[1:]
model = RetinaNet.from_config(json.loads(config))
model.load_weights(weights)
x = np.load(inputs)
state = [[w.value for w in model.trainable_variables], [w.value for w in model.non_trainable_variables]]
outputs = jax.jit(lambda v, t, x: model.stateless_call(v, t, x, training=False)[0])(*state, x)
np.savez(out, **{k: np.asarray(v) for k, v in outputs.items()})
"""


@pytest.mark.slow  # building the model under JAX (a compile per weight shape): ~50 s
def test_same_outputs_on_jax_as_on_tensorflow(tmp_path):
    """The Mobile RetinaNet (MBConv, squeeze-excitation, depthwise resampling, separable head)
    runs unchanged on JAX, jitted as fit and predict run it, and computes the same function."""
    backbone = SpineNetMobile(stochastic_depth_rate=0.2, image_shape=(128, 128, 3), **TINY)
    model = RetinaNet(backbone, 3, num_convs=2, num_filters=8, use_separable_conv=True, activation="swish")
    x = images(128, 128)
    model(x, training=True)  # move BN statistics away from their initial values
    expected = model(x, training=False)
    model.save_weights(tmp_path / "w.weights.h5")
    np.save(tmp_path / "x.npy", x)
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
        env={**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = np.load(tmp_path / "out.npz")
    for name, value in expected.items():
        np.testing.assert_allclose(outputs[name], keras.ops.convert_to_numpy(value), rtol=1e-4, atol=1e-4)


def model_garden_creation_order(model):
    """Our names of the layers Model Garden creates, per its layer type, in the order it creates
    them: the stem, then for each block the resampling of its two parents and the block, then
    the endpoints (as our builder, whose graph and names give them)."""
    graph = resolve_block_graph(
        model.block_specs, model.min_level, model.max_level, MOBILE_STEM_BLOCKS, MOBILE_BLOCK_TYPES
    )
    order = {
        "conv2d": ["stem_conv"],
        "batch_normalization": ["stem_bn"],
        "depthwise_conv2d": [],
        "inverted_bottleneck_block": [f"{node.name}_r1" for node in graph.nodes if node.is_stem],
    }
    for node in graph.used_nodes()[len(order["inverted_bottleneck_block"]) :]:
        for parent in node.parents[:2]:
            prefix = f"{node.name}_from_{graph.nodes[parent].name}"
            for step in range(1, node.level - graph.nodes[parent].level + 1):
                order["depthwise_conv2d"].append(f"{prefix}_down{step}_conv")
                order["batch_normalization"].append(f"{prefix}_down{step}_bn")
            order["conv2d"].append(f"{prefix}_match_conv")
            order["batch_normalization"].append(f"{prefix}_match_bn")
        order["inverted_bottleneck_block"].append(f"{node.name}_r1")
    for level in graph.outputs:
        order["conv2d"].append(f"P{level}_conv")
        order["batch_normalization"].append(f"P{level}_bn")
    return order


def load_model_garden_weights(model, arrays):
    """Sets `model`'s weights from the fixture's Model Garden weights (see make_fixture.py)."""
    weights = {}
    for key in sorted(key for key in arrays if key.startswith("weights/")):
        *layer, index = key.split("/")[1:]
        weights.setdefault("/".join(layer), {})[int(index)] = arrays[key]

    def assign(ours, theirs):
        values = weights.pop(theirs)
        model.get_layer(ours).set_weights([values[i] for i in sorted(values)])

    for layer_type, ours in model_garden_creation_order(model).items():
        for count, name in enumerate(ours):
            theirs = layer_type if count == 0 else f"{layer_type}_{count}"
            if layer_type == "inverted_bottleneck_block":
                for part, our_part in BLOCK_PARTS.items():
                    assign(f"{name}_{our_part}", f"{theirs}/{part}")
            else:
                assign(name, theirs)
    assert not weights, f"Model Garden weights left unmapped: {sorted(weights)[:5]}"


def test_same_outputs_as_model_gardens_mobile_spinenet_with_its_weights():
    """Model Garden's SpineNetMobile (tests/fixtures/mobile/make_fixture.py: random weights and
    BN statistics, swish) and ours with its weights give the same pyramid. Tolerance: float32
    round-off over 16 blocks, and Model Garden's hard sigmoid multiplying by 0.16667, not 1/6
    (measured: 2e-5 of the largest value, at P3)."""
    with np.load(FIXTURE) as fixture:
        arrays = dict(fixture)
    arch = json.loads(str(arrays["arch"]))
    size = arch["image_size"]
    model = SpineNetMobile(
        "49",
        image_shape=(size, size, 3),
        filter_size_scale=arch["filter_size_scale"],
        endpoints_num_filters=arch["endpoints_num_filters"],
        activation=arch["activation"],
    )
    load_model_garden_weights(model, arrays)
    features = model(arrays["image"], training=False)
    for name, value in features.items():
        error = np.abs(keras.ops.convert_to_numpy(value) - arrays[name]).max() / np.abs(arrays[name]).max()
        assert error < 1e-4, (name, error)
