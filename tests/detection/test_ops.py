"""Detection ops against hand-computed cases. Backend-agnostic: also run under JAX."""

import math

import numpy as np
import pytest
from keras import ops

from spinenet_tf.detection.anchors import AnchorSpec, generate_anchors
from spinenet_tf.detection.box_coder import decode_boxes, encode_boxes
from spinenet_tf.detection.losses import huber_loss, sigmoid_focal_loss
from spinenet_tf.detection.nms import non_max_suppression
from spinenet_tf.detection.postprocess import TOP_K_CHUNK, DetectionSpec, chunked_top_k, detect, top_anchors
from spinenet_tf.detection.target_assignment import assign_targets, pairwise_iou


def np_(x):
    return np.asarray(ops.convert_to_numpy(x))


def test_anchor_grid_by_hand():
    spec = AnchorSpec(min_level=3, max_level=3, num_scales=1, aspect_ratios=(1.0,), anchor_size=2.0)
    # Stride 8 on a 16x16 image: centres 4 and 12, boxes 16 px wide.
    expected = [[-4, -4, 12, 12], [-4, 4, 12, 20], [4, -4, 20, 12], [4, 4, 20, 20]]
    np.testing.assert_allclose(generate_anchors((16, 16), spec), expected)


def test_anchor_scales_ratios_and_order():
    spec = AnchorSpec(min_level=3, max_level=4, num_scales=2, aspect_ratios=(0.5, 2.0), anchor_size=4.0)
    anchors = generate_anchors((32, 64), spec)
    assert anchors.shape == ((4 * 8 + 2 * 4) * 4, 4)
    first = anchors[:4]  # location (0, 0) of level 3: scale 1 then 2**0.5, ratio 0.5 then 2.
    heights, widths = first[:, 2] - first[:, 0], first[:, 3] - first[:, 1]
    base = 4.0 * 8
    np.testing.assert_allclose(widths / heights, [0.5, 2.0, 0.5, 2.0], rtol=1e-6)
    np.testing.assert_allclose(
        np.sqrt(heights * widths), [base, base, base * 2**0.5, base * 2**0.5], rtol=1e-6
    )
    np.testing.assert_allclose((first[:, 0] + first[:, 2]) / 2, 4.0)
    # Row-major: the next location is one stride to the right.
    np.testing.assert_allclose(anchors[4:8, 1] - anchors[0:4, 1], 8.0)
    level4 = anchors[4 * 8 * 4 :]
    np.testing.assert_allclose((level4[0, 1] + level4[0, 3]) / 2, 8.0)
    assert generate_anchors((128, 128), AnchorSpec()).shape == (9 * (256 + 64 + 16 + 4 + 1), 4)


def test_box_coder_by_hand_and_round_trip():
    anchors = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], "float32")
    boxes = np.array([[2, 2, 12, 12], [0, 0, 20, 10]], "float32")
    np.testing.assert_allclose(
        np_(encode_boxes(boxes, anchors)), [[0.2, 0.2, 0, 0], [0.5, 0, math.log(2), 0]], atol=1e-6
    )
    rng = np.random.default_rng(0)
    corner = rng.uniform(0, 100, (50, 2))
    anchors = np.concatenate([corner, corner + rng.uniform(5, 50, (50, 2))], 1).astype("float32")
    corner = rng.uniform(0, 100, (50, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(5, 50, (50, 2))], 1).astype("float32")
    np.testing.assert_allclose(np_(decode_boxes(encode_boxes(boxes, anchors), anchors)), boxes, atol=1e-3)


def test_pairwise_iou_by_hand():
    a = np.array([[0, 0, 10, 10]], "float32")
    b = np.array([[5, 5, 15, 15], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 0, 0]], "float32")
    np.testing.assert_allclose(np_(pairwise_iou(a, b)), [[25 / 175, 1.0, 0.0, 0.0]], atol=1e-6)


def test_assign_targets_thresholds_force_match_and_padding():
    anchors = np.array(
        [[0, 0, 10, 10], [0, 0, 10, 8.2], [0, 0, 10, 4.5], [0, 0, 10, 2], [50, 50, 60, 60]], "float32"
    )  # IoU with gt [0,0,10,10]: 1.0, 0.82, 0.45, 0.2; with the gt at 48: 0.36
    gt_boxes = np.array([[[0, 0, 10, 10], [48, 48, 60, 60], [0, 0, 10, 10]]], "float32")
    gt_classes = np.array([[3, 5, -1]], "int32")  # third box is padding
    classes, boxes, class_w, box_w = (np_(t) for t in assign_targets(anchors, gt_boxes, gt_classes))
    np.testing.assert_array_equal(classes, [[3, 3, -1, -1, 5]])  # last one forced (IoU 100/144)
    np.testing.assert_array_equal(class_w, [[1, 1, 0, 1, 1]])  # 0.45 is ignored, 0.2 negative
    np.testing.assert_array_equal(box_w, [[1, 1, 0, 0, 1]])
    np.testing.assert_allclose(boxes[0, 0], 0.0, atol=1e-6)
    np.testing.assert_allclose(boxes[0, 1], np_(encode_boxes(gt_boxes[0, :1], anchors[1:2]))[0], atol=1e-6)
    # Low-quality gt: best IoU 0.36 < 0.5, still claims anchor 4 (force match).
    gt_boxes[0, 1] = [50, 50, 66, 66]
    classes, *_ = (np_(t) for t in assign_targets(anchors, gt_boxes, gt_classes))
    assert classes[0, 4] == 5


def test_assign_targets_without_ground_truth_is_all_negative():
    anchors = generate_anchors((128, 128), AnchorSpec())
    classes, boxes, class_w, box_w = (
        np_(t) for t in assign_targets(anchors, np.zeros((2, 3, 4), "float32"), np.full((2, 3), -1, "int32"))
    )
    assert (classes == -1).all() and (class_w == 1).all() and (box_w == 0).all() and np.isfinite(boxes).all()


def test_focal_loss_by_hand():
    loss = np_(
        sigmoid_focal_loss(np.array([1.0, 0.0, 1.0]), np.array([0.0, 0.0, 2.0]), alpha=0.25, gamma=1.5)
    )
    p = 1 / (1 + math.exp(-2.0))
    expected = [
        0.25 * 0.5**1.5 * math.log(2),
        0.75 * 0.5**1.5 * math.log(2),
        0.25 * (1 - p) ** 1.5 * -math.log(p),
    ]
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    # gamma 0 and alpha 0.5: half the binary cross-entropy, stable at large logits.
    loss = np_(sigmoid_focal_loss(np.array([0.0, 1.0]), np.array([100.0, -100.0]), alpha=0.5, gamma=0.0))
    np.testing.assert_allclose(loss, [50.0, 50.0], rtol=1e-5)


def test_huber_loss_by_hand():
    loss = np_(huber_loss(np.zeros(3), np.array([0.05, -0.3, 0.1]), delta=0.1))
    np.testing.assert_allclose(loss, [0.5 * 0.05**2, 0.5 * 0.01 + 0.1 * 0.2, 0.5 * 0.01], rtol=1e-5)


def test_nms_is_greedy():
    boxes = np.array(
        [[[0, 0, 10, 10], [0, 2, 10, 12], [0, 4, 10, 14], [30, 30, 40, 40], [30, 31, 40, 41]]], "float32"
    )
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]], "float32")
    # B overlaps A (IoU 0.67) and goes; C overlaps only B (A-C IoU 0.43) and stays.
    keep = np_(non_max_suppression(boxes, scores, 0.5))
    np.testing.assert_array_equal(keep, [[True, False, True, True, False]])
    valid = np.array([[False, True, True, True, True]])  # without A, B survives and removes C
    keep = np_(non_max_suppression(boxes, scores, 0.5, valid))
    np.testing.assert_array_equal(keep, [[False, True, False, True, False]])


def greedy_reference(boxes, scores, threshold):
    """Textbook greedy NMS of one image, one candidate at a time."""
    iou = np_(pairwise_iou(boxes[None], boxes[None]))[0]
    kept = []
    for i in np.argsort(-scores, kind="stable"):
        if all(iou[i, k] <= threshold for k in kept):
            kept.append(int(i))
    return sorted(kept)


@pytest.mark.parametrize("seed", range(3))
def test_nms_equals_textbook_greedy_on_crowded_random_boxes(seed):
    rng = np.random.default_rng(seed)
    corners = rng.uniform(0, 60, (2, 60, 2)).astype("float32")
    sizes = rng.uniform(5, 30, (2, 60, 2)).astype("float32")
    boxes = np.concatenate([corners, corners + sizes], axis=-1)  # clusters: long suppression chains
    scores = -np.sort(-rng.uniform(0, 1, (2, 60)).astype("float32"), axis=1)
    keep = np_(non_max_suppression(boxes, scores, 0.3))
    for b in range(2):
        assert np.flatnonzero(keep[b]).tolist() == greedy_reference(boxes[b], scores[b], 0.3)


def test_chunked_top_k_equals_top_k_on_long_rows():
    rng = np.random.default_rng(0)
    values = rng.uniform(0, 1, (2, 2 * TOP_K_CHUNK + 12345)).astype("float32")
    values[1, -5:] = 2.0  # winners in the last, partial chunk
    expected_values, expected_index = (np_(t) for t in ops.top_k(values, 1000))
    top_values, top_index = (np_(t) for t in chunked_top_k(values, 1000))
    np.testing.assert_array_equal(top_values, expected_values)
    np.testing.assert_array_equal(top_index, expected_index)
    assert top_index[1, :5].tolist() == list(range(values.shape[1] - 5, values.shape[1]))


def test_top_anchors_hold_every_one_of_the_best_anchor_class_pairs():
    """The pre-NMS top k of all (anchor, class) pairs, background excluded, lies among the
    anchors `top_anchors` keeps, the anchors of highest foreground score (a background score
    above all others does not count)."""
    rng = np.random.default_rng(0)
    # Heavy tails: a few anchors hold many of the best pairs.
    scores = rng.normal(0, 1, (2, 3000, 12)).astype("float32") ** 3
    scores[:, :50, 0] = 100.0  # background
    spec = DetectionSpec(pre_nms_top_k=200, background_class=0)
    kept = np_(top_anchors(scores, spec))
    assert kept.shape == (2, 200)
    for b in range(2):
        flat = scores[b, :, 1:].reshape(-1)
        best_pairs = np.argsort(-flat, kind="stable")[:200]
        assert set(best_pairs // 11) <= set(kept[b].tolist())
        assert len(set(best_pairs // 11)) < 200  # some anchors hold several of the pairs
        best_anchors = np.argsort(-scores[b, :, 1:].max(axis=1), kind="stable")[:200]
        assert set(kept[b].tolist()) == set(best_anchors.tolist())  # by foreground score alone
    assert top_anchors(scores[:, :200], spec) is None  # no more anchors than k: nothing to select


def detect_case(nms, **spec):
    anchors = np.array([[0, 0, 10, 10], [0, 1, 10, 11], [40, 40, 50, 50]], "float32")
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    class_logits = np.full((1, 3, 3), logit(0.01), "float32")  # classes: 0 background, 1, 2
    class_logits[0, 0, 1] = logit(0.9)
    class_logits[0, 1, 2] = logit(0.8)  # overlaps anchor 0 (IoU 0.82), other class
    class_logits[0, 2, 0] = logit(0.99)  # background only: never reported
    class_logits[0, 2, 1] = logit(0.04)  # under the score threshold
    deltas = np.zeros((1, 3, 4), "float32")
    return detect(class_logits, deltas, anchors, (64, 64), DetectionSpec(nms=nms, **spec))


def test_detect_per_class_and_class_agnostic():
    per_class = {k: np_(v) for k, v in detect_case("per_class", max_detections=4).items()}
    assert per_class["num_detections"].tolist() == [2]
    np.testing.assert_allclose(per_class["scores"][0], [0.9, 0.8, 0, 0], atol=1e-6)
    np.testing.assert_array_equal(per_class["classes"][0], [1, 2, 0, 0])
    np.testing.assert_allclose(per_class["boxes"][0, :2], [[0, 0, 10, 10], [0, 1, 10, 11]], atol=1e-4)
    agnostic = {k: np_(v) for k, v in detect_case("class_agnostic").items()}
    assert agnostic["num_detections"].tolist() == [1] and agnostic["classes"][0, 0] == 1
    assert agnostic["boxes"].shape == (1, 100, 4)
    lower = {k: np_(v) for k, v in detect_case("per_class", score_threshold=0.03).items()}
    assert lower["num_detections"].tolist() == [3] and lower["classes"][0, 2] == 1


def test_detect_spec_validation():
    with pytest.raises(ValueError, match="Unknown nms 'soft'"):
        DetectionSpec(nms="soft")


def test_two_boxes_with_the_same_best_anchor_leave_it_to_one_of_them():
    anchors = np.array([[0, 0, 10, 10], [100, 100, 110, 110]], "float32")
    gt_boxes = np.array([[[0, 0, 10, 12], [0, 0, 12, 10], [0, 0, 0, 0]]], "float32")
    classes, *_ = (np_(t) for t in assign_targets(anchors, gt_boxes, np.array([[1, 2, -1]], "int32")))
    assert classes[0, 0] in (1, 2) and classes[0, 1] == -1
