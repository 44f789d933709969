import numpy as np
import pytest
import tensorflow as tf

from spinenet_tf.data.coco import read_coco
from spinenet_tf.data.pipeline import coco_source, eval_dataset, tfrecord_source, train_dataset
from spinenet_tf.data.tfrecord import coco_to_tfrecord
from tests.data.coco_fixture import write_coco

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
        assert -3 < images.mean() < 3  # normalised


def test_tfrecord_round_trip_keeps_labels_and_masks(coco, tmp_path):
    summary = coco_to_tfrecord(*coco, tmp_path / "out" / "train", num_shards=2, verbose=0)
    assert summary["images"] == 4 and len(summary["shards"]) == 2
    records = {r.image_id: r for r in read_coco(*coco).records}
    parsed = tfrecord_source(str(tmp_path / "out" / "train-*")).dataset(with_masks=True)
    from spinenet_tf.data.pipeline import decode

    seen = set()
    for example in parsed.map(lambda e: decode(e, with_masks=True)):
        record = records[int(example["image_id"])]
        seen.add(record.image_id)
        np.testing.assert_allclose(example["boxes"].numpy(), record.boxes, atol=1e-4)
        np.testing.assert_array_equal(example["classes"].numpy(), record.classes)
        np.testing.assert_array_equal(example["is_crowd"].numpy(), record.is_crowd)
        np.testing.assert_array_equal(example["masks"].numpy(), record.masks())
        assert example["image"].shape == (record.height, record.width, 3)
    assert seen == set(records)


def test_converter_skips_truncated_images_and_writes_only_complete_shards(coco, tmp_path):
    images_dir, annotations = coco
    data = (images_dir / "b.png").read_bytes()
    (images_dir / "b.png").write_bytes(data[: len(data) // 2])  # header intact, pixels cut
    summary = coco_to_tfrecord(images_dir, annotations, tmp_path / "out" / "x", num_shards=3, verbose=0)
    assert summary["images"] == 3 and summary["report"].counts["corrupt_image"] == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        f"x-0000{i}-of-00003.tfrecord" for i in range(3)
    ]


def test_an_image_that_fails_to_decode_is_skipped_not_fatal(coco):
    images_dir, annotations = coco
    data = (images_dir / "b.png").read_bytes()
    (images_dir / "b.png").write_bytes(data[: len(data) // 2])
    source = coco_source(images_dir, annotations)
    assert source.num_images == 4  # the header still reads
    ids = [int(i) for _, meta in eval_dataset(source, 64, 3) for i in meta["image_id"]]
    assert ids == [1, 3, 4]


def test_eval_batches_keep_order_scale_and_original_size(coco):
    batches = list(eval_dataset(coco_source(*coco), image_size=64, batch_size=3))
    assert [images.shape[0] for images, _ in batches] == [3, 1]
    meta = {k: np.concatenate([m[k].numpy() for _, m in batches]) for k in batches[0][1]}
    np.testing.assert_array_equal(meta["image_id"], [1, 2, 3, 4])
    np.testing.assert_array_equal(meta["original_size"], [[48, 64], [64, 40], [32, 32], [40, 40]])
    np.testing.assert_allclose(meta["scale"], [[1, 1], [1, 1], [2, 2], [1.6, 1.6]], rtol=1e-6)


@pytest.mark.parametrize("from_tfrecord", [False, True])
def test_copy_paste_in_the_pipeline_mixes_objects_of_two_images(coco, tmp_path, from_tfrecord):
    if from_tfrecord:  # written without masks: box crops are pasted
        coco_to_tfrecord(*coco, tmp_path / "r" / "x", include_masks=False, verbose=0)
        source = tfrecord_source(str(tmp_path / "r" / "x-*"))
    else:
        source = coco_source(*coco)
    tf.random.set_seed(0)
    dataset = train_dataset(source, 64, batch_size=4, max_boxes=8, scale_range=(1.0, 1.0),
                            copy_paste_probability=1.0, shuffle_buffer=4)  # fmt: skip
    counts = [int((labels["classes"][i] >= 0).sum()) for _, labels in _batches(dataset, 8) for i in range(4)]
    # Without pasting no image has more than 2 objects; with it some get 3 or more.
    assert max(counts) >= 3


def test_eval_scales_map_model_pixels_back_to_original_boxes(tmp_path):
    from spinenet_tf.data.synthetic import write_synthetic_coco
    from spinenet_tf.evaluation import CocoEvaluator

    split = write_synthetic_coco(tmp_path, num_train=0, num_val=5, seed=3, min_size=40, max_size=100)["val"]
    source = coco_source(split["dir"], split["annotations_file"])
    records = {r.image_id: r for r in read_coco(split["dir"], split["annotations_file"]).records}
    evaluator = CocoEvaluator(split["annotations_file"])
    for images, meta in eval_dataset(source, image_size=64, batch_size=2):
        ids, scales = meta["image_id"].numpy(), meta["scale"].numpy()
        k = max(len(records[i].classes) for i in ids)
        boxes, classes = np.zeros((len(ids), k, 4)), np.zeros((len(ids), k), np.int32)
        for row, image_id in enumerate(ids):  # ground truth as the model would see it
            n = len(records[image_id].classes)
            boxes[row, :n] = records[image_id].boxes * np.tile(scales[row], 2)
            classes[row, :n] = records[image_id].classes
        assert images.shape[1:] == (64, 64, 3) and (boxes <= 64 + 1e-3).all()
        evaluator.update(ids, {"boxes": boxes, "scores": np.ones(classes.shape), "classes": classes}, scales)
    metrics = evaluator.result()
    assert (
        evaluator.num_images == 5
        and metrics["AP"] == pytest.approx(1.0)
        and metrics["AP75"] == pytest.approx(1.0)
    )
