import keras
import numpy as np
import pytest

from spinenet_tf import ImageClassifier, SpineNet, build_classifier, profile
from spinenet_tf.data.synthetic_classification import CLASS_NAMES, render_example
from spinenet_tf.errors import ModelError
from spinenet_tf.layers.image_converter import center_crop, normalise_image
from spinenet_tf.published import CLASSIFIER_REFERENCE
from tests.helpers import CLASSIFIER_SIZE, tiny_backbone, tiny_classifier
from tests.test_case import perturb_float_weights, run_precision_test, run_saving_test, run_serialization_test


def inputs(batch=2, seed=0):
    shape = (batch, CLASSIFIER_SIZE, CLASSIFIER_SIZE, 3)
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype("float32")


def nearest(feature, height, width):
    """Hand-written nearest resize: output row i takes source row floor(i * in / out)."""
    rows = [i * feature.shape[1] // height for i in range(height)]
    cols = [j * feature.shape[2] // width for j in range(width)]
    return feature[:, rows][:, :, cols]


def head_weights(model):
    kernel, bias = model.get_layer("logits").get_weights()
    return kernel, bias


@pytest.mark.parametrize("aggregation", ["all", "top"])
def test_logits_are_the_aggregated_pyramid_averaged_then_dense(aggregation):
    model = tiny_classifier(aggregation=aggregation)
    perturb_float_weights(model)
    x = inputs()
    features = {name: keras.ops.convert_to_numpy(value) for name, value in model.backbone(x).items()}
    if aggregation == "top":
        merged = features["P7"]
    else:  # from P7 down: resize to the finer level, add; then the mean over the 5 levels
        merged = features["P7"]
        for level in (6, 5, 4, 3):
            finer = features[f"P{level}"]
            merged = nearest(merged, *finer.shape[1:3]) + finer
        merged = merged / 5
    kernel, bias = head_weights(model)
    expected = merged.mean(axis=(1, 2)) @ kernel + bias
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)), expected, rtol=1e-4, atol=1e-5)


def test_embedding_and_dropout_are_in_the_graph_and_dropout_only_trains():
    model = tiny_classifier(embedding_filters=24, dropout_rate=0.5)
    assert model.get_layer("logits").kernel.shape == (24, 4)
    x = inputs()
    np.testing.assert_array_equal(model(x, training=False), model(x, training=False))
    assert not np.allclose(model(x, training=True), model(x, training=True))


def test_loss_is_label_smoothed_cross_entropy_plus_l2():
    model = tiny_classifier(label_smoothing=0.1, weight_decay=1e-4)
    perturb_float_weights(model)
    x, y = inputs(3), np.array([0, 3, 1])
    logits = keras.ops.convert_to_numpy(model(x)).astype("float64")
    log_probabilities = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    targets = np.eye(4)[y] * 0.9 + 0.1 / 4
    cross_entropy = -(targets * log_probabilities).sum(-1).mean()
    kernels = [w for w in model.trainable_weights if w.path.endswith("kernel")]
    l2 = 0.5e-4 * sum(float(np.sum(keras.ops.convert_to_numpy(w).astype("float64") ** 2)) for w in kernels)
    loss = model.compute_loss(x, y, model(x))
    np.testing.assert_allclose(float(loss), cross_entropy + l2, rtol=1e-5)


def test_predict_takes_photos_of_any_size_and_answers_the_top_classes():
    model = tiny_classifier(num_classes=7)
    perturb_float_weights(model)
    rng = np.random.default_rng(0)
    photos = [rng.integers(0, 256, (150, 100, 3), np.uint8), rng.integers(0, 256, (90, 131, 3), np.uint8)]
    answers = model.predict(photos, verbose=0)
    assert answers["probabilities"].shape == (2, 7) and answers["classes"].shape == (2, 5)
    np.testing.assert_allclose(answers["probabilities"].sum(-1), 1.0, rtol=1e-5)
    for photo, probabilities, classes, scores in zip(
        photos, answers["probabilities"], answers["classes"], answers["scores"]
    ):
        # The model's own view: the centred 0.875 of the shorter side, resized, normalised.
        view = normalise_image(center_crop(photo[None], (CLASSIFIER_SIZE,) * 2, 0.875))
        logits = keras.ops.convert_to_numpy(model(view))[0]
        expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        np.testing.assert_allclose(probabilities, expected, rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(classes, np.argsort(-expected)[:5])
        np.testing.assert_allclose(scores, expected[classes], rtol=1e-4, atol=1e-6)
    batch = model.predict(np.stack([photos[0], photos[0]]), verbose=0)
    np.testing.assert_allclose(batch["probabilities"][0], answers["probabilities"][0], rtol=1e-4, atol=1e-6)


def test_compile_defaults_report_top1_and_top_k():
    model = tiny_classifier(num_classes=3)
    model.compile()
    result = model.evaluate(inputs(4), np.array([0, 1, 2, 0]), verbose=0, return_dict=True)
    assert set(result) == {"loss", "top1", "top3"}
    assert result["top3"] == 1.0  # every class is in a top 3 of 3


def test_serialization_saving_and_mixed_precision(tmp_path):
    model = tiny_classifier(embedding_filters=8)
    run_serialization_test(model)
    run_saving_test(model, inputs(), tmp_path)
    run_precision_test(lambda: tiny_classifier(), inputs(), "mixed_bfloat16")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"aggregation": "mean"}, "Unknown aggregation 'mean'"),
        ({"num_classes": 1}, "num_classes must be >= 2"),
        ({"dropout_rate": 1.0}, r"dropout_rate must be in \[0, 1\)"),
        ({"label_smoothing": -0.1}, r"label_smoothing must be in \[0, 1\)"),
    ],
)
def test_invalid_arguments_name_the_problem(kwargs, message):
    arguments = {"num_classes": 4, **kwargs}
    with pytest.raises(ModelError, match=message):
        ImageClassifier(tiny_backbone(), **arguments)


def test_a_dynamic_backbone_is_refused_with_the_fix():
    backbone = SpineNet("49", filter_size_scale=0.25, endpoints_num_filters=16)
    with pytest.raises(ModelError, match=r"static image_shape, e.g. \(224, 224, 3\)"):
        ImageClassifier(backbone, 4)


def test_a_classifier_learns_a_handful_of_images():
    """Eight synthetic shapes of four classes, learned to 100% top-1 on their own centre crops."""
    rng = np.random.default_rng(0)
    names = CLASS_NAMES[:4]
    photos = [render_example(rng, 110, names[i % 4]) for i in range(8)]
    labels = np.arange(8) % 4
    model = build_classifier(
        {
            "backbone": {
                "model_id": "49",
                "filter_size_scale": 0.25,
                "endpoints_num_filters": 32,
                "norm_momentum": 0.9,
                "block_specs": tiny_backbone().block_specs,
            },
            "num_classes": 4,
            "weight_decay": 0.0,
        },
        image_size=CLASSIFIER_SIZE,
    )
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    views = np.concatenate([keras.ops.convert_to_numpy(model.image_converter(p[None])[0]) for p in photos])
    before = model.evaluate(views, labels, verbose=0, return_dict=True)
    model.fit(views, labels, batch_size=8, epochs=60, verbose=0)
    after = model.evaluate(views, labels, verbose=0, return_dict=True)
    assert after["loss"] < 0.2 * before["loss"]
    assert np.mean(model.predict(photos, verbose=0)["classes"][:, 0] == labels) == 1.0


@pytest.mark.parametrize(
    "model_id",
    [
        "49",
        pytest.param("96", marks=pytest.mark.slow),
        pytest.param("143", marks=pytest.mark.slow),
        pytest.param("190", marks=pytest.mark.slow),
    ],
)
def test_parameters_and_macs_at_224_are_within_one_percent_of_the_zoo(model_id):
    reference = CLASSIFIER_REFERENCE[model_id]
    size = reference["size"]
    model = ImageClassifier(SpineNet(model_id, image_shape=(size, size, 3)), 1001)
    counted = profile(model, (size, size, 3))
    assert abs(counted.trainable_params / reference["params"] - 1) < 0.01
    assert abs(counted.gmacs / reference["gmacs"] - 1) < 0.01
