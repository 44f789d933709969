import types

import numpy as np
import pytest
import tensorflow as tf

from spinenet_tf.data.coco import read_coco
from spinenet_tf.data.pipeline import (
    coco_source,
    decode,
    eval_dataset,
    make_source,
    tfrecord_source,
    train_dataset,
    unpad,
)
from spinenet_tf.data.tfrecord import coco_to_tfrecord
from spinenet_tf.errors import DataError
from tests.data.coco_fixture import rectangle_image, write_coco

# ImageNet statistics in 0..255 RGB, written out here rather than imported: the test states them.
IMAGENET_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
IMAGENET_STDDEV = np.array([58.395, 57.12, 57.375], np.float32)

IMAGES = [
    ("a.png", 48, 64, [(1, [4, 4, 20, 20], 0), (3, [0, 0, 64, 48], 1)]),  # class 3 only on a crowd box
    ("b.png", 64, 40, [(2, [10, 20, 12, 30], 0)]),
    ("c.png", 32, 32, [(1, [0, 0, 16, 16], 0), (2, [16, 16, 16, 16], 0)]),
    ("d.png", 40, 40, []),
]


@pytest.fixture
def coco(tmp_path):
    return write_coco(tmp_path, IMAGES)


def _batches(dataset, count):
    return [
        (images.numpy(), {k: v.numpy() for k, v in labels.items()}) for images, labels in dataset.take(count)
    ]


@pytest.mark.parametrize("cache", [False, True])
def test_training_batches_are_fixed_size_and_crowd_free(coco, cache):
    dataset = train_dataset(coco_source(*coco), image_size=64, batch_size=2, max_boxes=6, cache=cache)
    for images, labels in _batches(dataset, 6):
        assert images.shape == (2, 64, 64, 3) and images.dtype == np.float32
        assert labels["boxes"].shape == (2, 6, 4) and labels["classes"].shape == (2, 6)
        assert set(np.unique(labels["classes"])) <= {-1, 1, 2}  # class 3 is a crowd box
        valid = labels["classes"] >= 0
        boxes = labels["boxes"][valid]
        assert (boxes >= 0).all() and (boxes <= 64).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert (labels["boxes"][~valid] == 0).all()


def test_training_images_are_the_photo_normalised_with_imagenet_statistics(tmp_path):
    boxes = [[4, 4, 20, 20], [30, 10, 20, 30]]
    source = coco_source(*write_coco(tmp_path, [("a.png", 48, 64, [(1, box, 0) for box in boxes])]))
    # Scale 1 and no flip: the 48 x 64 photo lands unchanged in the top of the 64 x 64 square.
    dataset = train_dataset(source, image_size=64, batch_size=1, scale_range=(1.0, 1.0), flip=False)
    ((images, labels),) = _batches(dataset, 1)
    expected = (rectangle_image(48, 64, boxes) - IMAGENET_MEAN) / IMAGENET_STDDEV
    np.testing.assert_allclose(images[0, :48], expected, atol=1e-5)
    np.testing.assert_allclose(images[0, 48:], np.broadcast_to(-IMAGENET_MEAN / IMAGENET_STDDEV, (16, 64, 3)))
    np.testing.assert_array_equal(labels["boxes"][0, :2], [[4, 4, 24, 24], [10, 30, 40, 50]])


def test_tfrecord_round_trip_keeps_labels_and_masks(coco, tmp_path):
    summary = coco_to_tfrecord(*coco, tmp_path / "out" / "train", num_shards=2, verbose=0)
    assert summary["images"] == 4 and len(summary["shards"]) == 2
    records = {r.image_id: r for r in read_coco(*coco).records}
    source = tfrecord_source(str(tmp_path / "out" / "train-*"))
    seen = set()
    for example in source.dataset(with_masks=True).map(lambda e: decode(e, source.report)):
        record = records[int(example["image_id"])]
        seen.add(record.image_id)
        np.testing.assert_allclose(example["boxes"].numpy(), record.boxes, atol=1e-4)
        np.testing.assert_array_equal(example["classes"].numpy(), record.classes)
        np.testing.assert_array_equal(example["is_crowd"].numpy(), record.is_crowd)
        np.testing.assert_array_equal(example["masks"].numpy(), record.masks())
        assert example["image"].shape == (record.height, record.width, 3)
    assert seen == set(records) and source.report.counts == {}


def _damage_middle(path):
    """Overwrites bytes in the middle of an image: header and end marker intact, pixel data broken."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = b"\xaa" * 16
    path.write_bytes(bytes(data))


def _cut(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_converter_skips_broken_images_and_writes_only_complete_shards(coco, tmp_path):
    images_dir, annotations = coco
    _damage_middle(images_dir / "b.png")
    _cut(images_dir / "c.png")
    summary = coco_to_tfrecord(images_dir, annotations, tmp_path / "out" / "x", num_shards=3, verbose=0)
    assert summary["images"] == 2
    assert summary["report"].counts == {"corrupt_image": 1, "truncated_image": 1, "no_annotations": 1}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        f"x-0000{i}-of-00003.tfrecord" for i in range(3)
    ]
    with pytest.raises(DataError, match="num_shards must be >= 1, got 0"):
        coco_to_tfrecord(images_dir, annotations, tmp_path / "out" / "y", num_shards=0, verbose=0)


def test_an_image_that_fails_to_decode_is_skipped_not_fatal(coco):
    images_dir, annotations = coco
    _damage_middle(images_dir / "b.png")
    source = coco_source(images_dir, annotations)
    assert source.num_images == 4 and source.report.counts == {"no_annotations": 1}  # header and end intact
    ids = [int(i) for _, meta in eval_dataset(source, batch_size=3) for i in meta["image_id"]]
    assert ids == [1, 3, 4]
    train = train_dataset(source, image_size=64, batch_size=3, shuffle_buffer=1, repeat=False)
    assert sum(len(images) for images, _ in _batches(train, 10)) == 3


def test_eval_batches_are_the_photos_padded_in_order_and_unpad_restores_them(coco):
    batches = [(images, meta) for images, meta in eval_dataset(coco_source(*coco), batch_size=3)]
    assert [tuple(images.shape) for images, _ in batches] == [(3, 64, 64, 3), (1, 40, 40, 3)]
    assert batches[0][0].dtype == tf.uint8
    assert batches[0][1]["image_id"].dtype == tf.int64 and batches[0][1]["original_size"].dtype == tf.int32
    meta = {k: np.concatenate([m[k].numpy() for _, m in batches]) for k in batches[0][1]}
    np.testing.assert_array_equal(meta["image_id"], [1, 2, 3, 4])
    np.testing.assert_array_equal(meta["original_size"], [[48, 64], [64, 40], [32, 32], [40, 40]])
    images = batches[0][0].numpy()
    assert (images[0, 48:] == 0).all() and (images[1, :, 40:] == 0).all() and (images[2, 32:] == 0).all()

    photos = [photo for images, m in batches for photo in unpad(images, m["original_size"])]
    photos_from_numpy = unpad(batches[0][0].numpy(), batches[0][1]["original_size"].numpy())
    for photo, (_, height, width, objects) in zip(photos, IMAGES, strict=True):
        assert isinstance(photo, np.ndarray) and photo.dtype == np.uint8
        np.testing.assert_array_equal(photo, rectangle_image(height, width, [box for _, box, _ in objects]))
    for photo, again in zip(photos[:3], photos_from_numpy, strict=True):
        np.testing.assert_array_equal(photo, again)
    with pytest.raises(ValueError, match="unpad: 3 images but 2 original sizes"):
        unpad(batches[0][0], batches[0][1]["original_size"][:2])


def test_make_source_reads_a_config_split_and_counts_what_there_is_to_learn(coco, tmp_path, capsys):
    images_dir, annotations = coco
    source = make_source(
        types.SimpleNamespace(images=str(images_dir), annotations=str(annotations), tfrecord=None)
    )
    # Non-crowd boxes: a.png 1 (its class 3 box is a crowd), b.png 1, c.png 2, d.png none.
    assert source.num_images == 4 and source.num_boxes == 4
    assert "1 x image kept as background only" in capsys.readouterr().out

    coco_to_tfrecord(images_dir, annotations, tmp_path / "r" / "x", verbose=0)
    records = make_source(
        types.SimpleNamespace(images=None, annotations=None, tfrecord=str(tmp_path / "r" / "x-*"))
    )
    assert records.num_images is None and records.num_boxes is None
    assert sum(1 for _ in records.dataset()) == 4


@pytest.mark.parametrize("from_tfrecord", [False, True])
def test_copy_paste_in_the_pipeline_mixes_objects_of_two_images(coco, tmp_path, from_tfrecord):
    if from_tfrecord:  # written without masks: box crops are pasted
        coco_to_tfrecord(*coco, tmp_path / "r" / "x", include_masks=False, verbose=0)
        source = tfrecord_source(str(tmp_path / "r" / "x-*"))
    else:
        source = coco_source(*coco)
    tf.random.set_seed(0)
    dataset = train_dataset(
        source,
        64,
        batch_size=4,
        max_boxes=8,
        scale_range=(1.0, 1.0),
        copy_paste_probability=1.0,
        shuffle_buffer=4,
    )
    counts = [int((labels["classes"][i] >= 0).sum()) for _, labels in _batches(dataset, 8) for i in range(4)]
    # Without pasting no image has more than 2 objects; with it some get 3 or more.
    assert max(counts) >= 3


def test_copy_paste_of_two_images_without_objects_gives_empty_labels(tmp_path):
    """Such a pair has components with no elements ([2, 0]), which TensorFlow's unbatch()
    crashed on (a segfault, seen intermittently in the mask tests): the pipeline splits pairs
    without it."""
    source = coco_source(*write_coco(tmp_path, [("a.png", 40, 40, []), ("b.png", 32, 48, [])]))
    for mask_crop_size in (None, 8):
        dataset = train_dataset(
            source,
            64,
            2,
            max_boxes=3,
            copy_paste_probability=1.0,
            repeat=False,
            mask_crop_size=mask_crop_size,
        )
        ((images, labels),) = _batches(dataset, 2)
        assert images.shape == (2, 64, 64, 3) and (labels["classes"] == -1).all()
        assert (labels["boxes"] == 0).all() and (labels.get("masks", np.zeros(1)) == 0).all()
