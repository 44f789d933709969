"""A RetinaNet training step on random images and boxes, timed: the measurement that the CPU
(`training_throughput`) and accelerator (`accelerator_throughput`) benchmarks share."""

import numpy as np

from benchmarks.timing import median_seconds

WARMUP_STEPS = 2  # the first traces and compiles the step


def random_labels(rng, batch, boxes, size):
    """`boxes` random boxes per image (ymin, xmin, ymax, xmax in pixels of a size x size image)
    and their classes, in 1..90."""
    corners = rng.uniform(0, size, (batch, boxes, 2, 2))
    low, high = corners.min(axis=2), corners.max(axis=2) + 8.0
    classes = rng.integers(1, 91, (batch, boxes)).astype("int32")
    return np.concatenate([low, np.minimum(high, size)], axis=-1).astype("float32"), classes


def random_batch(batch, size, max_boxes, num_classes, seed=0):
    """Images in [0, 255] and padded labels with classes in 1..num_classes-1."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    boxes, classes = random_labels(rng, batch, max_boxes, size)
    return images, {"boxes": boxes, "classes": classes % (num_classes - 1) + 1}


def training_images_per_second(model, images, labels, steps):
    """Images/s of `model.train_on_batch`: median of `steps` steps after WARMUP_STEPS."""
    seconds = median_seconds(lambda: model.train_on_batch(images, labels), steps, WARMUP_STEPS)
    return len(images) / seconds
