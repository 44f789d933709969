"""tf.data input pipelines for detection training and evaluation, from COCO JSON or TFRecords.

Every source yields undecoded examples {"encoded", "image_id", "boxes" (normalised
[ymin, xmin, ymax, xmax]), "classes" (COCO category ids), "is_crowd"} and, when asked,
masks. Decoding is shared.

Training batches are (images [B, S, S, 3] float32 normalised, {"boxes": [B, M, 4]
pixels, "classes": [B, M]}), exactly what `RetinaNet.fit` takes; class ids are used as
they are (Model Garden's convention: a COCO model has 91 outputs, class 0 background).
With `mask_crop_size` C the labels also hold "masks" [B, M, C, C]: each object's final
instance mask cut to its box (see `augment.crop_masks`), the targets of a mask head.

Evaluation batches are the photos as decoded (uint8, zero-padded bottom/right to the
batch's largest) with their ids and sizes: `RetinaNet.predict` letterboxes and normalises
a photo itself and answers in its pixels, so
`model.predict_on_batch(unpad(images, meta["original_size"]))` goes straight to
`CocoEvaluator.update(meta["image_id"], ...)`.
"""

import dataclasses
import glob

import numpy as np
import tensorflow as tf

from spinenet_tf.data import augment, copy_paste
from spinenet_tf.data.coco import read_coco
from spinenet_tf.data.report import DataReport
from spinenet_tf.data.tfrecord import parse_example

AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass
class Source:
    """A dataset of undecoded examples, with what is known about it up front."""

    make_dataset: object  # with_masks -> tf.data.Dataset
    num_images: int | None
    report: DataReport
    categories: list | None = None
    num_boxes: int | None = None  # non-crowd objects: what there is to learn (unknown for TFRecords)

    def dataset(self, with_masks=False):
        return self.make_dataset(with_masks)


def coco_source(images_dir, annotations_file, verify_images=True, check_masks=False):
    """Images and annotations read straight from a COCO instances file.

    `check_masks` (for training that uses instance masks: copy-paste, a mask head) counts
    in the report the objects whose mask will be box-filled (see `read_coco`).
    """
    coco = read_coco(images_dir, annotations_file, verify_images, check_masks)
    records = coco.records
    sizes = np.array([[r.height, r.width] * 2 for r in records], np.float32).reshape(-1, 4)

    def ragged(values, dtype):
        return tf.ragged.constant([v.tolist() for v in values], dtype=dtype, ragged_rank=1)

    slices = {
        "path": tf.constant([r.path for r in records], tf.string),
        "image_id": tf.constant([r.image_id for r in records], tf.int64),
        "boxes": tf.RaggedTensor.from_row_lengths(
            np.concatenate([r.boxes / size for r, size in zip(records, sizes)] or [np.zeros((0, 4))]).astype(
                np.float32
            ),
            [len(r.classes) for r in records],
        ),
        "classes": ragged([r.classes for r in records], tf.int32),
        "is_crowd": ragged([r.is_crowd for r in records], tf.bool),
        "index": tf.range(len(records)),
    }

    def rasterise(index):
        return records[int(index)].masks()

    def make_dataset(with_masks):
        def load(example):
            example = dict(example)
            example["encoded"] = tf.io.read_file(example.pop("path"))
            index = example.pop("index")
            if with_masks:
                example["masks"] = tf.numpy_function(rasterise, [index], tf.uint8, stateful=False)
            return example

        return tf.data.Dataset.from_tensor_slices(slices).map(load, num_parallel_calls=AUTOTUNE)

    num_boxes = sum(int(np.count_nonzero(~r.is_crowd)) for r in records)
    return Source(make_dataset, len(records), coco.report, coco.categories, num_boxes)


def tfrecord_source(file_pattern):
    """TFRecord shards (Model Garden / TF Object Detection API schema) matching a glob pattern."""
    files = sorted(glob.glob(file_pattern))
    if not files:
        raise FileNotFoundError(f"No TFRecord files match {file_pattern!r}.")

    def make_dataset(with_masks):  # mask problems show only when decoded: counted in the report then
        files_dataset = tf.data.Dataset.from_tensor_slices(files)
        records = files_dataset.interleave(
            tf.data.TFRecordDataset, cycle_length=AUTOTUNE, num_parallel_calls=AUTOTUNE, deterministic=False
        )
        return records.map(lambda s: parse_example(s, with_masks), num_parallel_calls=AUTOTUNE)

    return Source(make_dataset, None, DataReport(file_pattern))


def make_source(split, check_masks=False):
    """The Source of a config data split: its `tfrecord` glob, else its COCO `images` and `annotations`.

    Prints the data report of a COCO split (what was skipped or fixed) before any step
    runs; `check_masks` includes the instance masks in it (see `coco_source`).
    """
    if split.tfrecord:
        return tfrecord_source(split.tfrecord)
    source = coco_source(split.images, split.annotations, check_masks=check_masks)
    print(source.report.summary(), flush=True)
    return source


def _box_masks(boxes, height, width):
    """Box-filled [K, H, W] masks (the pixels whose centres lie in the box) for objects without a
    usable mask: copy-paste then pastes box crops. The rule of `ImageRecord.masks`."""
    ys = tf.range(height, dtype=tf.float32)[None, :, None] + 0.5
    xs = tf.range(width, dtype=tf.float32)[None, None, :] + 0.5
    inside = (
        (ys >= boxes[:, 0, None, None])
        & (ys < boxes[:, 2, None, None])
        & (xs >= boxes[:, 1, None, None])
        & (xs < boxes[:, 3, None, None])
    )
    return tf.cast(inside, tf.uint8)


def decode(example, masks_report=None):
    """Undecoded example -> image uint8 [H, W, 3] (any JPEG/PNG/BMP/GIF: gray, RGBA, 16-bit), pixel boxes.

    With `masks_report` (the source's DataReport) the instance masks are decoded too,
    "masks" [K, H, W] uint8, and their problems counted in it (see `_decoded_masks`).
    """
    image = tf.io.decode_image(example["encoded"], channels=3, dtype=tf.uint8, expand_animations=False)
    image = tf.ensure_shape(image, [None, None, 3])
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    size = tf.cast(tf.stack([height, width, height, width]), tf.float32)
    decoded = {
        "image": image,
        "image_id": example["image_id"],
        "boxes": tf.reshape(example["boxes"], [-1, 4]) * size,
        "classes": example["classes"],
        "is_crowd": example["is_crowd"],
    }
    if masks_report is not None:
        decoded["masks"] = _decoded_masks(example, decoded["boxes"], height, width, masks_report)
    return decoded


def _decoded_masks(example, boxes, height, width, report):
    """[K, H, W] uint8 masks of an example; an object's mask is box-filled (training goes on) when
    it is missing, of another size than the image, or empty.

    COCO sources counted their annotations' problems when read (`read_coco`); here each
    object whose mask is box-filled is counted in `report` as it is read, with its
    image_id: TFRecord masks are only seen now, and a COCO file's image size can differ
    from the JSON's when its images were not verified.
    """
    num_objects = tf.shape(boxes)[0]
    shape = tf.stack([num_objects, height, width])
    if "masks" in example:
        masks, kinds, details = _rasterised_masks(example["masks"], shape)
    else:
        masks, kinds, details = _decoded_pngs(example["mask_pngs"], shape)
    bad = (kinds != "") & ~example["is_crowd"]  # crowd objects are never trained on

    def counted():
        objects = tf.strings.as_string(tf.range(num_objects))
        image_id = tf.strings.as_string(example["image_id"])
        named = tf.strings.join(["image_id ", image_id, ": object ", objects, ": ", details])
        return _counted(report, tf.boolean_mask(kinds, bad), tf.boolean_mask(named, bad), masks)

    masks = tf.cond(tf.reduce_any(bad), counted, lambda: masks)
    empty = ~tf.reduce_any(masks > 0, axis=[1, 2])
    return tf.cond(
        tf.reduce_any(empty),
        lambda: tf.where(empty[:, None, None], _box_masks(boxes, height, width), masks),
        lambda: masks,
    )


def _size(height_width):
    return tf.strings.reduce_join(tf.strings.as_string(height_width), separator="x")


def _rasterised_masks(masks, shape):
    """A COCO source's [K, h, w] masks -> (masks, zero unless [K, H, W]; problem kinds [K], "" for
    none; details [K])."""
    masks = tf.ensure_shape(masks, [None, None, None])
    fits = tf.reduce_all(tf.shape(masks) == shape)
    detail = tf.strings.join(["masks ", _size(tf.shape(masks)[1:]), " for image ", _size(shape[1:])])
    masks = tf.cond(fits, lambda: masks, lambda: tf.zeros(shape, tf.uint8))
    return masks, tf.fill(shape[:1], tf.where(fits, "", "mismatched_mask")), tf.fill(shape[:1], detail)


def _decoded_pngs(pngs, shape):
    """A TFRecord's mask PNGs -> (masks [K, H, W] uint8, zero where unusable; problem kinds [K], ""
    for none; details [K])."""
    num_objects, image_size = shape[0], shape[1:]

    def decode_png(png):
        decoded = tf.io.decode_png(png, channels=1)[:, :, 0] > 0
        fits = tf.reduce_all(tf.shape(decoded) == image_size)
        mask = tf.cond(fits, lambda: tf.cast(decoded, tf.uint8), lambda: tf.zeros(image_size, tf.uint8))
        kind = tf.where(fits, tf.where(tf.reduce_any(decoded), "", "empty_mask"), "mismatched_mask")
        size = tf.strings.join(["mask PNG ", _size(tf.shape(decoded)), " for image ", _size(image_size)])
        return mask, kind, tf.where(fits, "mask PNG has no pixels", size)

    def decode_all():
        signature = (tf.TensorSpec([None, None], tf.uint8), tf.string, tf.string)
        return tf.map_fn(decode_png, pngs, fn_output_signature=signature)

    def miscounted():
        kind = tf.where(tf.size(pngs) == 0, "missing_mask", "mismatched_mask")
        count = tf.strings.as_string(tf.stack([tf.size(pngs), num_objects]))
        detail = tf.strings.join([count[0], " mask PNGs for ", count[1], " objects"])
        return tf.zeros(shape, tf.uint8), tf.fill([num_objects], kind), tf.fill([num_objects], detail)

    masks, kinds, details = tf.cond(
        (tf.size(pngs) == num_objects) & (num_objects > 0), decode_all, miscounted
    )
    return tf.reshape(masks, shape), kinds, details


def _counted(report, kinds, details, masks):
    """`masks`, once each problem is counted in `report`, a Python object.

    Reached through tf.numpy_function, as the COCO source's rasterising is: the callback gets
    NumPy bytes and needs only the GIL in tf.data's threads, where tf.py_function would make
    eager tensors there and needs TensorFlow's eager context in each of them.
    """

    def warn(kinds, details):
        for kind, detail in zip(kinds, details):
            report.warn(kind.decode(), detail.decode())
        return np.array(True)

    with tf.control_dependencies([tf.numpy_function(warn, [kinds, details], tf.bool, stateful=True)]):
        return tf.identity(masks)


def _augment(example, image_size, scale_range, flip, with_masks):
    """Crowd boxes out, flip, scale jitter and crop to the square training size.

    The masks stay as decoded, less the objects that are gone; their "mask_grid" follows
    the image (see `augment`).
    """
    keep = ~example["is_crowd"]
    boxes, classes = tf.boolean_mask(example["boxes"], keep), tf.boolean_mask(example["classes"], keep)
    image = example["image"]
    grid = augment.pixel_grid(tf.shape(image)[:2]) if with_masks else None
    if flip:
        image, boxes, grid = augment.random_flip(image, boxes, grid)
    image, boxes, grid, kept = augment.scale_jitter_crop(image, boxes, grid, image_size, scale_range)
    result = {"image": image, "boxes": boxes, "classes": tf.boolean_mask(classes, kept)}
    if with_masks:
        objects = tf.boolean_mask(tf.boolean_mask(tf.range(tf.size(keep)), keep), kept)
        result["masks"] = tf.gather(example["masks"], objects)
        result["mask_grid"] = grid
    return result


def _resampled_masks(example):
    """The masks at the training size, as copy-paste composites them."""
    example = dict(example)
    example["masks"] = augment.resample_masks(example["masks"], example.pop("mask_grid"))
    return example


def _drop_padding(example):
    valid = example["classes"] >= 0
    return {key: value if key == "image" else tf.boolean_mask(value, valid) for key, value in example.items()}


def _training_pair(example, max_boxes, mask_crop_size):
    boxes, classes = augment.pad_labels(example["boxes"], example["classes"], max_boxes)
    labels = {"boxes": boxes, "classes": classes}
    if mask_crop_size is not None:
        crops = augment.crop_masks(
            example["masks"][:max_boxes],
            example["boxes"][:max_boxes],
            mask_crop_size,
            example.get("mask_grid"),
        )
        crops = tf.pad(crops, [[0, max_boxes - tf.shape(crops)[0]], [0, 0], [0, 0]])
        labels["masks"] = tf.ensure_shape(crops, [max_boxes, mask_crop_size, mask_crop_size])
    return augment.normalise_image(example["image"]), labels


def train_dataset(
    source,
    image_size,
    batch_size,
    max_boxes=100,
    scale_range=(0.5, 2.0),
    flip=True,
    copy_paste_probability=0.0,
    shuffle_buffer=1000,
    cache=False,
    repeat=True,
    mask_crop_size=None,
):
    """Augmented, shuffled, padded, batched training data (see the module docstring).

    `cache` keeps decoded images in memory (for datasets that fit: the embedded synthetic
    one); without it, the shuffle buffer holds encoded bytes only. Images that fail to
    decode are skipped with a logged warning. More than `max_boxes` objects: the extra
    ones are dropped. `mask_crop_size` (an int C: Model Garden uses 112) adds the "masks"
    [B, max_boxes, C, C] float32 targets, zero for padding. Masks are decoded for them
    and for copy-paste; objects whose mask is box-filled are counted in `source.report`.
    """
    with_masks = copy_paste_probability > 0 or mask_crop_size is not None
    report = source.report if with_masks else None
    dataset = source.dataset(with_masks)
    if cache:
        dataset = dataset.map(lambda e: decode(e, report), AUTOTUNE).ignore_errors(log_warning=True).cache()
        dataset = dataset.shuffle(shuffle_buffer)
        dataset = dataset.repeat() if repeat else dataset
    else:
        dataset = dataset.shuffle(shuffle_buffer)
        dataset = dataset.repeat() if repeat else dataset
        dataset = dataset.map(lambda e: decode(e, report), AUTOTUNE).ignore_errors(log_warning=True)
    dataset = dataset.map(lambda e: _augment(e, image_size, scale_range, flip, with_masks), AUTOTUNE)
    if copy_paste_probability > 0:
        padding = {"image": 0.0, "boxes": 0.0, "classes": -1, "masks": tf.constant(0, tf.uint8)}
        dataset = dataset.map(_resampled_masks, AUTOTUNE)
        dataset = dataset.padded_batch(2, padding_values=padding, drop_remainder=True)
        dataset = dataset.map(
            lambda pair: copy_paste.paste_within_pairs(
                pair, copy_paste_probability, mask_crop_size is not None
            ),
            AUTOTUNE,
        )
        # Not unbatch(): TensorFlow (2.21) segfaults unbatching a component with no elements, [2, 0],
        # which a pair of images without objects gives.
        dataset = dataset.flat_map(tf.data.Dataset.from_tensor_slices).map(_drop_padding, AUTOTUNE)
    dataset = dataset.map(lambda e: _training_pair(e, max_boxes, mask_crop_size), AUTOTUNE)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def eval_dataset(source, batch_size):
    """(images, {"image_id" [B] int64, "original_size" [B, 2] int32 (height, width)}) batches.

    Images are uint8 [B, Hmax, Wmax, 3], each zero-padded bottom/right to the batch's
    largest height and width; every image comes once, in source order, except those that
    fail to decode (skipped with a logged warning). `unpad` gives the photos back.
    """

    def with_meta(example):
        image = example["image"]
        return image, {"image_id": example["image_id"], "original_size": tf.shape(image)[:2]}

    dataset = source.dataset().map(decode, AUTOTUNE).ignore_errors(log_warning=True)
    return dataset.map(with_meta, AUTOTUNE).padded_batch(batch_size).prefetch(AUTOTUNE)


def unpad(images, original_sizes):
    """A padded batch (tf or numpy) -> a list of numpy uint8 [H, W, 3] images, padding cut off."""
    images, original_sizes = np.asarray(images), np.asarray(original_sizes)
    if len(images) != len(original_sizes):
        raise ValueError(f"unpad: {len(images)} images but {len(original_sizes)} original sizes.")
    return [image[:height, :width] for image, (height, width) in zip(images, original_sizes)]
