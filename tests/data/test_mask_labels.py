"""Instance-mask targets of the training pipeline (`train_dataset(mask_crop_size=...)`) and the
counted warnings about bad mask labels."""

import json
import logging
import math

import numpy as np
import tensorflow as tf
from PIL import Image
from pycocotools import mask as mask_utils

from spinenet_tf.data.augment import crop_masks
from spinenet_tf.data.coco import read_coco
from spinenet_tf.data.pipeline import coco_source, tfrecord_source, train_dataset
from spinenet_tf.data.tfrecord import encode_example
from spinenet_tf.layers.image_converter import MEAN_RGB, STDDEV_RGB
from tests.data.coco_fixture import write_coco

# float32 sample coordinates move the bilinear weights by ~1e-5 (1.3e-5 measured on random boxes in
# masks of up to 200 px); a wrong convention is off by 0.1 or more.
TOLERANCE = 1e-4
GREY = 40
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def reference_crop(mask, box, size):
    """The sampling convention written out cell by cell: cell i samples index
    y = ymin + (i + 0.5) * (ymax - ymin) / size - 0.5 (likewise x), bilinear, clamped to the edges."""
    height, width = mask.shape
    ymin, xmin, ymax, xmax = (float(v) for v in box)

    def value(y, x):
        y, x = min(max(y, 0.0), height - 1.0), min(max(x, 0.0), width - 1.0)
        y0, x0 = math.floor(y), math.floor(x)
        y1, x1 = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
        wy, wx = y - y0, x - x0
        return (
            (1 - wy) * (1 - wx) * mask[y0, x0]
            + (1 - wy) * wx * mask[y0, x1]
            + wy * (1 - wx) * mask[y1, x0]
            + wy * wx * mask[y1, x1]
        )

    crop = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            y = ymin + (i + 0.5) * (ymax - ymin) / size - 0.5
            x = xmin + (j + 0.5) * (xmax - xmin) / size - 0.5
            crop[i, j] = value(y, x)
    return crop


def rectangle(shape, x, y, w, h):
    mask = np.zeros(shape, bool)
    mask[y : y + h, x : x + w] = True
    return mask


def ellipse(shape, cy, cx, ry, rx):
    ys, xs = np.ogrid[: shape[0], : shape[1]]
    return ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1


def tight_box(mask):
    """[ymin, xmin, ymax, xmax] on pixel edges of a non-empty mask."""
    ys, xs = np.nonzero(mask)
    return np.array([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], np.float32)


def write_shapes(root, images):
    """images: [(file_name, [(category_id, colour, mask bool [H, W]), ...])], every image with objects.

    Paints each mask in its colour on grey (later ones on top) and writes the COCO file with
    each mask as an RLE segmentation and its tight box; returns (images_dir, annotations_file).
    """
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    data = {"images": [], "annotations": [], "categories": [{"id": c, "name": f"c{c}"} for c in range(1, 6)]}
    for image_id, (file_name, objects) in enumerate(images, start=1):
        height, width = objects[0][2].shape
        image = np.full((height, width, 3), GREY, np.uint8)
        for category, colour, mask in objects:
            image[mask] = colour
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            ymin, xmin, ymax, xmax = tight_box(mask).tolist()
            data["annotations"].append(
                {
                    "id": len(data["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [xmin, ymin, xmax - xmin, ymax - ymin],
                    "area": float(mask.sum()),
                    "iscrowd": 0,
                    "segmentation": {"counts": rle["counts"].decode(), "size": [height, width]},
                }
            )
        Image.fromarray(image).save(images_dir / file_name)
        data["images"].append({"id": image_id, "file_name": file_name, "height": height, "width": width})
    annotations_file = root / "instances.json"
    annotations_file.write_text(json.dumps(data))
    return images_dir, annotations_file


def edit_annotations(annotations_file, changes):
    """Applies {annotation id: {field: value or None to delete}} to a COCO file."""
    data = json.loads(annotations_file.read_text())
    for annotation in data["annotations"]:
        for field, value in changes.get(annotation["id"], {}).items():
            if value is None:
                annotation.pop(field)
            else:
                annotation[field] = value
    annotations_file.write_text(json.dumps(data))


def batches(dataset, count):
    return [
        (images.numpy(), {k: v.numpy() for k, v in labels.items()}) for images, labels in dataset.take(count)
    ]


def colour_mask(image, colour):
    """Pixels of a normalised training image that show `colour` exactly (up to float error)."""
    pixels = image * STDDEV_RGB + MEAN_RGB
    return np.abs(pixels - np.array(colour, np.float32)).max(axis=-1) < 0.5


def test_crop_masks_follows_the_sampling_convention_up_to_the_edges():
    rng = np.random.default_rng(0)
    masks = (rng.uniform(size=(4, 20, 30)) < 0.5).astype(np.uint8)
    # The whole mask; a box on the right edge; one smaller than the crop at the top-left corner
    # (samples before index 0 clamp to the first row and column); a fractional box inside.
    boxes = np.array(
        [[0, 0, 20, 30], [2.3, 27.1, 19.9, 30.0], [0.0, 0.0, 3.2, 4.1], [5.25, 7.5, 14.75, 21.0]], np.float32
    )
    crops = crop_masks(tf.constant(masks), tf.constant(boxes), 7).numpy()
    assert crops.shape == (4, 7, 7) and crops.dtype == np.float32
    for mask, box, crop in zip(masks, boxes, crops, strict=True):
        np.testing.assert_allclose(crop, reference_crop(mask, box, 7), atol=TOLERANCE)


def test_mask_targets_have_the_label_shapes_and_zero_padding(tmp_path):
    images = [
        ("a.png", 48, 64, [(1, [4, 4, 20, 20], 0), (3, [0, 0, 64, 48], 1)]),  # the crowd box has no target
        ("b.png", 64, 40, [(2, [10, 20, 12, 30], 0)]),
        ("c.png", 32, 32, [(1, [0, 0, 16, 16], 0), (2, [16, 16, 16, 16], 0)]),
        ("d.png", 40, 40, []),  # no objects: all padding
    ]
    source = coco_source(*write_coco(tmp_path, images), check_masks=True)
    for copy_paste_probability in (0.0, 1.0):
        dataset = train_dataset(
            source, 64, 3, max_boxes=5, copy_paste_probability=copy_paste_probability, mask_crop_size=8
        )
        crops = []
        for _, labels in batches(dataset, 4):
            masks, valid = labels["masks"], labels["classes"] >= 0
            assert masks.shape == (3, 5, 8, 8) and masks.dtype == np.float32
            assert (masks >= 0).all() and (masks <= 1).all()
            assert (masks[~valid] == 0).all()
            crops.append(masks[valid])
        # Rectangles filling their boxes: the crops are almost all ones (nearest-resized edges and
        # pasted-over corners aside). Over 4 batches: one batch of a few small objects can dip
        # under 0.8 (1 in 100 to 300), 4 together stayed over 0.88 in 200 trials.
        assert np.concatenate(crops).mean() > 0.8
        without = train_dataset(source, 64, 3, max_boxes=5, copy_paste_probability=copy_paste_probability)
        assert set(batches(without, 1)[0][1]) == {"boxes", "classes"}
    assert source.report.counts == {"no_annotations": 1}


def test_mask_targets_equal_the_sampling_convention_on_the_drawn_shapes(tmp_path):
    shape = (48, 64)
    objects = [
        (1, RED, ellipse(shape, 20.3, 35.7, 9.4, 14.2)),
        (2, GREEN, rectangle(shape, 0, 0, 20, 12)),  # at the top-left corner, smaller than the crop
        (3, BLUE, rectangle(shape, 52, 30, 12, 18)),  # at the right edge and the photo's bottom
    ]
    images_dir, annotations = write_shapes(tmp_path, [("a.png", objects)])
    # A fractional box (the ellipse's continuous extent) checks the half-pixel convention.
    edit_annotations(annotations, {1: {"bbox": [21.5, 10.9, 28.4, 18.8]}})
    boxes = [[10.9, 21.5, 29.7, 49.9], tight_box(objects[1][2]), tight_box(objects[2][2])]
    # Flip off and scale 1: the 48 x 64 photo lands unchanged at the top of the 64 x 64 square.
    dataset = train_dataset(
        coco_source(images_dir, annotations, check_masks=True),
        64,
        1,
        max_boxes=4,
        scale_range=(1.0, 1.0),
        flip=False,
        mask_crop_size=32,
    )
    ((_, labels),) = batches(dataset, 1)
    np.testing.assert_allclose(labels["boxes"][0, :3], boxes, atol=1e-4)
    for k, (_, _, mask) in enumerate(objects):
        padded = np.pad(mask, [[0, 16], [0, 0]]).astype(np.float32)
        np.testing.assert_allclose(
            labels["masks"][0, k], reference_crop(padded, boxes[k], 32), atol=TOLERANCE, err_msg=f"object {k}"
        )
    assert labels["masks"][0, 0].min() == 0 and labels["masks"][0, 0].max() == 1  # the ellipse is not its box
    assert (labels["masks"][0, 3] == 0).all()


def test_masks_flip_with_their_boxes_and_image(tmp_path):
    shape = (48, 64)
    triangle = np.tril(np.ones((24, 24), bool))  # asymmetric left-right
    mask = np.zeros(shape, bool)
    mask[10:34, 6:30] = triangle
    source = coco_source(*write_shapes(tmp_path, [("a.png", [(1, RED, mask)])]), check_masks=True)
    tf.random.set_seed(3)
    dataset = train_dataset(
        source, 64, 1, max_boxes=2, scale_range=(1.0, 1.0), shuffle_buffer=1, mask_crop_size=16
    )
    flips = set()
    for images, labels in batches(dataset, 10):
        box = labels["boxes"][0, 0]
        flipped = box[1] == 64 - 30
        np.testing.assert_array_equal(box, [10, 34, 34, 58] if flipped else [10, 6, 34, 30])
        flips.add(bool(flipped))
        shown = colour_mask(images[0], RED)
        photo = np.pad(mask, [[0, 16], [0, 0]])  # the 48 x 64 photo at the top of the square
        np.testing.assert_array_equal(shown, photo[:, ::-1] if flipped else photo)
        np.testing.assert_allclose(labels["masks"][0, 0], reference_crop(shown, box, 16), atol=TOLERANCE)
    assert flips == {False, True}


def test_copy_paste_drops_hidden_objects_and_cuts_occluded_masks(tmp_path):
    shape = (64, 64)
    first = [(1, RED, rectangle(shape, 10, 10, 8, 8)), (2, GREEN, rectangle(shape, 30, 30, 20, 16))]
    # Pasted onto the first image, the blue box covers the red one and the top-left of the green one.
    second = [(3, BLUE, rectangle(shape, 5, 5, 35, 30))]
    source = coco_source(*write_shapes(tmp_path, [("a.png", first), ("b.png", second)]), check_masks=True)
    tf.random.set_seed(0)
    dataset = train_dataset(
        source,
        64,
        2,
        max_boxes=4,
        scale_range=(1.0, 1.0),
        flip=False,
        copy_paste_probability=1.0,
        shuffle_buffer=2,
        mask_crop_size=16,
    )
    colours = {1: RED, 2: GREEN, 3: BLUE}
    full_green = reference_crop(first[1][2], tight_box(first[1][2]), 16)
    blue_on_top_seen = False
    for images, labels in batches(dataset, 8):
        for image, classes, boxes, masks in zip(images, labels["classes"], labels["boxes"], labels["masks"]):
            shown = {c: colour_mask(image, colour) for c, colour in colours.items()}
            # Objects left with no visible pixel are dropped; every other one is labelled once.
            assert sorted(classes[classes >= 0]) == sorted(c for c in colours if shown[c].any())
            for k in np.flatnonzero(classes >= 0):
                visible = shown[classes[k]]
                np.testing.assert_array_equal(boxes[k], tight_box(visible))
                np.testing.assert_allclose(masks[k], reference_crop(visible, boxes[k], 16), atol=TOLERANCE)
            if (shown[3] == second[0][2]).all() and shown[2].any():  # blue pasted over the first image
                blue_on_top_seen = True
                assert 1 not in classes  # the red box is hidden
                green = masks[list(classes).index(2)]
                assert green.sum() < full_green.sum() - 16  # the occluded corner is cut from the target
    assert blue_on_top_seen


def _bad_coco(tmp_path):
    """One image: a good ellipse, four objects whose masks must be box-filled, one crowd."""
    shape = (48, 64)
    objects = [
        (1, RED, ellipse(shape, 24, 12, 9, 9)),
        (2, GREEN, rectangle(shape, 24, 2, 12, 10)),
        (2, GREEN, rectangle(shape, 40, 2, 12, 10)),
        (3, BLUE, rectangle(shape, 24, 30, 16, 12)),
        (4, BLUE, rectangle(shape, 44, 30, 16, 12)),
        (5, GREEN, rectangle(shape, 0, 0, 64, 48)),
    ]
    images_dir, annotations = write_shapes(tmp_path, [("a.png", objects)])
    edit_annotations(
        annotations,
        {
            2: {"segmentation": None},  # no segmentation
            3: {"segmentation": [[40, 2, 52, 12]]},  # 4 numbers: a box to pycocotools, not a polygon
            4: {"segmentation": {"counts": "PPYo1", "size": [24, 32]}},  # an RLE of another size
            5: {"segmentation": [[44, 36, 52, 36, 60, 36]]},  # three points on a line: no pixel
            6: {"segmentation": None, "iscrowd": 1},  # crowds are never trained on: not counted
        },
    )
    return images_dir, annotations, objects


def test_bad_coco_masks_are_counted_when_read_and_box_filled(tmp_path, caplog):
    images_dir, annotations, objects = _bad_coco(tmp_path)
    assert read_coco(images_dir, annotations).report.counts == {}  # masks unchecked unless asked
    with caplog.at_level(logging.WARNING, logger="spinenet_tf.data"):
        source = coco_source(images_dir, annotations, check_masks=True)
    assert source.report.counts == {"missing_mask": 2, "mismatched_mask": 1, "empty_mask": 1}
    assert "annotation 4: RLE size [24, 32] in a 48x64 image" in caplog.text
    assert "annotation 5: segmentation covers no pixel" in caplog.text
    assert "2 x box-filled mask used: object has no usable segmentation" in source.report.summary()

    dataset = train_dataset(
        source, 64, 1, max_boxes=6, scale_range=(1.0, 1.0), flip=False, repeat=False, mask_crop_size=8
    )
    ((images, labels),) = batches(dataset, 2)
    assert images.shape == (1, 64, 64, 3) and labels["masks"].shape == (1, 6, 8, 8)
    np.testing.assert_array_equal(labels["classes"][0], [1, 2, 2, 3, 4, -1])
    np.testing.assert_array_equal(labels["masks"][0, 1:5], np.ones((4, 8, 8)))  # box-filled
    ellipse_box = tight_box(objects[0][2])
    np.testing.assert_allclose(
        labels["masks"][0, 0],
        reference_crop(np.pad(objects[0][2], [[0, 16], [0, 0]]).astype(float), ellipse_box, 8),
        atol=TOLERANCE,
    )


def test_coco_masks_of_another_size_than_the_file_are_counted_when_decoded(tmp_path, caplog):
    shape = (48, 64)
    images_dir, annotations = write_shapes(tmp_path, [("a.png", [(1, RED, rectangle(shape, 4, 4, 20, 20))])])
    data = json.loads(annotations.read_text())
    data["images"][0]["height"] = 40  # unverified, the JSON's size is used for the masks
    data["annotations"][0]["segmentation"] = [[4, 4, 24, 4, 24, 24, 4, 24]]
    annotations.write_text(json.dumps(data))
    source = coco_source(images_dir, annotations, verify_images=False, check_masks=True)
    assert source.report.counts == {}
    dataset = train_dataset(source, 64, 1, scale_range=(1.0, 1.0), flip=False, repeat=False, mask_crop_size=8)
    with caplog.at_level(logging.WARNING, logger="spinenet_tf.data"):
        ((_, labels),) = batches(dataset, 2)
    assert source.report.counts == {"mismatched_mask": 1}
    assert "image_id 1: object 0: masks 40x64 for image 48x64" in caplog.text
    np.testing.assert_array_equal(labels["masks"][0, 0], np.ones((8, 8)))  # box-filled


def test_bad_tfrecord_masks_are_counted_as_read_and_box_filled(tmp_path, caplog):
    shape = (48, 64)
    objects = [(1, RED, ellipse(shape, 24, 12, 9, 9)), (2, GREEN, rectangle(shape, 30, 10, 16, 24))]
    images_dir, annotations = write_shapes(tmp_path, [(f"{n}.png", objects) for n in range(5)])
    edit_annotations(annotations, {8: {"iscrowd": 1}})  # image 4's rectangle: crowds are not counted
    good = np.stack([mask for _, _, mask in objects]).astype(np.uint8)
    masks = {
        1: np.zeros((2, 50, 64), np.uint8),  # another size than the image
        2: good[:1],  # one mask for two objects
        3: np.stack([np.zeros(shape, np.uint8), good[1]]),  # the first is empty
        4: None,  # written without masks (its crowd box needs none)
        5: good,
    }
    path = str(tmp_path / "x.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for record in read_coco(images_dir, annotations).records:
            encoded = open(record.path, "rb").read()
            writer.write(encode_example(record, encoded, b"png", masks[record.image_id]).SerializeToString())
    source = tfrecord_source(path)
    dataset = train_dataset(
        source,
        64,
        5,
        max_boxes=3,
        scale_range=(1.0, 1.0),
        flip=False,
        shuffle_buffer=1,
        repeat=False,
        mask_crop_size=8,
    )
    with caplog.at_level(logging.WARNING, logger="spinenet_tf.data"):
        ((images, labels),) = batches(dataset, 2)
    assert images.shape == (5, 64, 64, 3) and labels["masks"].shape == (5, 3, 8, 8)
    assert source.report.counts == {"mismatched_mask": 4, "empty_mask": 1, "missing_mask": 1}
    assert "image_id 3: object 0: mask PNG has no pixels" in caplog.text
    assert "image_id 4: object 0: 0 mask PNGs for 2 objects" in caplog.text
    assert "mask PNG 50x64 for image 48x64" in caplog.text and "1 mask PNGs for 2 objects" in caplog.text

    # In file order; box-filled masks crop to ones (the rectangle's own mask does too).
    ellipse_crop = reference_crop(np.pad(good[0], [[0, 16], [0, 0]]).astype(float), tight_box(good[0]), 8)
    np.testing.assert_array_equal(labels["masks"][:4, 0], np.ones((4, 8, 8)))
    np.testing.assert_allclose(labels["masks"][4, 0], ellipse_crop, atol=TOLERANCE)
    np.testing.assert_array_equal(labels["masks"][[0, 1, 2, 4], 1], np.ones((4, 8, 8)))
    np.testing.assert_array_equal(labels["classes"][:, 1], [2, 2, 2, -1, 2])
    assert (labels["masks"][3, 1:] == 0).all() and (labels["masks"][:, 2] == 0).all()  # padding
