import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from spinenet_tf.data import augment
from spinenet_tf.data.copy_paste import boxes_from_masks, choose_objects, paste
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
    chosen = choose_objects(source["classes"], probability=1.0, object_probability=1.0)
    result = {k: v.numpy() for k, v in paste(target, source, chosen).items()}
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
    chosen = choose_objects(source["classes"], probability=0.0, object_probability=1.0)
    assert not chosen.numpy().any()
    result = paste(target, source, chosen)
    np.testing.assert_array_equal(result["classes"].numpy(), [1, -1])
    assert float(tf.reduce_max(result["image"])) == 0.0


def test_chosen_objects_are_real_ones_each_with_its_probability():
    classes = tf.constant([1, 2, -1, 3] * 500)
    assert choose_objects(classes, 1.0, 1.0).numpy().tolist() == [True, True, False, True] * 500
    tf.random.set_seed(0)
    chosen = np.stack([choose_objects(classes, 0.5, 0.5).numpy() for _ in range(200)])
    assert not chosen[:, 2::4].any()
    applied = chosen.any(axis=1)  # 1500 real objects: none chosen by chance has odds of 2^-1500
    assert 0.35 < applied.mean() < 0.65
    assert 0.45 < chosen[applied][:, [0, 1, 3]].mean() < 0.55


def _reference_paste(target, source, chosen):
    """Copy-paste written out on NumPy arrays: every mask composited and cut, every occluded
    target's box recomputed from what is left of its mask."""
    target, source = ({k: np.asarray(v) for k, v in e.items()} for e in (target, source))
    pasted = source["masks"] * chosen[:, None, None]
    alpha = pasted.max(axis=0, initial=0)
    remaining = target["masks"] * (1 - alpha)
    boxes, classes = target["boxes"].copy(), target["classes"].copy()
    for k in range(len(classes)):
        if (target["masks"][k] * alpha).any():
            ys, xs = np.nonzero(remaining[k])
            boxes[k] = [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1] if len(ys) else 0
            classes[k] = classes[k] if len(ys) else -1
    return {
        "image": np.where(alpha[:, :, None] > 0, source["image"], target["image"]),
        "boxes": np.concatenate([boxes, np.where(chosen[:, None], source["boxes"], 0)]),
        "classes": np.concatenate([classes, np.where(chosen, source["classes"], -1)]),
        "masks": np.concatenate([remaining, pasted]),
    }


def _random_objects(rng, size, count):
    """An example of `count` slots: random rectangles and blobs, some padding (class -1, no mask)."""
    masks = np.zeros((count, size, size), np.uint8)
    classes = np.full(count, -1, np.int32)
    boxes = np.zeros((count, 4), np.float32)
    for k in range(count):
        if rng.uniform() < 0.2:
            continue
        y0, x0 = rng.integers(0, size - 2, 2)
        y1, x1 = y0 + rng.integers(1, size - y0), x0 + rng.integers(1, size - x0)
        masks[k, y0:y1, x0:x1] = rng.uniform(size=(y1 - y0, x1 - x0)) < rng.choice([0.5, 1.0])
        classes[k], boxes[k] = rng.integers(1, 5), [y0, x0, y1, x1]
    image = rng.uniform(0, 255, (size, size, 3)).astype(np.float32)
    return {"image": image, "boxes": boxes, "classes": classes, "masks": masks}


@pytest.mark.parametrize("seed", range(10))
def test_copy_paste_equals_the_reference_formulation(seed):
    """Reading only the chosen and occluded objects' masks (and none when nothing is chosen)
    gives the same pixels, boxes, classes and masks as compositing and cutting every one."""
    rng = np.random.default_rng(seed)
    count = int(rng.integers(0, 6))
    for _ in range(4):
        target, source = _random_objects(rng, 24, count), _random_objects(rng, 24, count)
        chosen = (rng.uniform(size=count) < 0.6) & (source["classes"] >= 0)
        expected = _reference_paste(target, source, chosen)
        tensors = [{k: tf.constant(v) for k, v in e.items()} for e in (target, source)]
        for with_masks in (True, False):
            result = paste(*tensors, tf.constant(chosen), with_masks)
            assert set(result) == (set(expected) if with_masks else set(expected) - {"masks"})
            for key, value in result.items():
                np.testing.assert_array_equal(value.numpy(), expected[key], err_msg=f"{key}, seed {seed}")


@pytest.mark.parametrize("seed", range(12))
def test_masks_read_through_their_grid_equal_masks_resized_with_the_image(seed):
    """Flips and scale jitter move only the masks' grid. Reading the masks through it, whole or
    at a crop's sampled points, gives exactly the masks flipped, resized (nearest neighbour)
    with the image, cropped and padded: the formulation the grid replaces."""
    rng = np.random.default_rng(seed)
    height, width = (int(n) for n in rng.integers(5, 90, 2))
    output_size = int(rng.integers(8, 64))
    masks = (rng.uniform(size=(4, height, width)) < 0.3).astype(np.uint8)
    corners = np.sort(rng.uniform(0, 1, (4, 2, 2)), axis=1) * [height, width]
    boxes = tf.constant(corners.reshape(4, 4), tf.float32)
    image = tf.constant(rng.uniform(0, 255, (height, width, 3)), tf.float32)
    rows, cols = augment.pixel_grid((height, width))
    flipped = masks[:, :, ::-1] if seed % 2 else masks
    grid = (rows, cols[::-1]) if seed % 2 else (rows, cols)

    tf.random.set_seed(seed)
    out_image, out_boxes, grid, keep = augment.scale_jitter_crop(image, boxes, grid, output_size, (0.1, 3.0))
    tf.random.set_seed(seed)  # the same draws, and the reference formulation
    window = augment.random_window(tf.constant([height, width]), output_size, (0.1, 3.0))
    new_size = [int(window["height"]), int(window["width"])]
    y, x = int(window["offset_y"]), int(window["offset_x"])

    def cropped(resized):
        window = resized[y : y + output_size, x : x + output_size]
        return tf.image.pad_to_bounding_box(window, 0, 0, output_size, output_size).numpy()

    np.testing.assert_array_equal(out_image, cropped(tf.image.resize(image, new_size)))  # same draws
    resized = tf.image.resize(np.transpose(flipped, [1, 2, 0]), new_size, method="nearest")
    expected = np.transpose(cropped(resized), [2, 0, 1])
    np.testing.assert_array_equal(augment.resample_masks(masks, grid), expected)
    kept = masks[keep.numpy()]
    crops = augment.crop_masks(kept, out_boxes, 7, grid)
    np.testing.assert_array_equal(crops, augment.crop_masks(expected[keep.numpy()], out_boxes, 7))


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
