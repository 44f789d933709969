"""TFRecord shards in the TF Object Detection API / Model Garden schema, and the COCO converter.

Detection keys: image/encoded, image/format, image/height, image/width, image/source_id,
image/filename, image/object/bbox/{ymin,xmin,ymax,xmax} (normalised to [0, 1]),
image/object/class/label (COCO category id), image/object/is_crowd, image/object/area,
and optionally image/object/mask (one PNG per object), as Model Garden's readers expect.

Classification keys: image/encoded, image/format, image/class/label, image/class/text and
image/filename, the schema of the tensorflow/tpu ImageNet shards (whose readers need only
the first three).
"""

import io
import os

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from spinenet_tf.data.coco import read_coco
from spinenet_tf.data.images import DECODABLE_FORMATS
from spinenet_tf.errors import DataError


def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _floats(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def _ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def _png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def box_area(boxes):
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def encode_example(record, encoded_image, image_format, masks=None):
    """An ImageRecord (see `coco.py`) and its encoded image -> tf.train.Example."""
    scale = np.array([record.height, record.width] * 2, np.float32)
    normalised = record.boxes / scale
    features = {
        "image/encoded": _bytes([encoded_image]),
        "image/format": _bytes([image_format]),
        "image/height": _ints([record.height]),
        "image/width": _ints([record.width]),
        "image/source_id": _bytes([str(record.image_id).encode()]),
        "image/filename": _bytes([os.path.basename(record.path).encode()]),
        "image/object/bbox/ymin": _floats(normalised[:, 0]),
        "image/object/bbox/xmin": _floats(normalised[:, 1]),
        "image/object/bbox/ymax": _floats(normalised[:, 2]),
        "image/object/bbox/xmax": _floats(normalised[:, 3]),
        "image/object/class/label": _ints(record.classes),
        "image/object/is_crowd": _ints(record.is_crowd.astype(np.int64)),
        "image/object/area": _floats(box_area(record.boxes)),
    }
    if masks is not None:
        features["image/object/mask"] = _bytes([_png(mask * 255) for mask in masks])
    return tf.train.Example(features=tf.train.Features(feature=features))


FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/source_id": tf.io.FixedLenFeature([], tf.string, default_value="-1"),
    **{
        f"image/object/bbox/{key}": tf.io.VarLenFeature(tf.float32)
        for key in ("ymin", "xmin", "ymax", "xmax")
    },
    "image/object/class/label": tf.io.VarLenFeature(tf.int64),
    "image/object/is_crowd": tf.io.VarLenFeature(tf.int64),
}
MASK_FEATURE = {"image/object/mask": tf.io.VarLenFeature(tf.string)}


def parse_example(serialized, with_masks=False):
    """A serialized tf.Example -> the pipeline's undecoded example (see `pipeline.py`)."""
    parsed = tf.io.parse_single_example(serialized, {**FEATURES, **(MASK_FEATURE if with_masks else {})})
    dense = {
        key: tf.sparse.to_dense(value) for key, value in parsed.items() if isinstance(value, tf.SparseTensor)
    }
    boxes = tf.stack([dense[f"image/object/bbox/{key}"] for key in ("ymin", "xmin", "ymax", "xmax")], axis=-1)
    classes = tf.cast(dense["image/object/class/label"], tf.int32)
    is_crowd = dense["image/object/is_crowd"]
    # Files written without is_crowd give an empty list: no object is a crowd.
    is_crowd = tf.cond(
        tf.size(is_crowd) == tf.size(classes), lambda: is_crowd > 0, lambda: tf.zeros_like(classes, tf.bool)
    )
    example = {
        "encoded": parsed["image/encoded"],
        "image_id": tf.strings.to_number(parsed["image/source_id"], tf.int64),
        "boxes": boxes,
        "classes": classes,
        "is_crowd": is_crowd,
    }
    if with_masks:
        example["mask_pngs"] = dense["image/object/mask"]
    return example


def encode_classification_example(encoded_image, image_format, label, class_name, file_name):
    """An encoded image and its class -> tf.train.Example (see the module docstring)."""
    features = {
        "image/encoded": _bytes([encoded_image]),
        "image/format": _bytes([image_format]),
        "image/class/label": _ints([label]),
        "image/class/text": _bytes([class_name.encode()]),
        "image/filename": _bytes([file_name.encode()]),
    }
    return tf.train.Example(features=tf.train.Features(feature=features))


CLASSIFICATION_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
}


def parse_classification_example(serialized):
    """A serialized tf.Example -> {"encoded": image bytes, "label": int32}, the label as stored.

    Fails (at run time) on a record without both features: the classification readers
    count and skip those.
    """
    parsed = tf.io.parse_single_example(serialized, CLASSIFICATION_FEATURES)
    return {"encoded": parsed["image/encoded"], "label": tf.cast(parsed["image/class/label"], tf.int32)}


def encoded_image(path):
    """(bytes, format) of a fully decodable image; raises OSError for a broken one."""
    with Image.open(path) as image:
        image.load()  # decodes everything: catches truncated files that a header check misses
        image_format = image.format
    with open(path, "rb") as f:
        data = f.read()
    if image_format in DECODABLE_FORMATS:
        return data, DECODABLE_FORMATS[image_format]
    with Image.open(path) as image:
        return _png(np.asarray(image.convert("RGB"))), b"png"


def shard_paths(prefix, num_shards):
    """The file names of a conversion into `num_shards` shards (a DataError unless >= 1)."""
    if num_shards < 1:
        raise DataError(f"num_shards must be >= 1, got {num_shards}.")
    return [f"{prefix}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]


def write_shards(paths, examples):
    """Writes serialized `examples` round-robin to the shard `paths`; returns how many.

    Shards are written under a temporary name and renamed when complete, so an
    interrupted conversion never leaves a truncated shard with the final name.
    """
    os.makedirs(os.path.dirname(os.path.abspath(paths[0])), exist_ok=True)
    writers = [tf.io.TFRecordWriter(path + ".incomplete") for path in paths]
    written = 0
    for example in examples:
        writers[written % len(paths)].write(example)
        written += 1
    for writer, path in zip(writers, paths):
        writer.close()
        os.replace(path + ".incomplete", path)
    return written


def coco_to_tfrecord(images_dir, annotations_file, out_prefix, num_shards=1, include_masks=True, verbose=1):
    """Converts a COCO split to `num_shards` TFRecord files; returns a summary dict.

    With `include_masks`, objects whose mask is written box-filled (no usable
    segmentation) are counted in the summary's report. See `write_shards`.
    """
    paths = shard_paths(out_prefix, num_shards)
    dataset = read_coco(images_dir, annotations_file, check_masks=include_masks)
    progress = keras.utils.Progbar(len(dataset.records), verbose=verbose, unit_name="image")

    def examples():
        for n, record in enumerate(dataset.records):
            try:
                encoded, image_format = encoded_image(record.path)
            except (OSError, SyntaxError, ValueError) as error:
                dataset.report.warn("corrupt_image", f"{record.path}: {error}")
                continue
            masks = record.masks() if include_masks else None
            yield encode_example(record, encoded, image_format, masks).SerializeToString()
            progress.update(n + 1)

    written = write_shards(paths, examples())
    return {"images": written, "shards": paths, "report": dataset.report}
