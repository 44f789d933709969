import numpy as np

from spinenet_tf.viz.detections import (
    CAPTION_HEIGHT,
    MASK_OPACITY,
    PANEL_GAP,
    class_colour,
    draw_detections,
    draw_ground_truth_and_detections,
)

GREY = 90


def grey_image(height=60, width=80):
    return np.full((height, width, 3), GREY, np.uint8)


def colour_at(picture, y, x):
    return tuple(int(v) for v in np.asarray(picture)[y, x])


def test_boxes_are_drawn_in_their_class_colour_and_low_scores_are_left_out():
    detections = {
        "boxes": np.array([[30, 10, 50, 40], [5, 50, 25, 70]], np.float32),
        "scores": np.array([0.9, 0.2]),
        "classes": np.array([1, 2]),
    }
    picture = draw_detections(grey_image(), detections, {1: "cat", 2: "dog"}, min_score=0.5)
    assert colour_at(picture, 50, 25) == class_colour(1)  # bottom edge of the kept box
    assert colour_at(picture, 25, 60) == (GREY,) * 3  # the 0.2 box is not drawn
    assert not np.any(np.all(np.asarray(picture) == class_colour(2), axis=-1))


def test_ground_truth_and_detections_side_by_side():
    ground_truth = {"boxes": np.array([[30, 10, 50, 40]], np.float32), "classes": np.array([3])}
    detections = {"boxes": np.array([[5, 50, 25, 70]], np.float32), "scores": np.array([0.8]), "classes": [4]}
    picture = draw_ground_truth_and_detections(grey_image(), ground_truth, detections, min_score=0.5)
    assert picture.size == (2 * 80 + PANEL_GAP, 60 + CAPTION_HEIGHT)
    right = 80 + PANEL_GAP
    assert colour_at(picture, CAPTION_HEIGHT + 50, 25) == class_colour(3)  # ground truth, left
    assert colour_at(picture, CAPTION_HEIGHT + 50, right + 25) == (GREY,) * 3
    assert colour_at(picture, CAPTION_HEIGHT + 25, right + 60) == class_colour(4)  # detection, right
    assert colour_at(picture, CAPTION_HEIGHT + 25, 60) == (GREY,) * 3


def test_masks_are_filled_translucent_under_their_boxes_and_nowhere_else():
    left_half = np.zeros((28, 28), np.float32)
    left_half[:, :14] = 1.0
    boxes = np.array([[10, 10, 40, 50], [5, 60, 25, 75]], np.float32)
    plain = {"boxes": boxes, "scores": np.array([0.9, 0.2]), "classes": np.array([1, 2])}
    with_masks = {**plain, "masks": np.stack([left_half, np.ones((28, 28), np.float32)])}
    without = np.asarray(draw_detections(grey_image(), plain, min_score=0.5))
    picture = np.asarray(draw_detections(grey_image(), with_masks, min_score=0.5))

    # The kept box's left half (rows 10..39, columns 10..29) is tinted, except where its outline
    # and label are drawn on top; the 0.2 detection's mask is left out with its box.
    mask = np.zeros((60, 80), bool)
    mask[10:40, 10:30] = True
    untouched = np.all(without == GREY, axis=-1)
    np.testing.assert_array_equal(np.any(picture != without, axis=-1), mask & untouched)
    tint = np.round((1 - MASK_OPACITY) * GREY + MASK_OPACITY * np.array(class_colour(1))).astype(int)
    assert colour_at(picture, 30, 20) == tuple(tint)
    assert colour_at(picture, 25, 10) == class_colour(1)  # the box's left edge, drawn over its fill
