"""Two-stage (Mask R-CNN) detection ops against hand-computed cases, on TensorFlow and JAX."""

import math

import numpy as np
from keras import ops

from spinenet_tf.detection.box_coder import decode_boxes, encode_boxes
from spinenet_tf.detection.postprocess import DetectionSpec, select_detections
from spinenet_tf.detection.proposals import ProposalSpec, generate_proposals
from spinenet_tf.detection.roi_align import crop_mask_targets, multilevel_roi_align, roi_levels
from spinenet_tf.detection.sampling import sample_balanced

WEIGHTS = [10.0, 10.0, 5.0, 5.0]


def to_numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


def reference_level(box, min_level, max_level):
    size = math.sqrt((box[2] - box[0]) * (box[3] - box[1]))
    return int(np.clip(math.floor(4 + math.log2(max(size, 1e-6) / 224)), min_level, max_level))


def reference_bilinear(feature, y, x):
    """feature [H, W, C] at (y, x), row r at coordinate r, coordinates clamped to the map."""
    height, width = feature.shape[:2]
    y, x = min(max(y, 0.0), height - 1.0), min(max(x, 0.0), width - 1.0)
    y0, x0 = math.floor(y), math.floor(x)
    y1, x1 = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
    ly, lx = y - y0, x - x0
    return (
        feature[y0, x0] * (1 - ly) * (1 - lx)
        + feature[y0, x1] * (1 - ly) * lx
        + feature[y1, x0] * ly * (1 - lx)
        + feature[y1, x1] * ly * lx
    )


def reference_roi_align(features, boxes, output_size, min_level):
    max_level = min_level + len(features) - 1
    batch, num_boxes = boxes.shape[:2]
    out = np.zeros((batch, num_boxes, output_size, output_size, features[0].shape[-1]))
    for b in range(batch):
        for r, box in enumerate(boxes[b]):
            level = reference_level(box, min_level, max_level)
            stride = 2.0**level
            feature = features[level - min_level][b]
            step_y = (box[2] - box[0]) / stride / output_size
            step_x = (box[3] - box[1]) / stride / output_size
            for i in range(output_size):
                for j in range(output_size):
                    y = box[0] / stride + (i + 0.5) * step_y
                    x = box[1] / stride + (j + 0.5) * step_x
                    out[b, r, i, j] = reference_bilinear(feature, y, x)
    return out


def test_roi_levels_by_hand():
    sizes = {224.0: 4, 112.0: 3, 448.0: 5, 223.9: 3, 447.9: 4, 0.5: 2, 5000.0: 6}
    boxes = [[10.0, 20.0, 10.0 + s, 20.0 + s] for s in sizes]
    boxes.append([0.0, 0.0, 112.0, 448.0])  # sqrt(112 * 448) = 224
    boxes.append([5.0, 5.0, 5.0, 9.0])  # no area: the smallest level
    expected = [*sizes.values(), 4, 2]
    np.testing.assert_array_equal(to_numpy(roi_levels(np.array(boxes, "float32"), 2, 6)), expected)


ALIGN_BOXES = np.array(
    [
        [
            [10.0, 20.0, 110.0, 150.0],  # sqrt(100 * 130) = 114: level 3
            [5.3, 7.1, 8.2, 9.9],  # tiny: clipped to level 3
            [100.0, 50.0, 400.0, 350.0],  # 300: level 4
            [12.0, 0.0, 256.0, 256.0],  # 250, touches the bottom-right edge: level 4
        ],
        [
            [0.0, 0.0, 256.0, 256.0],  # the whole image, 256: level 4
            [30.5, 60.25, 90.0, 200.0],  # 91: level 3
            [0.0, 0.0, 600.0, 600.0],  # 600, past the image: level 5, clamped to the edge
            [200.0, 180.0, 255.0, 255.0],  # 64, bottom-right corner: level 3
        ],
    ],
    "float32",
)


def pyramid(batch, channels, seed):
    rng = np.random.default_rng(seed)  # 256 px input, levels 3..5
    return [
        rng.normal(size=(batch, 256 // 2**level, 256 // 2**level, channels)).astype("float32")
        for level in (3, 4, 5)
    ]


def test_roi_align_samples_bin_centres_of_the_right_level():
    # Each level holds its own row coordinate (plus 100 * level): the samples read back
    # the coordinates, clamped to the map, and which level was read.
    features = []
    for level in (3, 4, 5):
        size = 256 // 2**level
        rows = np.broadcast_to(np.arange(size, dtype="float32")[:, None], (size, size))
        columns = rows.T
        features.append(
            np.broadcast_to(
                np.stack([rows, columns, np.full_like(rows, 100.0 * level)], -1), (2, size, size, 3)
            )
        )
    out = to_numpy(multilevel_roi_align(features, ALIGN_BOXES, 4, min_level=3))
    assert out.shape == (2, 4, 4, 4, 3)
    np.testing.assert_array_equal(out[..., 0, 0, 2], [[300, 300, 400, 400], [400, 300, 500, 300]])
    # Box [10, 20, 110, 150] on level 3 (stride 8): rows 1.25 + (i + 0.5) * 12.5 / 4.
    np.testing.assert_allclose(out[0, 0, :, 0, 0], 1.25 + (np.arange(4) + 0.5) * 3.125, rtol=1e-6)
    np.testing.assert_allclose(out[0, 0, 0, :, 1], 2.5 + (np.arange(4) + 0.5) * 4.0625, rtol=1e-6)
    # Box [12, 0, 256, 256] on level 4 (16 x 16): the last bin's row 0.75 + 3.5 * 3.8125 = 14.09,
    # its column 3.5 * 4 = 14; the [0, 0, 600, 600] box on level 5 (8 x 8) stops at row 7.
    np.testing.assert_allclose(out[0, 3, :, 0, 0], 0.75 + (np.arange(4) + 0.5) * 3.8125, rtol=1e-6)
    np.testing.assert_allclose(out[0, 3, 0, :, 1], (np.arange(4) + 0.5) * 4.0, rtol=1e-6)
    np.testing.assert_allclose(
        out[1, 2, :, 0, 0], np.minimum((np.arange(4) + 0.5) * 600 / 32 / 4, 7.0), rtol=1e-6
    )


def test_roi_align_matches_a_direct_computation():
    features = pyramid(2, 3, seed=0)
    out = to_numpy(multilevel_roi_align(features, ALIGN_BOXES, 5, min_level=3))
    expected = reference_roi_align(features, ALIGN_BOXES.astype("float64"), 5, min_level=3)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    # The batch index picks the image: the same boxes on the images swapped swap the output.
    swapped = to_numpy(multilevel_roi_align([f[::-1] for f in features], ALIGN_BOXES[::-1], 5, min_level=3))
    np.testing.assert_allclose(swapped, out[::-1], rtol=1e-5, atol=1e-5)
    assert np.abs(out[0] - reference_roi_align([f[::-1] for f in features], ALIGN_BOXES, 5, 3)[0]).max() > 0.1


CROP = 8
GT_BOX = np.array([10.0, 20.0, 50.0, 60.0], "float32")  # 40 x 40 px: 5 px cells


def rectangle_crop(top, left, bottom, right):
    crop = np.zeros((CROP, CROP), "float32")
    crop[top:bottom, left:right] = 1.0
    return crop


def block_mean(crop):
    """Means of 2 x 2 cells: what a half-resolution RoI on the same box samples."""
    return crop.reshape(CROP // 2, 2, CROP // 2, 2).mean(axis=(1, 3))


def mask_targets(crop, roi, output_size):
    out = crop_mask_targets(
        crop[None, None],
        GT_BOX[None, None],
        np.array([[roi]], "float32"),
        np.zeros((1, 1), "int32"),
        output_size,
    )
    return to_numpy(out)[0, 0]


def test_mask_targets_of_the_ground_truth_box_resample_its_crop():
    crop = rectangle_crop(1, 3, 6, 8)
    np.testing.assert_allclose(mask_targets(crop, GT_BOX, CROP), crop, atol=1e-6)
    np.testing.assert_allclose(mask_targets(crop, GT_BOX, CROP // 2), block_mean(crop), atol=1e-6)
    assert set(np.unique(block_mean(crop))) == {0.0, 0.25, 0.5, 1.0}


def test_mask_targets_are_zero_where_the_roi_leaves_the_box():
    crop = rectangle_crop(1, 3, 6, 8)
    # Three times the box around it, 12 bins of 10 px: bins 4..7 cover the box.
    roi = GT_BOX + np.array([-40.0, -40.0, 40.0, 40.0], "float32")
    expected = np.zeros((12, 12), "float32")
    expected[4:8, 4:8] = block_mean(crop)
    np.testing.assert_allclose(mask_targets(crop, roi, 12), expected, atol=1e-6)
    # Shifted right by half the box: its left half sees the crop's right half, the rest is outside.
    shifted = GT_BOX + np.array([0.0, 20.0, 0.0, 20.0], "float32")
    expected = np.zeros((CROP, CROP), "float32")
    expected[:, :4] = crop[:, 4:]
    np.testing.assert_allclose(mask_targets(crop, shifted, CROP), expected, atol=1e-6)
    assert expected[:, :4].sum() == 20  # the pattern is not empty


def test_mask_targets_take_the_matched_ground_truth_of_their_image():
    rng = np.random.default_rng(1)
    masks = rng.uniform(size=(2, 3, CROP, CROP)).astype("float32")
    corners = rng.uniform(0, 100, (2, 3, 2))
    gt_boxes = np.concatenate([corners, corners + rng.uniform(20, 60, (2, 3, 2))], -1).astype("float32")
    matched = np.array([[2, 0, 1, 2], [1, 1, 0, 2]], "int32")
    rois = np.take_along_axis(gt_boxes, matched[..., None], axis=1)
    out = to_numpy(crop_mask_targets(masks, gt_boxes, rois, matched, CROP))
    np.testing.assert_allclose(out, np.take_along_axis(masks, matched[..., None, None], axis=1), atol=1e-5)


def check_sample(positive, negative, num_samples, fraction, seed):
    """Checks one sample_balanced draw against its contract; returns the chosen positives."""
    index, is_positive, valid = (
        to_numpy(x) for x in sample_balanced(positive, negative, num_samples, fraction, seed)
    )
    assert index.shape == is_positive.shape == valid.shape == (positive.shape[0], num_samples)
    chosen_positives = []
    for b in range(positive.shape[0]):
        num_positive = min(positive[b].sum(), int(num_samples * fraction))
        num_valid = min(num_samples, num_positive + negative[b].sum())
        # Positives first, then negatives, then padding.
        np.testing.assert_array_equal(is_positive[b], np.arange(num_samples) < num_positive)
        np.testing.assert_array_equal(valid[b], np.arange(num_samples) < num_valid)
        assert positive[b][index[b, :num_positive]].all()
        assert negative[b][index[b, num_positive:num_valid]].all()
        assert len(set(index[b, :num_valid])) == num_valid
        chosen_positives.append(frozenset(index[b, :num_positive]))
    return chosen_positives


def test_sample_balanced_over_many_seeds():
    rng = np.random.default_rng(2)
    labels = rng.choice(3, size=(3, 60), p=[0.3, 0.5, 0.2])  # 0 positive, 1 negative, 2 ignored
    labels[1, :] = 1
    labels[1, [7, 33]] = 0  # image 1: two positives only, negatives fill the rest
    labels[2, :] = 2
    labels[2, [3, 50]] = 0
    labels[2, [4, 9, 20]] = 1  # image 2: five candidates for sixteen samples
    positive, negative = labels == 0, labels == 1
    draws = [check_sample(positive, negative, 16, 0.25, seed) for seed in range(12)]
    assert len({draw[0] for draw in draws}) > 6  # image 0's 4 of ~18 positives vary with the seed
    assert {draw[1] for draw in draws} == {frozenset({7, 33})}


def test_sample_balanced_where_everything_is_scarce():
    positive = np.zeros((1, 6), bool)
    negative = np.zeros((1, 6), bool)
    positive[0, 5], negative[0, [0, 2]] = True, True
    index, is_positive, valid = (to_numpy(x) for x in sample_balanced(positive, negative, 8, 0.5, 3))
    np.testing.assert_array_equal(valid[0], [True] * 3 + [False] * 5)
    np.testing.assert_array_equal(is_positive[0], [True] + [False] * 7)
    assert index[0, 0] == 5 and set(index[0, 1:3]) == {0, 2}


def test_box_coding_with_weights():
    anchors = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], "float32")
    boxes = np.array([[2, 2, 12, 12], [0, 0, 20, 10]], "float32")
    np.testing.assert_allclose(
        to_numpy(encode_boxes(boxes, anchors, WEIGHTS)), [[2, 2, 0, 0], [5, 0, 5 * math.log(2), 0]], atol=1e-5
    )
    rng = np.random.default_rng(3)
    corner = rng.uniform(0, 100, (40, 2))
    anchors = np.concatenate([corner, corner + rng.uniform(5, 50, (40, 2))], 1).astype("float32")
    corner = rng.uniform(0, 100, (40, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(5, 50, (40, 2))], 1).astype("float32")
    plain = to_numpy(encode_boxes(boxes, anchors))
    weighted = to_numpy(encode_boxes(boxes, anchors, WEIGHTS))
    np.testing.assert_allclose(weighted, plain * np.array(WEIGHTS), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(to_numpy(decode_boxes(weighted, anchors, WEIGHTS)), boxes, atol=1e-3)
    # The weights matter on decoding: the same targets read without them move the box.
    assert np.abs(to_numpy(decode_boxes(weighted, anchors)) - boxes).max() > 1.0


def per_class_case():
    """Two candidates x (background, 1, 2) on a 100 x 100 image, each class with its own box."""
    scores = np.array([[0.95, 0.8, 0.1], [0.9, 0.3, 0.7]], "float32")
    boxes = np.array(
        [
            [[0, 0, 100, 100], [10, 10, 30, 30], [50, 50, 120, 90]],
            [[0, 0, 50, 50], [11, 11, 31, 31], [60, 10, 80, 40]],
        ],
        "float32",
    )
    # Image 1 holds the same candidates in the other order.
    return np.stack([scores, scores[::-1]]), np.stack([boxes, boxes[::-1]])


def test_select_detections_reports_each_class_with_its_own_box():
    scores, boxes = per_class_case()
    out = {
        k: to_numpy(v)
        for k, v in select_detections(scores, boxes, (100, 100), DetectionSpec(max_detections=5)).items()
    }
    # Class 1's second box (IoU 0.82 with its first) is suppressed; class 2's first is clipped.
    for b in range(2):
        assert out["num_detections"][b] == 3
        np.testing.assert_allclose(out["scores"][b], [0.8, 0.7, 0.1, 0, 0], rtol=1e-6)
        np.testing.assert_array_equal(out["classes"][b], [1, 2, 2, 0, 0])
        np.testing.assert_allclose(
            out["boxes"][b],
            [[10, 10, 30, 30], [60, 10, 80, 40], [50, 50, 100, 90], [0, 0, 0, 0], [0, 0, 0, 0]],
        )


def test_select_detections_class_agnostic_takes_the_best_class_box():
    scores, boxes = per_class_case()
    spec = DetectionSpec(max_detections=3, nms="class_agnostic")
    out = {k: to_numpy(v) for k, v in select_detections(scores, boxes, (100, 100), spec).items()}
    for b in range(2):
        assert out["num_detections"][b] == 2
        np.testing.assert_array_equal(out["classes"][b], [1, 2, 0])
        np.testing.assert_allclose(out["scores"][b], [0.8, 0.7, 0.0], rtol=1e-6)
        np.testing.assert_allclose(out["boxes"][b], [[10, 10, 30, 30], [60, 10, 80, 40], [0, 0, 0, 0]])


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


PROPOSAL_ANCHORS = [
    np.array([[0, 0, 20, 20], [1, 1, 21, 21], [40, 40, 60, 60]], "float32"),  # "level 2"
    np.array([[0, 0, 40, 40], [50, 0, 90, 40]], "float32"),  # "level 3"
]


def proposals(logits, deltas, spec):
    logits = [np.array(x, "float32") for x in logits]
    return [to_numpy(x) for x in generate_proposals(logits, deltas, PROPOSAL_ANCHORS, (64, 64), spec)]


def test_generate_proposals_by_hand():
    deltas = [np.zeros((2, 3, 4), "float32"), np.zeros((2, 2, 4), "float32")]
    deltas[0][:, 2] = [0.5, 0.0, 0.0, 0.0]  # anchor [40, 40, 60, 60] moves down by 10 px
    # Image 0: [1, 1, 21, 21] (IoU 0.82) loses to [0, 0, 20, 20]; image 1 ranks level 2 the other way.
    logits = [[[2.0, 1.0, -1.0], [-1.0, 1.0, 2.0]], [[1.5, 0.5], [-2.0, 0.0]]]
    boxes, scores, valid = proposals(logits, deltas, ProposalSpec(pre_nms_top_k=3, num_proposals=6))
    # 2 levels x min(6, 3) slots: 3 + 2 candidates, one suppressed, the rest invalid padding.
    assert boxes.shape == (2, 6, 4)
    np.testing.assert_array_equal(valid, [[True] * 4 + [False] * 2] * 2)
    np.testing.assert_allclose(
        scores[0], [sigmoid(2), sigmoid(1.5), sigmoid(0.5), sigmoid(-1), 0, 0], rtol=1e-6
    )
    np.testing.assert_allclose(  # decoded, clipped to the 64 x 64 image, best first
        boxes[0],
        [[0, 0, 20, 20], [0, 0, 40, 40], [50, 0, 64, 40], [50, 40, 64, 60], [0] * 4, [0] * 4],
        atol=1e-4,
    )
    np.testing.assert_allclose(scores[1], [sigmoid(2), sigmoid(1), sigmoid(0), sigmoid(-2), 0, 0], rtol=1e-6)
    np.testing.assert_allclose(
        boxes[1],
        [[50, 40, 64, 60], [1, 1, 21, 21], [50, 0, 64, 40], [0, 0, 40, 40], [0] * 4, [0] * 4],
        atol=1e-4,
    )
    # Fewer proposals: the best three; a smaller pre-NMS top-k drops image 0's worst level-2 anchor.
    boxes, scores, valid = proposals(logits, deltas, ProposalSpec(pre_nms_top_k=2, num_proposals=3))
    assert valid.all()
    np.testing.assert_allclose(scores[0], [sigmoid(2), sigmoid(1.5), sigmoid(0.5)], rtol=1e-6)
    np.testing.assert_allclose(boxes[0], [[0, 0, 20, 20], [0, 0, 40, 40], [50, 0, 64, 40]], atol=1e-4)
    boxes, scores, valid = proposals(logits, deltas, ProposalSpec(pre_nms_top_k=2, num_proposals=4))
    np.testing.assert_array_equal(valid[0], [True, True, True, False])
