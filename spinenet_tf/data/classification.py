"""Image classification data: class folders or TFRecords, and the tf.data pipelines for training and eval.

A source yields undecoded examples {"encoded": image bytes, "label": int32, "name": the
file, or the shard and record number, for warnings}. A folder's labels are the indices of
its class folders in sorted order; TFRecord labels are used as stored (the tensorflow/tpu
ImageNet shards use 1..1000 for a 1001-way model, 0 background).

Training batches are Inception-style views, as the tensorflow/tpu classifier makes them:
a random crop of 8-100% of the image's area and aspect ratio 3/4-4/3 (the centre crop
when 10 attempts find none), resized bilinearly, flipped at random. Evaluation batches
are the model's own view, `ImageConverter`'s centre crop. Images are normalised float32
[B, S, S, 3]; labels int32 [B]. Both pipelines use Keras ops of the model's preprocessing,
so they need the TensorFlow backend.

Damage found up front (a folder's files are probed when listed) is counted in the
source's `DataReport` and skipped; damage only seen when an image is decoded (TFRecords
are not probed) is counted and skipped each time the image is read, never a crash.
"""

import dataclasses
import glob
import os

import keras
import numpy as np
import tensorflow as tf

from spinenet_tf.data.images import DECODABLE_FORMATS, probe_image
from spinenet_tf.data.report import DataReport
from spinenet_tf.data.tfrecord import (
    encode_classification_example,
    encoded_image,
    parse_classification_example,
    shard_paths,
    write_shards,
)
from spinenet_tf.errors import DataError
from spinenet_tf.layers.image_converter import CENTER_CROP_FRACTION, center_crop, normalise_image

AUTOTUNE = tf.data.AUTOTUNE
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# What tf.io.decode_image reads, by PIL format name (MPO, a phone's multi-picture JPEG: its first picture).
TENSORFLOW_FORMATS = {*DECODABLE_FORMATS, "MPO"}
CROP_ATTEMPTS = 10
# Shards a training source reads at once (the order of records within a shard is kept).
PARALLEL_SHARDS = 16
# Folder listings written by `folder_to_tfrecord` in this fixed random order, so a
# shuffle buffer draws from all classes.
RECORD_ORDER_SEED = 0


@dataclasses.dataclass
class ClassificationSource:
    """A dataset of undecoded examples, with what is known about it up front."""

    make_dataset: object  # (shuffle, seed) -> tf.data.Dataset
    num_images: int | None
    class_names: list | None  # by label; None when unknown (TFRecords)
    num_classes_needed: int | None  # the largest label + 1, when known
    report: DataReport

    def dataset(self, shuffle=False, seed=None):
        """Undecoded examples, in file order or, with `shuffle`, in a new order of files each pass."""
        return self.make_dataset(shuffle, seed)


@dataclasses.dataclass
class _FolderListing:
    class_names: list
    paths: list
    labels: list
    report: DataReport


def _list_folder(root, verify_images):
    """The images of root/<class name>/<image> with their labels; bad files counted and left out."""
    root = os.fspath(root)
    layout = f"expected {os.path.join(root, '<class name>', '<images>')}"
    if not os.path.isdir(root):
        raise DataError(f"{root}: no such folder ({layout}).")
    class_names = sorted(
        entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith(".")
    )
    if not class_names:
        raise DataError(f"{root}: no class folders ({layout}).")
    listing = _FolderListing(class_names, [], [], DataReport(root))
    for label, class_name in enumerate(class_names):
        folder = os.path.join(root, class_name)
        found = 0
        for file_name in sorted(os.listdir(folder)):
            path, name = os.path.join(folder, file_name), os.path.join(class_name, file_name)
            if file_name.startswith(".") or not os.path.isfile(path):
                continue
            if not file_name.lower().endswith(IMAGE_EXTENSIONS):
                listing.report.warn("not_an_image", name)
            elif not verify_images or _decodable(path, name, listing.report):
                listing.paths.append(path)
                listing.labels.append(label)
                found += 1
        if not found:
            listing.report.warn("empty_class", f"{class_name} (label {label})")
    if not listing.paths:
        raise DataError(
            f"{root}: none of its {len(class_names)} class folders holds a readable "
            f"{', '.join(IMAGE_EXTENSIONS)} image."
        )
    return listing


def _decodable(path, name, report):
    """Whether a file is a complete image that TensorFlow decodes; problems counted in `report`."""
    probed = probe_image(path, name, report)
    if probed is None:
        return False
    if probed[2] not in TENSORFLOW_FORMATS:
        report.warn("unsupported_format", f"{name}: {probed[2]}")
        return False
    return True


def image_folder_source(root, verify_images=True):
    """Images in root/<class name>/<image>: labels 0..K-1 by sorted class folder name.

    Files directly in each class folder count; hidden files and subfolders are ignored.
    `verify_images` probes each file's header and last bytes (fast: no decoding) to skip
    empty, corrupt, truncated or undecodable images up front. A class folder without a
    usable image keeps its label (warned), so the other classes' labels do not shift.
    """
    listing = _list_folder(root, verify_images)
    paths = tf.constant(listing.paths, tf.string)
    labels = tf.constant(listing.labels, tf.int32)

    def make_dataset(shuffle, seed):
        indices = tf.data.Dataset.range(len(listing.paths))
        if shuffle:  # the whole listing: a shuffle buffer alone would draw from few classes
            indices = indices.shuffle(len(listing.paths), seed=seed)

        def read(index):
            path = paths[index]
            return {"encoded": tf.io.read_file(path), "label": labels[index], "name": path}

        return indices.map(read, num_parallel_calls=AUTOTUNE)

    return ClassificationSource(
        make_dataset, len(listing.paths), listing.class_names, len(listing.class_names), listing.report
    )


def tfrecord_classification_source(file_pattern):
    """TFRecord shards matching a glob pattern, tf.Examples with image/encoded and image/class/label.

    A record without both features is counted in the report and skipped, when read.
    """
    file_pattern = os.fspath(file_pattern)
    files = sorted(glob.glob(file_pattern))
    if not files:
        raise DataError(f"{file_pattern}: no TFRecord files match this pattern.")
    report = DataReport(file_pattern)

    def numbered_records(path):
        def named(number, serialized):
            name = tf.strings.join([path, " record ", tf.strings.as_string(number)])
            return {"serialized": serialized, "name": name}

        return tf.data.TFRecordDataset(path).enumerate().map(named)

    def parse(record):
        return {**parse_classification_example(record["serialized"]), "name": record["name"]}

    def make_dataset(shuffle, seed):
        shards = tf.data.Dataset.from_tensor_slices(files)
        if shuffle:
            shards = shards.shuffle(len(files), seed=seed)
            records = shards.interleave(
                numbered_records, cycle_length=min(len(files), PARALLEL_SHARDS), num_parallel_calls=AUTOTUNE
            )
        else:
            records = shards.flat_map(numbered_records)
        return _skip_failures(records, parse, report, "malformed_record")

    return ClassificationSource(make_dataset, None, None, None, report)


def classification_source(split):
    """The source of a config data split: its `tfrecord` glob, else its `images` folder.

    Prints the data report of a folder (what was skipped) before any step runs.
    """
    if split.tfrecord:
        return tfrecord_classification_source(split.tfrecord)
    if not split.images:
        raise DataError(
            "A classification data split needs `images` (a folder of class folders) or `tfrecord` "
            "(a glob of TFRecord shards); this one has neither."
        )
    source = image_folder_source(split.images)
    print(source.report.summary(), flush=True)
    return source


def _skip_failures(dataset, function, report, kind):
    """`function` mapped over `dataset`, leaving out (and counting in `report` under the element's
    "name") the elements it fails on.

    Each element goes through a one-element dataset that ignores errors, followed by a
    stand-in that is only read, and only counts, when that one came out empty: good
    elements pay nothing for the count, and the work stays parallel and in order.
    """
    output_spec = dataset.map(function).element_spec

    def stand_in():
        return tf.nest.map_structure(
            lambda spec: tf.zeros([size or 0 for size in spec.shape], spec.dtype), output_spec
        )

    def count(name):
        report.warn(kind, name.numpy().decode())
        return False

    def succeeded(element):
        return function(element), True

    def counted(name):
        return stand_in(), tf.ensure_shape(tf.py_function(count, [name], tf.bool), [])

    def attempt(element):
        done = tf.data.Dataset.from_tensors(element).map(succeeded).ignore_errors()
        failed = tf.data.Dataset.from_tensors(element["name"]).map(counted)
        return done.concatenate(failed).take(1)

    def ok(output, succeeded):
        return succeeded

    def output_only(output, succeeded):
        return output

    return dataset.interleave(attempt, num_parallel_calls=AUTOTUNE).filter(ok).map(output_only)


def _decode(example):
    image = tf.io.decode_image(example["encoded"], channels=3, dtype=tf.uint8, expand_animations=False)
    return {"image": tf.ensure_shape(image, [None, None, 3]), "label": example["label"]}


def _decoded(dataset, report):
    """Undecoded examples -> {"image" uint8 [H, W, 3], "label"}; undecodable images counted and skipped."""
    return _skip_failures(dataset, _decode, report, "undecodable_image")


def _random_crop(image, image_size, seed, area_range, aspect_ratio_range):
    """A random crop of the image resized to [S, S, 3] float32 0..255 (see the module docstring)."""
    shape = tf.shape(image)
    offset, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed,
        min_object_covered=area_range[0],
        aspect_ratio_range=aspect_ratio_range,
        area_range=area_range,
        max_attempts=CROP_ATTEMPTS,
    )
    # All attempts failing gives the whole image: the centre crop replaces it.
    return tf.cond(
        tf.reduce_all(size[:2] == shape[:2]),
        lambda: center_crop(image[None], (image_size, image_size), CENTER_CROP_FRACTION)[0],
        lambda: tf.image.resize(tf.slice(image, offset, size), (image_size, image_size)),
    )


def classification_train_dataset(
    source,
    image_size,
    batch_size,
    flip=True,
    shuffle_buffer=1000,
    cache=False,
    area_range=(0.08, 1.0),
    aspect_ratio_range=(3 / 4, 4 / 3),
    seed=None,
):
    """Endless shuffled batches of random views: (images [B, S, S, 3] float32 normalised, labels [B] int32).

    `cache` keeps the decoded images in memory (datasets that fit: the synthetic one);
    without it, the shuffle buffer holds encoded bytes only. A `seed` makes the order,
    the crops and the flips the same in every run.
    """

    def view(example, seeds):
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seeds, 2))
        image = _random_crop(example["image"], image_size, crop_seed, area_range, aspect_ratio_range)
        if flip:
            image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        return normalise_image(image), example["label"]

    examples = source.dataset(shuffle=True, seed=seed)
    if cache:
        images = _decoded(examples, source.report).cache().shuffle(shuffle_buffer, seed=seed).repeat()
    else:
        images = _decoded(examples.shuffle(shuffle_buffer, seed=seed).repeat(), source.report)
    seeds = tf.data.Dataset.random(seed=seed).batch(2)
    views = tf.data.Dataset.zip(images, seeds).map(view, num_parallel_calls=AUTOTUNE)
    return views.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def classification_eval_dataset(source, image_size, batch_size, crop_fraction=CENTER_CROP_FRACTION):
    """One pass in file order, the last batch kept: (images [B, S, S, 3] float32 normalised, labels [B]
    int32), each image the model's own centre crop (`ImageConverter`'s `center_crop`)."""

    def view(example):
        image = center_crop(example["image"][None], (image_size, image_size), crop_fraction)[0]
        return normalise_image(image), example["label"]

    images = _decoded(source.dataset(), source.report)
    return images.map(view, num_parallel_calls=AUTOTUNE).batch(batch_size).prefetch(AUTOTUNE)


def folder_to_tfrecord(root, out_prefix, num_shards=1, verbose=1):
    """Converts a folder of class folders (see `image_folder_source`) to `num_shards` TFRecord files.

    Records are written in a fixed random order (so a shuffle buffer draws from every
    class), round-robin over the shards (see `tfrecord.write_shards`). Returns
    {"images": how many written, "shards": paths, "classes": class names by label,
    "report": the DataReport of what was skipped}.
    """
    paths = shard_paths(out_prefix, num_shards)
    listing = _list_folder(root, verify_images=True)
    order = np.random.default_rng(RECORD_ORDER_SEED).permutation(len(listing.paths))
    progress = keras.utils.Progbar(len(order), verbose=verbose, unit_name="image")

    def examples():
        for n, index in enumerate(order):
            path, label = listing.paths[index], listing.labels[index]
            try:
                encoded, image_format = encoded_image(path)
            except (OSError, SyntaxError, ValueError) as error:
                listing.report.warn("corrupt_image", f"{path}: {error}")
                continue
            class_name = listing.class_names[label]
            example = encode_classification_example(
                encoded, image_format, label, class_name, os.path.basename(path)
            )
            yield example.SerializeToString()
            progress.update(n + 1)

    written = write_shards(paths, examples())
    return {"images": written, "shards": paths, "classes": listing.class_names, "report": listing.report}
