import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from spinenet_tf.data import augment
from spinenet_tf.data.copy_paste import boxes_from_masks, paste
from spinenet_tf.data.pipeline import decode
from tests.data.coco_fixture import COLOURS, rectangle_image


def colour_box(image, colour, tolerance=60):
    """Tight [ymin, xmin, ymax, xmax] (pixel edges) of the pixels close to `colour`, or None."""
    close = np.abs(image.astype(np.float32) - colour).max(axis=-1) < tolerance
    ys, xs = np.nonzero(close)
    return None if len(ys) == 0 else np.array([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], np.float32)


@pytest.mark.parametrize("seed", range(8))
def test_flip_and_scale_jitter_keep_boxes_on_their_pixels(seed):
    tf.random.set_seed(seed)
    coco_boxes = [[10, 20, 30, 16], [70, 50, 20, 24]]
    image = tf.constant(rectangle_image(96, 128, coco_boxes))
    boxes = tf.constant([[y, x, y + h, x + w] for x, y, w, h in coco_boxes], tf.float32)
    flipped, boxes, _ = augment.random_flip(image, boxes)
    out, out_boxes, _, keep = augment.scale_jitter_crop(flipped, boxes, None, 64, (0.5, 2.0))
    out = out.numpy()
    assert out.shape == (64, 64, 3)
    kept = np.nonzero(keep.numpy())[0]
    for box, k in zip(out_boxes.numpy(), kept):
        drawn = colour_box(out, COLOURS[k])
        assert drawn is not None, (seed, k)
        # Bilinear resizing blurs edges by about a pixel of the output.
        np.testing.assert_allclose(drawn, box, atol=1.6, err_msg=f"seed {seed}, object {k}")
    for k in set(range(2)) - set(kept):
        assert colour_box(out, COLOURS[k], tolerance=20) is None  # dropped boxes are really out of view


def test_pad_labels_pads_with_minus_one_and_cuts_extra():
    boxes, classes = augment.pad_labels(tf.ones([3, 4]), tf.constant([1, 2, 3]), 5)
    np.testing.assert_array_equal(classes, [1, 2, 3, -1, -1])
    assert boxes.shape == (5, 4) and float(tf.reduce_sum(boxes[3:])) == 0
    _, classes = augment.pad_labels(tf.ones([3, 4]), tf.constant([1, 2, 3]), 2)
    np.testing.assert_array_equal(classes, [1, 2])


def _example(image, boxes, classes):
    masks = np.zeros((len(boxes), *image.shape[:2]), np.uint8)
    for k, (y0, x0, y1, x1) in enumerate(boxes):
        masks[k, y0:y1, x0:x1] = 1
    return {
        "image": tf.constant(image, tf.float32),
        "boxes": tf.constant(boxes, tf.float32),
        "classes": tf.constant(classes, tf.int32),
        "masks": tf.constant(masks),
    }


def test_copy_paste_updates_occluded_boxes_and_drops_hidden_objects():
    target = _example(np.zeros((32, 32, 3)), [[0, 0, 10, 20], [20, 20, 24, 24], [0, 0, 0, 0]], [1, 2, -1])
    source = _example(np.full((32, 32, 3), 200.0), [[0, 10, 12, 32], [18, 18, 26, 26]], [3, 4])
    result = {k: v.numpy() for k, v in paste(target, source, probability=1.0, object_probability=1.0).items()}
    # Object 1 loses its right half to pasted object 3; object 2 is hidden under 4 and dropped.
    np.testing.assert_array_equal(result["classes"], [1, -1, -1, 3, 4])
    np.testing.assert_array_equal(result["boxes"][0], [0, 0, 10, 10])
    np.testing.assert_array_equal(result["boxes"][3:], [[0, 10, 12, 32], [18, 18, 26, 26]])
    assert (result["image"][0:12, 10:32] == 200).all() and (result["image"][0:10, 0:10] == 0).all()
    # Masks stay consistent with boxes.
    np.testing.assert_array_equal(
        boxes_from_masks(tf.constant(result["masks"][:1])).numpy(), [[0, 0, 10, 10]]
    )


def test_copy_paste_with_probability_zero_changes_nothing():
    target = _example(np.zeros((16, 16, 3)), [[2, 2, 8, 8]], [1])
    source = _example(np.ones((16, 16, 3)), [[0, 0, 16, 16]], [2])
    result = paste(target, source, probability=0.0)
    np.testing.assert_array_equal(result["classes"].numpy(), [1, -1])
    assert float(tf.reduce_max(result["image"])) == 0.0


def _png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["gray", "rgba", "gray16", "jpeg"])
def test_decode_turns_any_image_into_rgb_uint8(kind):
    gray = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (8, 1))  # 8 x 16
    if kind == "gray":
        data = _png(gray)
    elif kind == "rgba":
        data = _png(np.dstack([gray, gray, gray, np.full_like(gray, 7)]))
    elif kind == "gray16":
        data = _png(gray.astype(np.uint16) * 257)
    else:
        buffer = io.BytesIO()
        Image.fromarray(gray).save(buffer, format="JPEG", quality=100)
        data = buffer.getvalue()
    example = {
        "encoded": tf.constant(data),
        "image_id": tf.constant(1, tf.int64),
        "boxes": tf.constant([[0.0, 0.0, 0.5, 0.25]]),
        "classes": tf.constant([1]),
        "is_crowd": tf.constant([False]),
    }
    decoded = decode(example)
    image = decoded["image"].numpy()
    assert image.shape == (8, 16, 3) and image.dtype == np.uint8
    np.testing.assert_allclose(image[..., 1], gray, atol=8 if kind == "jpeg" else 1)
    np.testing.assert_array_equal(decoded["boxes"].numpy(), [[0, 0, 4, 4]])
