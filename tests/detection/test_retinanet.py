"""RetinaNet: learning, loss, labels, decoding, config round trips and the published sizes."""

import keras
import numpy as np
import pytest

from spinenet_tf import ResNet50Backbone, RetinaNet, SpineNet, build_detector, profile
from spinenet_tf.errors import ModelError
from spinenet_tf.published import DETECTOR_REFERENCE, detector_config
from tests.helpers import SIZE, ap50, repeated, synthetic_batch, synthetic_photos, tiny_detector
from tests.test_case import run_precision_test, run_saving_test, run_serialization_test


def test_spinenet49_detector_overfits_a_few_images():
    images, labels = synthetic_batch(4)
    model = tiny_detector(block_specs=None, weight_decay=0.0)  # SpineNet-49's block table, 1/4 width
    model.compile(optimizer=keras.optimizers.SGD(0.02, momentum=0.9))
    # 4 epochs of 30 steps, each step the same 4 images.
    history = model.fit(*repeated(images, labels, 30), batch_size=4, epochs=4, shuffle=False, verbose=0)
    losses = history.history["loss"]
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.3 < losses[0], losses  # the first epoch averages from ~1.7 at the 0.01 prior
    photos, _ = synthetic_photos(4)  # the same images as raw uint8: predict normalises them itself
    detections = model.predict(photos, batch_size=4, verbose=0)
    assert ap50(labels, detections) > 0.9


def test_no_ground_truth_and_many_boxes_train_without_nan():
    images, labels = synthetic_batch(2, boxes_per_image=0, max_boxes=128)
    crowded_images, crowded = synthetic_batch(2, boxes_per_image=120, max_boxes=128, seed=3)
    crowded_photos, _ = synthetic_photos(2, boxes_per_image=120, max_boxes=128, seed=3)
    model = tiny_detector(max_detections=150)
    model.compile()
    for x, y in [(images, labels), (crowded_images, crowded)]:
        loss = model.train_on_batch(x, y)
        assert np.isfinite(loss)
    assert all(np.isfinite(w.numpy()).all() for w in model.trainable_weights)
    detections = model.predict(crowded_photos, verbose=0)
    assert detections["boxes"].shape == (2, 150, 4)


@pytest.mark.parametrize(
    "labels,message",
    [
        (
            {"boxes": np.zeros((2, 4, 3), "float32"), "classes": np.zeros((2, 4), "int32")},
            r"labels\['boxes'\] must have shape \[batch, max_boxes, 4\], got \(2, 4, 3\)",
        ),
        (
            {"boxes": np.zeros((2, 4, 4), "float32"), "classes": np.zeros((2, 5), "int32")},
            r"labels\['classes'\] must have shape \[batch, max_boxes\] = \[batch, 4\], got \(2, 5\)",
        ),
        ({"boxes": np.zeros((2, 4, 4), "float32")}, "must be a dict with 'boxes'"),
    ],
)
def test_bad_label_shapes_are_named(labels, message):
    model = tiny_detector()
    model.compile()
    with pytest.raises(ValueError, match=message):
        model.train_on_batch(np.zeros((2, SIZE, SIZE, 3), "float32"), labels)


def test_predict_is_per_image():
    images, _ = synthetic_photos(3, seed=5)
    model = tiny_detector(score_threshold=0.0)
    rng = np.random.default_rng(0)
    for name in ["class_net_predict", "box_net_predict"]:  # spread outputs beyond the 0.01 prior
        kernel, bias = model.get_layer(name).get_weights()
        model.get_layer(name).set_weights([rng.normal(0, 0.3, kernel.shape).astype("float32"), bias])
    together = model.predict(images, batch_size=3, verbose=0)
    for i in range(3):
        alone = model.predict(images[i : i + 1], verbose=0)
        for key in together:
            np.testing.assert_allclose(together[key][i], alone[key][0], rtol=1e-4, atol=1e-3)
    assert not np.allclose(together["scores"][0], together["scores"][1])
    assert (together["boxes"] >= 0).all() and (together["boxes"] <= SIZE).all()
    assert together["num_detections"].dtype == np.int32


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy):
    """Low-precision compute with float32 raw outputs (the loss and decoding need them), then a step."""
    images, labels = synthetic_batch(2)
    model = run_precision_test(tiny_detector, images, policy, output_dtype="float32")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model.compile()
        assert np.isfinite(model.train_on_batch(images, labels))
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (policy == "mixed_float16")
    finally:
        keras.config.set_dtype_policy(previous)


def test_labels_without_classes_are_named():
    model = tiny_detector()
    model.compile()
    images, labels = synthetic_batch(2)
    with pytest.raises(ModelError, match="must be a dict with 'boxes'.*got dict\\['boxes', 'labels'\\]"):
        model.train_on_batch(images, {"boxes": labels["boxes"], "labels": labels["classes"]})


def test_freezing_after_compile_gives_the_backbone_no_optimizer_slots():
    images, labels = synthetic_batch(2)
    model = tiny_detector()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.backbone.trainable = False
    frozen = [w.numpy().copy() for w in model.backbone.weights]
    model.train_on_batch(images, labels)
    head = len(model.trainable_variables)
    # Adam: two moments per trainable variable, plus its step and learning rate.
    assert len(model.optimizer.variables) == 2 * head + 2 < 2 * len(model.backbone.weights)
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(frozen, model.backbone.weights, strict=True))


def test_weight_decay_applied_twice_is_refused():
    regularised = SpineNet(
        "49",
        filter_size_scale=0.25,
        endpoints_num_filters=16,
        image_shape=(SIZE, SIZE, 3),
        kernel_regularizer=1e-4,
    )
    with pytest.raises(ModelError, match="backbone's kernel_regularizer would add it a second time"):
        RetinaNet(regularised, 3, weight_decay=4e-5)
    RetinaNet(regularised, 3, weight_decay=0.0, num_convs=1, num_filters=16)  # one L2 is fine
    model = tiny_detector(weight_decay=4e-5)
    with pytest.raises(
        ModelError, match=r"optimizer's weight_decay=0.004 would decay the kernels a second time"
    ):
        model.compile(optimizer="adamw")
    model.compile(optimizer=keras.optimizers.AdamW(weight_decay=0.0))


def test_weight_decay_is_half_l2_of_kernels():
    images, labels = synthetic_batch(2)
    plain, decayed = tiny_detector(weight_decay=0.0), tiny_detector(weight_decay=1e-2)
    decayed.set_weights(plain.get_weights())
    outputs = plain(images)
    kernels = sum(float(np.sum(w.numpy() ** 2)) for w in plain.trainable_weights if w.path.endswith("kernel"))
    difference = float(decayed.compute_loss(images, labels, outputs)) - float(
        plain.compute_loss(images, labels, outputs)
    )
    assert difference == pytest.approx(0.5 * 1e-2 * kernels, rel=1e-4)


def test_replica_shares_of_the_loss_add_up_to_the_global_batch_loss():
    """Two replicas each holding one copy of an image: their shares sum to the loss of one
    process on both copies, because the positives are counted over the global batch."""
    image, labels = synthetic_batch(1)
    model = tiny_detector(weight_decay=1e-2)
    both = repeated(image, labels, 2)
    global_loss = float(model.compute_loss(both[0], both[1], model(both[0])))
    model.cross_replica_sum = lambda value: 2 * value  # an all-reduce over 2 equal replicas
    share = float(model.compute_loss(image, labels, model(image)))
    assert 2 * share == pytest.approx(global_loss, rel=1e-5)
    model.cross_replica_sum = None
    assert (
        2 * float(model.compute_loss(image, labels, model(image))) > global_loss * 1.01
    )  # per-replica count


def test_serialization_and_keras_file(tmp_path):
    model = tiny_detector(nms="class_agnostic", max_detections=7)
    run_serialization_test(model)
    run_saving_test(model, synthetic_batch(2)[0], tmp_path)


def test_resnet50_fpn_baseline_builds_an_fpn_and_runs():
    model = RetinaNet(ResNet50Backbone(), 3, num_convs=1, num_filters=16, fpn_num_filters=16)
    assert model.decoder == "fpn"
    assert "fpn_output_P7" in [layer.name for layer in model.layers]
    outputs = model(np.zeros((1, SIZE, SIZE, 3), "float32"))
    assert outputs["class_logits"].shape == (1, 9 * (256 + 64 + 16 + 4 + 1), 3)
    assert tiny_detector().decoder == "identity"


def test_factory_builds_and_rejects_unknown_keys():
    model = build_detector(
        {
            "backbone": {"type": "spinenet", "model_id": "49S", "image_shape": [SIZE, SIZE, 3]},
            "num_classes": 5,
            "num_filters": 16,
            "num_convs": 1,
        }
    )
    assert isinstance(model.backbone, SpineNet) and model.num_classes == 5
    with pytest.raises(
        ModelError, match=r"detector.num_filter: unknown key; allowed keys here are \[.*'num_filters'"
    ):
        build_detector({"backbone": {"model_id": "49S"}, "num_classes": 5, "num_filter": 16})
    with pytest.raises(
        ModelError, match=r"backbone.model: unknown key; allowed keys here are \[.*'model_id'"
    ):
        build_detector({"backbone": {"model": "49S"}, "num_classes": 5})
    with pytest.raises(
        ModelError,
        match=r"backbone.type: 'vgg' is not one of the allowed values "
        r"\['resnet50', 'spinenet', 'spinenet_mobile'\]",
    ):
        build_detector({"backbone": {"type": "vgg"}, "num_classes": 5})


@pytest.mark.parametrize("name", ["49S", "49"])
def test_parameter_count_matches_model_garden(name):
    model = build_detector(detector_config(name))
    assert profile(model, (128, 128, 3)).trainable_params == DETECTOR_REFERENCE[name]["params"]


def test_identity_decoder_requires_the_levels():
    backbone = SpineNet("49", min_level=3, max_level=5, filter_size_scale=0.25, endpoints_num_filters=16)
    with pytest.raises(ValueError, match=r"Identity decoder: the backbone has no \['P6', 'P7'\]"):
        RetinaNet(backbone, 3, decoder="identity")
