"""Serving graphs of any task: images, encoded image bytes or tf.Examples in; a detector's
final detections (and, for Mask R-CNN, `detection_masks` [B, D, 28, 28] in each box's frame)
or a classifier's `probabilities` and top-k `classes` and `scores` out.

Every input goes through the model's own `ImageConverter` (letterboxed or centre-cropped
to the model size, normalised) inside the graph, as `predict` does, and detections are
mapped back to the pixels of each input image. Bad requests fail with an error naming the
input, the batch index and the problem.
"""

import numpy as np
import tensorflow as tf

from spinenet_tf.errors import ModelError
from spinenet_tf.layers.image_converter import (
    boxes_to_original,
    center_crop_window,
    letterboxed_size,
    normalise_image,
)

# Post-processing ops live under this name scope, so that int8 quantisation can leave them in float.
POSTPROCESS_SCOPE = "postprocess"
# First bytes of the formats tf.io.decode_image reads.
IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")


def model_image_size(model):
    """The static square input size of a model built for serving."""
    height, width = model.backbone.input.shape[1:3]
    if height is None or height != width:
        raise ModelError(f"Export needs a model built for a static square input, got {height}x{width}.")
    return int(height)


@tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([2], tf.int32)])
def _resize_uint8(image, size):
    """uint8 `image` resized to `size` (H, W), rounded.

    tf.image.resize is the bilinear, half-pixel, non-antialiased resize that
    `image_converter` writes as gathers for every backend, to the same float pixels, in a
    fraction of their time on the host.
    """
    return tf.cast(tf.clip_by_value(tf.round(tf.image.resize(image, size)), 0, 255), tf.uint8)


def letterbox_uint8(image, image_size):
    """Host-side letterboxing for a detector's .tflite input: (uint8 numpy [S, S, 3], scale (y, x)
    numpy), the pixels and scale of `image_converter.letterbox`, rounded."""
    height, width = np.shape(image)[:2]
    resized = letterboxed_size(height, width, image_size, image_size)
    letterboxed = np.zeros((image_size, image_size, 3), np.uint8)  # padded here: no float pass in TF
    letterboxed[: resized[0], : resized[1]] = _resize_uint8(image, resized).numpy()
    return letterboxed, np.float32(resized) / np.float32((height, width))


def center_crop_uint8(image, image_size, crop_fraction):
    """Host-side centre crop for a classifier's .tflite input: uint8 numpy [S, S, 3], the pixels
    of `image_converter.center_crop`, rounded."""
    height, width = np.shape(image)[:2]
    top, left, side = center_crop_window(height, width, crop_fraction)
    return _resize_uint8(image[top : top + side, left : left + side], [image_size, image_size]).numpy()


def detect_letterboxed(model, images, suppress=None):
    """Model-sized images [B, S, S, 3] (0..255; letterboxed, or centre-cropped for a classifier)
    -> (raw outputs, answers: detections in model pixels, or a classifier's probabilities).

    `suppress`: RetinaNet's NMS, when not its own (`greedy_suppression` in a .tflite)."""
    raw = model(normalise_image(images), training=False)
    with tf.name_scope(POSTPROCESS_SCOPE):
        options = {} if suppress is None else {"suppress": suppress}
        answers = model.decode_predictions(raw, tuple(images.shape[1:3]), **options)
    return raw, answers


def greedy_suppression(boxes, scores, iou_threshold, valid=None):
    """`nms.non_max_suppression` (same arguments, same kept candidates) by TensorFlow's greedy
    NMS kernel, image by image of a static batch.

    For a .tflite: LiteRT runs it as its NON_MAX_SUPPRESSION_V4 kernel, which compares each
    candidate with the boxes kept so far, where keras.ops' fixed-point iteration multiplies a
    K x K matrix per step; at 1,000 candidates that took about half of the post-processing.
    """
    num = boxes.shape[1]
    # LiteRT's kernel suppresses at IoU >= its threshold, ours (and TensorFlow's) above it.
    threshold = np.nextafter(np.float32(iou_threshold), np.float32(np.inf))
    keeps = []
    for image in range(boxes.shape[0]):
        image_scores = scores[image] if valid is None else tf.where(valid[image], scores[image], -1.0)
        selected, count = tf.raw_ops.NonMaxSuppressionV4(
            boxes=boxes[image],
            scores=image_scores,
            max_output_size=num,
            iou_threshold=threshold,
            score_threshold=-np.inf if valid is None else 0.0,  # invalid candidates score -1
            pad_to_max_output_size=True,
        )
        selected = tf.where(tf.range(num) < count, selected, num)  # padding to a spare row
        kept = tf.scatter_nd(selected[:, None], tf.ones([num], tf.bool), [num + 1])
        keeps.append(kept[:num])
    return tf.stack(keeps)


def to_serving_outputs(answers, scales=None, original_sizes=None):
    """A task's answers -> the serving output names: a classifier's as they are; a detector's
    `detection_*`, boxes mapped to the originals when `scales` are given."""
    if "boxes" not in answers:  # a classifier: probabilities, top-k classes and scores
        return dict(answers)
    boxes = answers["boxes"]
    if scales is not None:
        boxes = boxes_to_original(boxes, scales, original_sizes)
    outputs = {
        "detection_boxes": boxes,
        "detection_scores": answers["scores"],
        "detection_classes": answers["classes"],
        "num_detections": answers["num_detections"],
    }
    if "masks" in answers:  # [B, D, M, M] in each box's frame: unchanged by the letterbox
        outputs["detection_masks"] = answers["masks"]
    return outputs


def _with_size_check(image, where):
    """`image` [..., H, W, 3], once its height and width are known to be positive."""
    size = tf.shape(image)[-3:-1]
    check = tf.debugging.assert_positive(
        size, message=f"{where}: an image has zero height or width; (H, W) ="
    )
    with tf.control_dependencies([check]):
        return tf.identity(image)


def _decode(encoded, index, input_name):
    """Encoded bytes -> uint8 [H, W, 3]; unknown or empty data is an error naming its batch index."""
    known = tf.reduce_any(
        [tf.strings.substr(encoded, 0, len(signature)) == signature for signature in IMAGE_SIGNATURES]
    )
    message = tf.strings.format(
        input_name + "[{}] is not a JPEG, PNG, GIF or BMP image ({} bytes, starting {})",
        (index, tf.strings.length(encoded), tf.strings.substr(encoded, 0, 8)),
    )
    with tf.control_dependencies([tf.debugging.Assert(known, [message])]):
        image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3])


class TaskServing:
    """The serving functions of a task (RetinaNet, MaskRCNN, ImageClassifier) built for a static
    square input."""

    def __init__(self, model):
        self.model = model
        self.image_size = model_image_size(model)

    def _answer_each(self, prepare, elements):
        """Applies `prepare(element, index) -> uint8 image` per batch element, converts each
        image to the model size, then runs the model on the batch."""
        indices = tf.range(tf.shape(elements)[0])

        def one(pair):
            image = prepare(*pair)
            resized, scale = self.model.image_converter.resize(
                image[None], (self.image_size, self.image_size)
            )
            return resized[0], scale, tf.shape(image)[:2]

        signature = (
            tf.TensorSpec([self.image_size, self.image_size, 3], tf.float32),
            tf.TensorSpec([2], tf.float32),
            tf.TensorSpec([2], tf.int32),
        )
        images, scales, sizes = tf.map_fn(one, (elements, indices), fn_output_signature=signature)
        _, answers = detect_letterboxed(self.model, images)
        return to_serving_outputs(answers, scales, sizes)

    def serve_images(self, images):
        """uint8 images [B, H, W, 3] of any one size.

        The signature declares no shape, so that a wrong one is caught by this check,
        whose error names the tensor, its shape and the expected one.
        """
        images = _with_size_check(tf.ensure_shape(images, [None, None, None, 3]), "images")
        inputs, scale = self.model.image_converter(images)
        answers = self.model.decode_predictions(self.model(inputs, training=False), (self.image_size,) * 2)
        return to_serving_outputs(answers, scale, tf.shape(images)[1:3])

    def serve_image_bytes(self, image_bytes):
        """Encoded JPEG/PNG/GIF/BMP strings [B], each of its own size."""

        def prepare(encoded, index):
            return _with_size_check(_decode(encoded, index, "image_bytes"), "image_bytes")

        return self._answer_each(prepare, image_bytes)

    def serve_tf_example(self, examples):
        """Serialized tf.Example protos [B] with the image in `image/encoded`."""
        encoded = tf.io.parse_example(examples, {"image/encoded": tf.io.FixedLenFeature([], tf.string)})[
            "image/encoded"
        ]

        def prepare(data, index):
            return _with_size_check(_decode(data, index, "image/encoded of examples"), "examples")

        return self._answer_each(prepare, encoded)
