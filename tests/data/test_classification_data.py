import logging
import os
import re
import types

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from spinenet_tf.data.classification import (
    CENTER_CROP_FRACTION,
    classification_eval_dataset,
    classification_source,
    classification_train_dataset,
    folder_to_tfrecord,
    image_folder_source,
    tfrecord_classification_source,
)
from spinenet_tf.data.synthetic_classification import CLASS_NAMES, write_synthetic_classification
from spinenet_tf.data.tfrecord import encode_classification_example
from spinenet_tf.errors import DataError
from spinenet_tf.layers.image_converter import MEAN_RGB, STDDEV_RGB, center_crop, normalise_image
from tests.helpers import encode, random_image

SIZE = 32


def write_folder(root, files):
    """files: {"class/name.png": uint8 image or bytes}; returns root."""
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            Image.fromarray(content).save(path)
    return root


def eval_pairs(source, batch_size=4):
    """(images, labels) of one evaluation pass, concatenated."""
    batches = list(classification_eval_dataset(source, SIZE, batch_size).as_numpy_iterator())
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def pixels(normalised):
    """Normalised images back to 0..255 RGB."""
    return normalised * np.array(STDDEV_RGB, np.float32) + np.array(MEAN_RGB, np.float32)


def test_labels_follow_sorted_class_folders_and_an_empty_class_keeps_its_label(tmp_path, caplog):
    images = {name: random_image(40, 48, seed=n) for n, name in enumerate(["b/1.png", "a/1.png", "d/1.png"])}
    root = write_folder(tmp_path, {**images, "c_empty/readme.txt": b"no images here"})
    with caplog.at_level(logging.WARNING, logger="spinenet_tf.data"):
        source = image_folder_source(root)
    assert source.class_names == ["a", "b", "c_empty", "d"]
    assert source.num_classes_needed == 4 and source.num_images == 3
    assert source.report.counts == {"empty_class": 1, "not_an_image": 1}
    assert "c_empty (label 2)" in caplog.text
    decoded, labels = eval_pairs(source)
    np.testing.assert_array_equal(labels, [0, 1, 3])  # d keeps label 3 after the empty class
    for image, name in zip(decoded, ["a/1.png", "b/1.png", "d/1.png"]):
        expected = normalise_image(center_crop(images[name][None], (SIZE, SIZE), CENTER_CROP_FRACTION))[0]
        np.testing.assert_array_equal(image, expected)


def test_unreadable_files_are_counted_and_skipped_when_listed(tmp_path, caplog):
    good = random_image(40, 40)
    png, jpeg = encode(good), encode(good, "JPEG")
    root = write_folder(
        tmp_path,
        {
            "a/good.png": good,
            "a/good.jpeg": jpeg,
            "a/corrupt.jpg": b"not an image at all",
            "a/empty.png": b"",
            "a/truncated.png": png[: len(png) // 2],
            "b/good.PNG": good,
            "b/truncated.jpg": jpeg[: len(jpeg) - 100],
            "b/tiff_named.png": encode(good, "TIFF"),
            "b/notes.txt": b"text",
            "b/.hidden.png": b"ignored",
        },
    )
    with caplog.at_level(logging.WARNING, logger="spinenet_tf.data"):
        source = image_folder_source(root)
    assert source.num_images == 3
    assert source.report.counts == {
        "corrupt_image": 2,
        "truncated_image": 2,
        "unsupported_format": 1,
        "not_an_image": 1,
    }
    assert "a/empty.png: the file is empty" in caplog.text and "b/tiff_named.png: TIFF" in caplog.text
    _, labels = eval_pairs(source)
    np.testing.assert_array_equal(labels, [0, 0, 1])


def test_undecodable_images_are_counted_and_skipped_when_read_unverified(tmp_path, caplog):
    good = random_image(40, 40)
    png = encode(good)
    root = write_folder(
        tmp_path,
        {"a/0.png": good, "a/1.png": b"garbage", "b/0.png": png[:100], "b/1.png": b"", "b/2.png": good},
    )
    source = image_folder_source(root, verify_images=False)
    assert source.num_images == 5 and source.report.counts == {}
    with caplog.at_level(logging.WARNING, logger="spinenet_tf.data"):
        decoded, labels = eval_pairs(source, batch_size=2)
    np.testing.assert_array_equal(labels, [0, 1])
    assert decoded.shape == (2, SIZE, SIZE, 3)
    assert source.report.counts == {"undecodable_image": 3}
    assert os.path.join("b", "0.png") in caplog.text


def test_errors_name_the_folder_or_pattern(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(DataError, match=re.escape(f"{missing}: no such folder")):
        image_folder_source(missing)
    flat = write_folder(tmp_path / "flat", {"image.png": random_image(20, 20)})
    with pytest.raises(DataError, match=re.escape(f"{flat}: no class folders")):
        image_folder_source(flat)
    broken = write_folder(tmp_path / "broken", {"a/x.png": b"bad", "b/y.txt": b"text"})
    with pytest.raises(DataError, match=re.escape(f"{broken}: none of its 2 class folders holds a readable")):
        image_folder_source(broken)
    pattern = str(tmp_path / "nothing-*.tfrecord")
    with pytest.raises(DataError, match=re.escape(f"{pattern}: no TFRecord files match")):
        tfrecord_classification_source(pattern)
    with pytest.raises(DataError, match="needs `images`.*or `tfrecord`"):
        classification_source(types.SimpleNamespace(images=None, annotations=None, tfrecord=None))


def test_train_batches_are_normalised_shaped_and_seeded(tmp_path):
    files = {f"{c}/{i}.png": random_image(48, 64, seed=10 * c + i) for c in range(3) for i in range(4)}
    source = image_folder_source(write_folder(tmp_path, files))

    def batches(seed):
        dataset = classification_train_dataset(source, SIZE, 5, seed=seed)
        return list(dataset.take(4).as_numpy_iterator())  # 20 views of 12 images: over an epoch

    first = batches(seed=3)
    for images, labels in first:
        assert images.shape == (5, SIZE, SIZE, 3) and images.dtype == np.float32
        assert labels.shape == (5,) and labels.dtype == np.int32
    images = np.concatenate([b[0] for b in first])
    assert -2.5 < images.mean() < 0.5 and 0.3 < images.std() < 2.0  # dark noise with bright rectangles
    assert sorted(set(np.concatenate([b[1] for b in first]).tolist())) == [0, 1, 2]
    again, other = batches(seed=3), batches(seed=4)
    for (a, la), (b, lb) in zip(first, again):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)
    assert any(not np.array_equal(a, b) for (a, _), (b, _) in zip(first, other))


@pytest.fixture(scope="module")
def coordinate_folder(tmp_path_factory):
    """One 240 x 200 PNG whose red is the column and green the row: a view's pixels give its crop."""
    height, width = 200, 240
    rows, cols = np.mgrid[:height, :width]
    image = np.stack([cols, rows, np.full_like(rows, 128)], axis=-1).astype(np.uint8)
    root = write_folder(tmp_path_factory.mktemp("coordinates"), {"only/image.png": image})
    return root, image


def crop_of(view):
    """(top, left, height, width, flipped) of the crop a view shows, from its coordinate pattern.

    Bilinear resizing reproduces a linear ramp exactly away from the borders: output
    column j shows source column left + (j + 0.5) * width / S - 0.5.
    """
    image = pixels(view)
    flipped = image[0, -1, 0] < image[0, 0, 0]
    if flipped:
        image = image[:, ::-1]
    ends = [SIZE // 4, 3 * SIZE // 4]
    red, green = image[SIZE // 2, ends, 0], image[ends, SIZE // 2, 1]
    width = (red[1] - red[0]) * SIZE / (ends[1] - ends[0])
    height = (green[1] - green[0]) * SIZE / (ends[1] - ends[0])
    left = red[0] - ((ends[0] + 0.5) * width / SIZE - 0.5)
    top = green[0] - ((ends[0] + 0.5) * height / SIZE - 0.5)
    return top, left, height, width, flipped


def views(root, count, **kwargs):
    dataset = classification_train_dataset(image_folder_source(root), SIZE, count, cache=True, **kwargs)
    images, labels = next(iter(dataset))
    assert set(labels.numpy().tolist()) == {0}
    return images.numpy()


def test_random_crops_have_the_area_and_aspect_ratio_ranges_and_flip(coordinate_folder):
    root, image = coordinate_folder
    crops = np.array([crop_of(view) for view in views(root, 400, seed=0)])
    np.testing.assert_allclose(crops[:, :4], np.round(crops[:, :4]), atol=1e-3)  # whole pixels, recovered
    top, left, height, width, flipped = crops.T
    area = height * width / image.shape[0] / image.shape[1]
    assert np.all((area > 0.08 - 0.005) & (area <= 1.0))
    assert np.all((width / height > 3 / 4 - 0.01) & (width / height < 4 / 3 + 0.01))  # within a pixel
    assert area.min() < 0.15 and area.max() > 0.8  # the whole range is drawn from
    assert np.all((top > -0.5) & (left > -0.5))
    assert np.all((top + height < image.shape[0] + 0.5) & (left + width < image.shape[1] + 0.5))
    assert len(np.unique(np.round(crops[:, :4]), axis=0)) > 350  # every view its own crop
    assert 150 < flipped.sum() < 250
    narrow = np.array([crop_of(view) for view in views(root, 100, seed=1, area_range=(0.5, 0.6))])
    area = narrow[:, 2] * narrow[:, 3] / image.shape[0] / image.shape[1]
    assert np.all((area > 0.49) & (area < 0.61))


def test_crops_differ_between_epochs_and_repeat_with_a_seed(coordinate_folder):
    root, _ = coordinate_folder
    source = image_folder_source(root)
    epochs = list(classification_train_dataset(source, SIZE, 1, seed=7).take(6).as_numpy_iterator())
    crops = [tuple(np.round(crop_of(images[0])[:4])) for images, _ in epochs]
    assert len(set(crops)) == 6  # one image: each batch is a new epoch
    again = list(classification_train_dataset(source, SIZE, 1, seed=7).take(6).as_numpy_iterator())
    for (a, _), (b, _) in zip(epochs, again):
        np.testing.assert_array_equal(a, b)


def test_impossible_crop_falls_back_to_the_centre_crop(coordinate_folder):
    root, image = coordinate_folder
    fallback = views(root, 3, seed=0, flip=False, area_range=(0.9, 1.0), aspect_ratio_range=(3.0, 4.0))
    expected = normalise_image(center_crop(image[None], (SIZE, SIZE), CENTER_CROP_FRACTION))[0]
    for view in fallback:
        np.testing.assert_allclose(view, expected, atol=1e-5)


def test_eval_images_are_the_models_centre_crop_in_file_order(tmp_path):
    files = {
        "a/0.png": random_image(50, 70, seed=0),
        "a/1.jpg": random_image(64, 64, seed=1),
        "b/0.png": random_image(90, 40, seed=2),
        "b/1.bmp": random_image(33, 47, seed=3),
        "c/0.gif": random_image(40, 40, seed=4),
    }
    source = image_folder_source(write_folder(tmp_path, files))
    batches = list(classification_eval_dataset(source, SIZE, 2, crop_fraction=0.75).as_numpy_iterator())
    assert [len(labels) for _, labels in batches] == [2, 2, 1]  # the last, short batch is kept
    images = np.concatenate([b[0] for b in batches])
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), [0, 0, 1, 1, 2])
    for view, name in zip(images, files):
        decoded = tf.io.decode_image((tmp_path / name).read_bytes(), channels=3, expand_animations=False)
        expected = normalise_image(center_crop(decoded[None], (SIZE, SIZE), 0.75))[0]
        np.testing.assert_array_equal(view, expected)


def test_folder_to_tfrecord_round_trip_keeps_labels_and_pixels(tmp_path):
    files = {
        f"{name}/{i}.png": random_image(40, 56, seed=10 * i + c)
        for c, name in enumerate("xyz")
        for i in range(3)
    }
    files["y/broken.png"] = b"broken"
    root = write_folder(tmp_path / "folder", files)
    summary = folder_to_tfrecord(root, tmp_path / "records" / "train", num_shards=2, verbose=0)
    assert summary["images"] == 9 and summary["classes"] == ["x", "y", "z"]
    assert [os.path.basename(path) for path in summary["shards"]] == [
        "train-00000-of-00002.tfrecord",
        "train-00001-of-00002.tfrecord",
    ]
    assert summary["report"].counts == {"corrupt_image": 1}
    records = tfrecord_classification_source(str(tmp_path / "records" / "train-*"))
    assert records.num_images is None and records.class_names is None
    folder_images, folder_labels = eval_pairs(image_folder_source(root))
    record_images, record_labels = eval_pairs(records)
    assert record_labels.tolist() != folder_labels.tolist()  # written in a mixed order
    order = np.lexsort((record_images.reshape(9, -1).sum(axis=1), record_labels))
    folder_order = np.lexsort((folder_images.reshape(9, -1).sum(axis=1), folder_labels))
    np.testing.assert_array_equal(record_labels[order], folder_labels[folder_order])
    np.testing.assert_array_equal(record_images[order], folder_images[folder_order])
    shuffled = classification_train_dataset(records, SIZE, 4, seed=0).take(3)
    assert all(labels.shape == (4,) for _, labels in shuffled)


def test_damaged_records_are_counted_and_skipped_when_read(tmp_path, caplog):
    good = encode(random_image(40, 40))

    def example(image, label):
        return encode_classification_example(image, b"png", label, "c", "f.png").SerializeToString()

    path = tmp_path / "val-00000-of-00001.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(example(good, 3))
        writer.write(example(b"\x89PNG but not really", 4))  # image bytes that do not decode
        writer.write(b"not a tf.Example")
        writer.write(example(good, 5))
    source = tfrecord_classification_source(str(path))
    with caplog.at_level(logging.WARNING, logger="spinenet_tf.data"):
        _, labels = eval_pairs(source)
    np.testing.assert_array_equal(labels, [3, 5])  # labels as stored
    assert source.report.counts == {"undecodable_image": 1, "malformed_record": 1}
    assert f"{path} record 1" in caplog.text and f"{path} record 2" in caplog.text
    train = classification_train_dataset(source, SIZE, 4, shuffle_buffer=4, seed=0)
    labels = np.concatenate([labels for _, labels in train.take(5).as_numpy_iterator()])
    assert set(labels.tolist()) == {3, 5}  # 20 views of the two good records
    assert source.report.counts["undecodable_image"] >= 1 + 5  # counted at each read


def test_classification_source_reads_the_split_it_is_given(tmp_path):
    root = write_folder(
        tmp_path / "folder", {"a/0.png": random_image(20, 20), "b/0.png": random_image(20, 20)}
    )
    folder = classification_source(types.SimpleNamespace(images=str(root), annotations=None, tfrecord=None))
    assert folder.class_names == ["a", "b"]
    shards = folder_to_tfrecord(root, tmp_path / "r" / "x", verbose=0)["shards"]
    records = classification_source(
        types.SimpleNamespace(images=str(root), annotations=None, tfrecord=shards[0])
    )
    assert records.class_names is None and records.report.source == shards[0]


def split_files(summary, split):
    """{relative path: bytes} of a split's images."""
    top = summary[split]["dir"]
    return {
        os.path.relpath(os.path.join(folder, name), top): open(os.path.join(folder, name), "rb").read()
        for folder, _, names in os.walk(top)
        for name in names
    }


def test_synthetic_set_is_deterministic_balanced_and_kept_when_complete(tmp_path):
    arguments = dict(num_train=20, num_val=8, image_size=48)
    summary = write_synthetic_classification(tmp_path / "a", seed=0, **arguments)
    assert summary["classes"] == CLASS_NAMES == sorted(CLASS_NAMES)
    train = split_files(summary, "train")
    per_class = [sum(name.startswith(f"{c}/") for name in train) for c in CLASS_NAMES]
    assert sorted(per_class) == [2] * 4 + [3] * 4 and summary["train"]["images"] == len(train) == 20
    with Image.open(os.path.join(summary["train"]["dir"], "circle", "00000.png")) as image:
        assert image.size == (48, 48) and image.mode == "RGB"
    source = image_folder_source(summary["val"]["dir"])
    assert source.class_names == CLASS_NAMES and source.report.counts == {} and source.num_images == 8

    again = write_synthetic_classification(tmp_path / "b", seed=0, **arguments)
    other = write_synthetic_classification(tmp_path / "c", seed=1, **arguments)
    more = write_synthetic_classification(tmp_path / "d", seed=0, **{**arguments, "num_train": 24})
    assert split_files(again, "train") == train and split_files(again, "val") == split_files(summary, "val")
    assert split_files(more, "val") == split_files(summary, "val")
    assert set(split_files(other, "train").items()).isdisjoint(train.items())

    first_file = os.path.join(summary["train"]["dir"], "circle", "00000.png")
    os.remove(first_file)  # a complete set is not written again
    assert write_synthetic_classification(tmp_path / "a", seed=0, **arguments) == summary
    assert not os.path.exists(first_file)
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'a'}: holds a synthetic classification set")):
        write_synthetic_classification(tmp_path / "a", seed=2, **arguments)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"num_train": 7}, "num_train must be >= 8, got 7"),
        ({"num_val": 2.5}, "num_val must be an integer, got 2.5"),
        ({"image_size": 16}, "image_size must be >= 32, got 16"),
        ({"seed": -1}, "seed must be >= 0, got -1"),
    ],
)
def test_synthetic_arguments_are_checked(tmp_path, arguments, message):
    with pytest.raises(DataError, match=re.escape(message)):
        write_synthetic_classification(tmp_path, **arguments)
    assert not os.listdir(tmp_path)
