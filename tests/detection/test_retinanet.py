import keras
import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from benchmarks import detector_table
from benchmarks.reference import DETECTOR_REFERENCE, detector_config
from spinenet_tf import ResNet50Backbone, RetinaNet, SpineNet, build_detector, profile
from tests.test_case import run_saving_test, run_serialization_test

SIZE = 128
# A 7-block scale-permuted network with outputs L3..L7: tracing a training step of it
# costs half of SpineNet-49's, for tests of mechanics rather than of the architecture.
SMALL_BLOCK_SPECS = [
    [3, "bottleneck", [0, 1], False],
    [5, "residual", [1, 2], False],
    [3, "bottleneck", [2, 3], True],
    [4, "bottleneck", [2, 3], True],
    [5, "bottleneck", [3, 5], True],
    [6, "bottleneck", [3, 6], True],
    [7, "bottleneck", [5, 6], True],
]


def tiny_detector(num_classes=3, block_specs=SMALL_BLOCK_SPECS, **kwargs):
    backbone = SpineNet(
        "49",
        filter_size_scale=0.25,
        endpoints_num_filters=32,
        norm_momentum=0.9,
        image_shape=(SIZE, SIZE, 3),
        block_specs=block_specs,
    )
    defaults = dict(num_convs=2, num_filters=32, norm_momentum=0.9)
    return RetinaNet(backbone, num_classes, **{**defaults, **kwargs})


def synthetic_batch(num_images, boxes_per_image=2, max_boxes=4, seed=0):
    """Coloured rectangles on dark noise; class c paints channel c - 1."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 0.2, (num_images, SIZE, SIZE, 3)).astype("float32")
    boxes = np.zeros((num_images, max_boxes, 4), "float32")
    classes = np.full((num_images, max_boxes), -1, "int32")
    for i in range(num_images):
        for j in range(boxes_per_image):
            h, w = rng.integers(20, 56, 2)
            y, x = rng.integers(0, SIZE - h), rng.integers(0, SIZE - w)
            c = int(rng.integers(1, 3))
            images[i, y : y + h, x : x + w, c - 1] = 1.0
            boxes[i, j], classes[i, j] = [y, x, y + h, x + w], c
    return images, {"boxes": boxes, "classes": classes}


def repeated(images, labels, times):
    """The same batch `times` over, so that one fit() epoch runs `times` steps."""
    return np.concatenate([images] * times), {k: np.concatenate([v] * times) for k, v in labels.items()}


def ap50(labels, detections):
    """COCO AP at IoU 0.5 of detections against labels, with pycocotools."""
    images, annotations, results = [], [], []
    for i, (boxes, classes) in enumerate(zip(labels["boxes"], labels["classes"])):
        images.append({"id": i, "height": SIZE, "width": SIZE})
        for box, cls in zip(boxes, classes):
            if cls >= 0:
                y0, x0, y1, x1 = box.tolist()
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i,
                        "category_id": int(cls),
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "area": (x1 - x0) * (y1 - y0),
                        "iscrowd": 0,
                    }
                )
        for k in range(int(detections["num_detections"][i])):
            y0, x0, y1, x1 = detections["boxes"][i, k].tolist()
            results.append(
                {
                    "image_id": i,
                    "category_id": int(detections["classes"][i, k]),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": float(detections["scores"][i, k]),
                }
            )
    truth = COCO()
    truth.dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1}, {"id": 2}]}
    truth.createIndex()
    evaluation = COCOeval(truth, truth.loadRes(results), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return evaluation.stats[1]


def test_spinenet49_detector_overfits_a_few_images():
    images, labels = synthetic_batch(4)
    model = tiny_detector(block_specs=None, weight_decay=0.0)  # SpineNet-49's block table, 1/4 width
    model.compile(optimizer=keras.optimizers.SGD(0.02, momentum=0.9))
    # 4 epochs of 30 steps, each step the same 4 images.
    history = model.fit(*repeated(images, labels, 30), batch_size=4, epochs=4, shuffle=False, verbose=0)
    losses = history.history["loss"]
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.3 < losses[0], losses  # the first epoch averages from ~1.7 at the 0.01 prior
    detections = model.predict(images, batch_size=4, verbose=0)
    assert ap50(labels, detections) > 0.9


def test_no_ground_truth_and_many_boxes_train_without_nan():
    images, labels = synthetic_batch(2, boxes_per_image=0, max_boxes=128)
    crowded_images, crowded = synthetic_batch(2, boxes_per_image=120, max_boxes=128, seed=3)
    model = tiny_detector(max_detections=150)
    model.compile()
    for x, y in [(images, labels), (crowded_images, crowded)]:
        loss = model.train_on_batch(x, y)
        assert np.isfinite(loss)
    assert all(np.isfinite(w.numpy()).all() for w in model.trainable_weights)
    detections = model.predict(crowded_images, verbose=0)
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
    images, _ = synthetic_batch(3, seed=5)
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
def test_mixed_precision_training_step(policy):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model = tiny_detector()
        model.compile()
        images, labels = synthetic_batch(2)
        assert np.isfinite(model.train_on_batch(images, labels))
        outputs = model(images)
        assert outputs["class_logits"].dtype == "float32"
        assert all(w.dtype == "float32" for w in model.trainable_weights)
        if policy == "mixed_float16":
            assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    finally:
        keras.config.set_dtype_policy(previous)


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
    with pytest.raises(ValueError, match=r"detector: unknown key\(s\) \['num_filter'\]; accepted keys are"):
        build_detector({"backbone": {"model_id": "49S"}, "num_classes": 5, "num_filter": 16})
    with pytest.raises(ValueError, match=r"backbone \(spinenet\): unknown key\(s\) \['model'\]"):
        build_detector({"backbone": {"model": "49S"}, "num_classes": 5})
    with pytest.raises(ValueError, match="unknown backbone 'vgg'"):
        build_detector({"backbone": {"type": "vgg"}, "num_classes": 5})


@pytest.mark.parametrize("name", ["49S", "49"])
def test_parameter_count_matches_model_garden(name):
    model = build_detector(detector_config(name))
    assert profile(model, (128, 128, 3)).trainable_params == DETECTOR_REFERENCE[name]["params"]


@pytest.mark.slow
def test_every_detector_matches_the_reference_table(tmp_path):
    for name, reference in DETECTOR_REFERENCE.items():
        params, gmacs = detector_table.measure(name)
        if name == "R50-FPN":
            assert params == pytest.approx(reference["params"], rel=0.01)
        else:
            assert params == reference["params"], name
        if reference["gmacs"]:
            assert gmacs == pytest.approx(reference["gmacs"], rel=0.01), name


def test_identity_decoder_requires_the_levels():
    backbone = SpineNet("49", min_level=3, max_level=5, filter_size_scale=0.25, endpoints_num_filters=16)
    with pytest.raises(ValueError, match=r"Identity decoder: the backbone has no \['P6', 'P7'\]"):
        RetinaNet(backbone, 3, decoder="identity")
