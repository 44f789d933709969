"""Shared test helpers: tiny detectors and classifiers, synthetic batches, images and an AP50 scorer.

Test modules import from here (never from each other), so each one can be read alone.
"""

import io
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from spinenet_tf import ImageClassifier, MaskRCNN, RetinaNet, SpineNet
from spinenet_tf.layers.image_converter import normalise_image

SIZE = 128
# A 7-block scale-permuted network with outputs L3..L7: tracing a training step of it
# costs half of SpineNet-49's, for tests of mechanics rather than of the architecture.
SMALL_BLOCK_SPECS = [
    [3, "bottleneck", [0, 1], False],
    [5, "residual", [1, 2], False],
    [3, "bottleneck", [2, 3], True],
    [4, "bottleneck", [2, 3], True],
    [5, "bottleneck", [3, 5], True],
    [6, "bottleneck", [3, 6], True],
    [7, "bottleneck", [5, 6], True],
]


def tiny_backbone(block_specs=SMALL_BLOCK_SPECS, size=SIZE):
    return SpineNet(
        "49",
        filter_size_scale=0.25,
        endpoints_num_filters=32,
        norm_momentum=0.9,
        image_shape=(size, size, 3),
        block_specs=block_specs,
    )


# A classifier's test size: not a multiple of 128, as ImageNet's 224 is not.
CLASSIFIER_SIZE = 96


def tiny_classifier(num_classes=4, block_specs=SMALL_BLOCK_SPECS, **kwargs):
    return ImageClassifier(tiny_backbone(block_specs, CLASSIFIER_SIZE), num_classes, **kwargs)


def tiny_detector(num_classes=3, block_specs=SMALL_BLOCK_SPECS, **kwargs):
    backbone = tiny_backbone(block_specs)
    defaults = dict(num_convs=2, num_filters=32, norm_momentum=0.9)
    return RetinaNet(backbone, num_classes, **{**defaults, **kwargs})


def tiny_mask_rcnn(num_classes=3, block_specs=SMALL_BLOCK_SPECS, **kwargs):
    """A Mask R-CNN at test size: tiny_detector's backbone, narrow heads, few RoIs."""
    backbone = tiny_backbone(block_specs)
    defaults = dict(
        rpn_num_filters=32,
        box_head_num_convs=1,
        box_head_num_filters=32,
        box_head_fc_dims=64,
        mask_head_num_convs=1,
        mask_head_num_filters=32,
        proposal_pre_nms_top_k=256,
        num_proposals=64,
        test_proposal_pre_nms_top_k=256,
        test_num_proposals=64,
        roi_samples=64,
        mask_samples=16,
        norm_momentum=0.9,
        weight_decay=0.0,
        seed=0,
    )
    return MaskRCNN(backbone, num_classes, **{**defaults, **kwargs})


def synthetic_instances(num_images, objects_per_image=2, max_boxes=4, mask_crop_size=28, seed=0):
    """uint8 photos of ellipses on dark noise (class c paints channel c - 1), their labels
    {"boxes", "classes", "masks" [B, max_boxes, S, S] each ellipse cropped to its box (cell i
    samples the box at (i + 0.5) / S)} and the full-image masks [B, max_boxes, H, W]."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 50, (num_images, SIZE, SIZE, 3)).astype("uint8")
    boxes = np.zeros((num_images, max_boxes, 4), "float32")
    classes = np.full((num_images, max_boxes), -1, "int32")
    crops = np.zeros((num_images, max_boxes, mask_crop_size, mask_crop_size), "float32")
    full = np.zeros((num_images, max_boxes, SIZE, SIZE), "uint8")
    centres = np.arange(SIZE) + 0.5
    steps = (np.arange(mask_crop_size) + 0.5) / mask_crop_size
    for i in range(num_images):
        for j in range(objects_per_image):
            h, w = rng.integers(24, 60, 2)
            y, x = rng.integers(0, SIZE - h), rng.integers(0, SIZE - w)
            c = int(rng.integers(1, 3))

            def inside(ys, xs, y=y, x=x, h=h, w=w):
                return ((ys - y - h / 2) / (h / 2)) ** 2 + ((xs - x - w / 2) / (w / 2)) ** 2 <= 1.0

            full[i, j] = inside(centres[:, None], centres[None, :])
            images[i, full[i, j] > 0, c - 1] = 255
            crops[i, j] = inside(y + h * steps[:, None], x + w * steps[None, :])
            boxes[i, j], classes[i, j] = [y, x, y + h, x + w], c
    return images, {"boxes": boxes, "classes": classes, "masks": crops}, full


def synthetic_photos(num_images, boxes_per_image=2, max_boxes=4, seed=0):
    """uint8 photos of coloured rectangles on dark noise (class c paints channel c - 1) and
    their labels {"boxes" [B, max_boxes, 4] pixels, "classes" [B, max_boxes], -1 padding}."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 50, (num_images, SIZE, SIZE, 3)).astype("uint8")
    boxes = np.zeros((num_images, max_boxes, 4), "float32")
    classes = np.full((num_images, max_boxes), -1, "int32")
    for i in range(num_images):
        for j in range(boxes_per_image):
            h, w = rng.integers(20, 56, 2)
            y, x = rng.integers(0, SIZE - h), rng.integers(0, SIZE - w)
            c = int(rng.integers(1, 3))
            images[i, y : y + h, x : x + w, c - 1] = 255
            boxes[i, j], classes[i, j] = [y, x, y + h, x + w], c
    return images, {"boxes": boxes, "classes": classes}


def synthetic_batch(num_images, boxes_per_image=2, max_boxes=4, seed=0):
    """`synthetic_photos` as the training pipeline gives them to `fit`: normalised floats."""
    photos, labels = synthetic_photos(num_images, boxes_per_image, max_boxes, seed)
    return keras.ops.convert_to_numpy(normalise_image(photos)), labels


def repeated(images, labels, times):
    """The same batch `times` over, so that one fit() epoch runs `times` steps."""
    return np.concatenate([images] * times), {k: np.concatenate([v] * times) for k, v in labels.items()}


def ap50(labels, detections):
    """COCO AP at IoU 0.5 of detections against labels, with pycocotools."""
    images, annotations, results = [], [], []
    for i, (boxes, classes) in enumerate(zip(labels["boxes"], labels["classes"])):
        images.append({"id": i, "height": SIZE, "width": SIZE})
        for box, cls in zip(boxes, classes):
            if cls >= 0:
                y0, x0, y1, x1 = box.tolist()
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i,
                        "category_id": int(cls),
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "area": (x1 - x0) * (y1 - y0),
                        "iscrowd": 0,
                    }
                )
        for k in range(int(detections["num_detections"][i])):
            y0, x0, y1, x1 = detections["boxes"][i, k].tolist()
            results.append(
                {
                    "image_id": i,
                    "category_id": int(detections["classes"][i, k]),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": float(detections["scores"][i, k]),
                }
            )
    truth = COCO()
    truth.dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1}, {"id": 2}]}
    truth.createIndex()
    evaluation = COCOeval(truth, truth.loadRes(results), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return evaluation.stats[1]


def spread_detector(seed=0):
    """tiny_detector (128 px, 3 classes) with random prediction convs: many distinct detections."""
    keras.utils.set_random_seed(seed)
    model = tiny_detector(num_classes=3)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if layer.name.endswith("_predict"):
            kernel, bias = layer.get_weights()
            layer.set_weights([rng.normal(0, 0.05, kernel.shape).astype("float32"), np.zeros_like(bias)])
    return model


def assert_same_detections(actual, expected, score_tolerance=1e-5):
    """Two runtimes' detections of one image ({"boxes", "scores", "classes"}, real ones only)
    are the same: equal scores in order, and each detection has its twin (class, box within
    1e-3 px of the image scale) among those of a score within `score_tolerance` (float
    differences between runtimes may swap near-ties)."""
    count = len(expected["scores"])
    assert len(actual["scores"]) == count > 1
    np.testing.assert_allclose(actual["scores"], expected["scores"], rtol=0, atol=score_tolerance)
    tolerance = 1e-3 * max(1.0, float(np.abs(expected["boxes"]).max()))
    unmatched = set(range(count))
    for box, score, label in zip(expected["boxes"], expected["scores"], expected["classes"]):
        twins = [
            j
            for j in sorted(unmatched)
            if actual["classes"][j] == label
            and abs(actual["scores"][j] - score) <= score_tolerance
            and np.abs(actual["boxes"][j] - box).max() <= tolerance
        ]
        assert twins, f"no twin of the detection {label} {score:.5f} {box}"
        unmatched.remove(twins[0])


def random_image(height, width, seed=0):
    """A uint8 image with rectangles on noise, so the network sees structure."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
    for _ in range(4):
        h, w = rng.integers(10, max(11, height // 2)), rng.integers(10, max(11, width // 2))
        y, x = rng.integers(0, height - h), rng.integers(0, width - w)
        image[y : y + h, x : x + w, rng.integers(0, 3)] = 255
    return image


def encode(image, image_format="PNG"):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=image_format)
    return buffer.getvalue()


REPO = pathlib.Path(__file__).resolve().parent.parent
# Put before a script run in a subprocess: there `import tensorflow` and `import pycocotools`
# fail, as on the accelerator machines, which have JAX but neither.
WITHOUT_TENSORFLOW = "import sys\nsys.modules.update(dict.fromkeys(['tensorflow', 'pycocotools'], None))\n"


def run_on_jax_without_tensorflow(script, *args, timeout=600):
    """The CompletedProcess of Python `script` run with `args` from the repository root, in a
    subprocess on the JAX backend (CPU) where TensorFlow and pycocotools cannot be imported."""
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_TENSORFLOW + script, *map(str, args)],
        env={**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
