import keras
import numpy as np
import pytest

from spinenet_tf import MODEL_IDS, SpineNet, profile
from spinenet_tf.layers.resample import ResizeToLevel
from spinenet_tf.layers.stochastic_depth import StochasticDepth
from spinenet_tf.published import MODEL_GARDEN_BACKBONE_PARAMS
from tests.test_case import (
    assert_allclose_tree,
    run_precision_test,
    run_saving_test,
    run_serialization_test,
)

TINY = dict(filter_size_scale=0.25, endpoints_num_filters=16)


def images(height, width, batch=2, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (batch, height, width, 3)).astype("float32")


def copy_weights_by_layer_name(source, target):
    """Same-named layers share weights (a resize placed differently may reorder the weight list)."""
    for layer in source.layers:
        if layer.weights:
            target.get_layer(layer.name).set_weights(layer.get_weights())


def assert_pyramid(features, model, batch, height, width):
    assert sorted(features) == [f"P{level}" for level in range(model.min_level, model.max_level + 1)]
    for name, feature in features.items():
        stride = model.pyramid_strides[name]
        assert stride == 2 ** int(name[1:])
        assert tuple(feature.shape) == (
            batch,
            height // stride,
            width // stride,
            model.pyramid_channels[name],
        )


def test_every_model_id_has_a_model_garden_parameter_count():
    assert set(MODEL_IDS) == set(MODEL_GARDEN_BACKBONE_PARAMS)


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_model_id_matches_model_garden_params_and_runs(model_id):
    # Full width at a small input: parameter counts do not depend on the input size.
    model = SpineNet(model_id, image_shape=(128, 128, 3))
    assert profile(model, (128, 128, 3)).trainable_params == MODEL_GARDEN_BACKBONE_PARAMS[model_id]
    assert_pyramid(model(images(128, 128, batch=1), training=False), model, 1, 128, 128)
    assert model.pyramid_channels["P3"] == {"49S": 128, "190": 512}.get(model_id, 256)


def test_explicit_scaling_overrides_model_id():
    model = SpineNet(
        "49",
        filter_size_scale=0.25,
        endpoints_num_filters=24,
        resample_alpha=0.25,
        block_repeats=2,
        image_shape=(128, 128, 3),
    )
    assert (
        model.filter_size_scale,
        model.endpoints_num_filters,
        model.resample_alpha,
        model.block_repeats,
    ) == (0.25, 24, 0.25, 2)
    assert model.get_layer("block3_r2_1_conv").filters == int(128 * 0.25)
    # alpha 0.25 of a level-2 bottleneck parent (base width 16) -> 4 channels.
    assert model.get_layer("block3_from_block1_reduce_conv").filters == 4
    assert_pyramid(model(images(128, 128)), model, 2, 128, 128)


@pytest.mark.parametrize("height,width", [(384, 640), (128, 256)])
def test_static_non_square_input(height, width):
    model = SpineNet("49", image_shape=(height, width, 3), **TINY)
    assert_pyramid(model(images(height, width, batch=1)), model, 1, height, width)


def test_dynamic_input_builds_the_same_network_as_static():
    static = SpineNet("49", image_shape=(128, 128, 3), **TINY)
    dynamic = SpineNet("49", image_shape=(None, None, 3), **TINY)
    assert [w.path for w in dynamic.weights] == [w.path for w in static.weights]
    dynamic.set_weights(static.get_weights())
    x = images(128, 128)
    assert_allclose_tree(dynamic(x), static(x), atol=1e-6, rtol=1e-6)
    # The level-5 output block absorbs block 10, which nothing else consumed.
    assert "block13_sum" in [layer.name for layer in dynamic.layers]
    assert len(dynamic.get_layer("block13_sum").input) == 3
    for height, width in [(256, 128), (384, 512)]:
        assert_pyramid(dynamic(images(height, width, batch=1)), dynamic, 1, height, width)


@pytest.mark.parametrize("flavor", ["model_garden", "tpu"])
@pytest.mark.parametrize("height, width", [(224, 224), (100, 150), (96, 160), (33, 47)])
def test_any_input_size_gives_each_level_its_ceil_size(height, width, flavor):
    model = SpineNet("49", image_shape=(height, width, 3), ops_flavor=flavor, **TINY)
    features = model(images(height, width, batch=1))
    for level in range(3, 8):
        assert features[f"P{level}"].shape[1:3] == (-(-height // 2**level), -(-width // 2**level))
    assert any(isinstance(layer, ResizeToLevel) for layer in model.layers)


@pytest.mark.parametrize("height, width", [(224, 224), (100, 150), (33, 47)])
def test_dynamic_input_at_any_size_equals_the_static_model(height, width):
    static = SpineNet("49", image_shape=(height, width, 3), **TINY)
    dynamic = SpineNet("49", **TINY)
    copy_weights_by_layer_name(static, dynamic)
    x = images(height, width, batch=1)
    assert_allclose_tree(dynamic(x), static(x), atol=1e-6, rtol=1e-6)


def test_multiples_of_the_coarsest_stride_build_the_plain_network():
    """No resize where every level is the input size / its stride: Model Garden's network."""
    for shape in [(128, 128, 3), (256, 128, 3)]:
        model = SpineNet("49", image_shape=shape, **TINY)
        assert not any(isinstance(layer, ResizeToLevel) for layer in model.layers)


def test_nearest_resize_takes_source_row_floor_of_i_times_in_over_out():
    x = np.arange(4 * 5, dtype="float32").reshape(1, 4, 5, 1)
    image = np.zeros((1, 7 * 4, 9 * 4, 3), "float32")  # level 2: 7 x 9
    resized = np.asarray(ResizeToLevel(2)(x, image))[0, :, :, 0]
    rows, cols = [i * 4 // 7 for i in range(7)], [j * 5 // 9 for j in range(9)]
    np.testing.assert_array_equal(resized, x[0, :, :, 0][np.ix_(rows, cols)])


def test_nonpositive_size_is_rejected():
    with pytest.raises(ValueError, match="height must be positive"):
        SpineNet("49", image_shape=(0, 128, 3), **TINY)


def test_min_level_2_builds_the_16th_block_and_p2():
    model = SpineNet("49", min_level=2, max_level=7, image_shape=(128, 128, 3), **TINY)
    names = {layer.name for layer in model.layers}
    assert "block16_r1_add" in names
    assert_pyramid(model(images(128, 128, batch=1)), model, 1, 128, 128)
    default = SpineNet("49", image_shape=(128, 128, 3), **TINY)
    assert not any(layer.name.startswith("block16") for layer in default.layers)


def test_max_level_below_7_still_needs_the_coarsest_block_stride():
    model = SpineNet("49", min_level=3, max_level=5, image_shape=(128, 256, 3), **TINY)
    assert model.size_multiple == 2**7  # block 8 (level 7) is an ancestor of P3..P5.
    assert_pyramid(model(images(128, 256, batch=1)), model, 1, 128, 256)


def test_stochastic_depth_rate_grows_linearly_and_only_changes_training():
    rate = 0.4
    model = SpineNet("49", stochastic_depth_rate=rate, image_shape=(128, 128, 3), **TINY)
    drop_layers = {layer.name: layer.rate for layer in model.layers if isinstance(layer, StochasticDepth)}
    assert drop_layers["block1_r1_drop_path"] == pytest.approx(rate * 1 / 16)
    assert drop_layers["block15_r1_drop_path"] == pytest.approx(rate * 15 / 16)
    assert not any(name.startswith("stem") for name in drop_layers)

    plain = SpineNet("49", stochastic_depth_rate=0.0, image_shape=(128, 128, 3), **TINY)
    by_path = {w.path: w for w in model.weights}
    for weight in plain.weights:
        weight.assign(by_path[weight.path])
    for m in (model, plain):  # BN in inference mode, so only drop-path can differ.
        for layer in m.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
    x = images(128, 128, batch=4)
    inference = model(x, training=False)
    assert_allclose_tree(model(x, training=False), inference, atol=0, rtol=0)
    assert_allclose_tree(plain(x, training=True), plain(x, training=False), atol=1e-6, rtol=1e-6)
    assert_allclose_tree(plain(x, training=False), inference, atol=1e-6, rtol=1e-6)
    trained = model(x, training=True)
    assert not np.allclose(
        keras.ops.convert_to_numpy(trained["P3"]), keras.ops.convert_to_numpy(inference["P3"])
    )


def test_options_reach_the_layers():
    model = SpineNet(
        "49",
        activation="swish",
        norm_momentum=0.9,
        norm_epsilon=1e-4,
        sync_batch_norm=True,
        kernel_regularizer=4e-5,
        image_shape=(128, 128, 3),
        **TINY,
    )
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert all(n.momentum == 0.9 and n.epsilon == 1e-4 and n.synchronized for n in norms)
    assert all(c.kernel_regularizer is not None and not c.use_bias for c in convs)
    assert len(model.losses) == len(convs)
    activations = {
        layer.activation.__name__ for layer in model.layers if isinstance(layer, keras.layers.Activation)
    }
    assert activations == {"silu"}


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"model_id": "50"}, "Unknown SpineNet model_id '50'"),
        ({"activation": "gelu"}, "Unknown activation 'gelu'"),
        ({"filter_size_scale": 0}, "filter_size_scale must be a positive number"),
        ({"min_level": 5, "max_level": 4}, "min_level=5, max_level=4"),
        ({"stochastic_depth_rate": 1.0}, r"stochastic_depth_rate must be in \[0, 1\)"),
        ({"image_shape": (128, 128)}, "image_shape must be"),
        ({"ops_flavor": "torch"}, "Unknown ops_flavor 'torch'"),
    ],
)
def test_invalid_configs_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpineNet(**kwargs)


def test_config_and_keras_file_round_trip(tmp_path):
    model = SpineNet(
        "49",
        stochastic_depth_rate=0.1,
        kernel_regularizer=1e-4,
        activation="swish",
        block_specs=[list(spec.as_list()) for spec in SpineNet("49", **TINY).block_specs],
        image_shape=(128, 128, 3),
        ops_flavor="tpu",
        **TINY,
    )
    run_serialization_test(model)
    # Non-trivial BN statistics, so that a reload that drops them would show.
    model(images(128, 128, batch=4), training=True)
    run_saving_test(model, images(128, 128), tmp_path)


def test_tpu_ops_keep_the_weights_and_change_the_numbers():
    """The tensorflow/tpu flavour only pads and pools differently (parity: tests/pretrained)."""
    reference = SpineNet("49", image_shape=(128, 128, 3), **TINY)
    tpu = SpineNet("49", image_shape=(128, 128, 3), ops_flavor="tpu", **TINY)
    weights = {w.path: w for w in reference.weights}
    assert {w.path: w.shape for w in tpu.weights} == {path: w.shape for path, w in weights.items()}
    for weight in tpu.weights:
        weight.assign(weights[weight.path])
    x = images(128, 128)
    assert not np.allclose(tpu(x)["P5"], reference(x)["P5"], atol=1e-3)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy):
    model = run_precision_test(
        lambda: SpineNet("49", image_shape=(128, 128, 3), **TINY), images(128, 128), policy
    )
    assert model.dtype_policy.name == policy
    assert all(w.dtype == "float32" for w in model.trainable_weights)
