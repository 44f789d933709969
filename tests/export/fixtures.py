"""A tiny detector whose head gives spread-out scores and boxes, and images for it."""

import io

import keras
import numpy as np
from PIL import Image

from tests.detection.test_retinanet import tiny_detector


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
