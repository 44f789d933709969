"""A deterministic synthetic classification set: one large shape per image, the class by its kind.

The default classification dataset, so training, evaluation and the tests run without a
download. Shapes and backgrounds are the detection set's (`synthetic.py`) plus a ring and
a crescent; colour, size, position and rotation vary, so a small network must learn the
outline, yet a tiny SpineNet reaches a clear top-1 in minutes on a CPU.
"""

import json
import os

import numpy as np
from PIL import Image

from spinenet_tf.data.synthetic import check_int, contrasting_colour, random_background, shape_mask
from spinenet_tf.errors import DataError

# Class folder names, sorted: the labels are their indices.
CLASS_NAMES = ["circle", "crescent", "cross", "ellipse", "ring", "square", "star", "triangle"]
SHAPE_FRACTION = (0.45, 0.85)  # of the image's side: the shape's extent
MIN_IMAGE_SIZE = 32
SPLITS = ("train", "val")
# Written last, with the arguments: its presence means the set is complete.
SUMMARY_FILE = "synthetic_classification.json"


def _disc(size, radius, centre_shift=(0.0, 0.0)):
    """Boolean [size, size] disc of `radius` pixels around the square's centre plus (dy, dx)."""
    centre = (size - 1) / 2
    dy, dx = (axis - centre - shift for axis, shift in zip(np.ogrid[:size, :size], centre_shift))
    return dx**2 + dy**2 <= radius**2


def class_mask(name, size, rng):
    """Boolean [size, size] mask of a shape of class `name` spanning the square, randomly rotated."""
    if name == "ring":
        return shape_mask("circle", size, rng) & ~_disc(size, size / 2 * rng.uniform(0.45, 0.65))
    if name == "crescent":
        angle = rng.uniform(0, 2 * np.pi)
        shift = size / 2 * rng.uniform(0.35, 0.55)
        bite = _disc(size, size / 2 * 0.85, (shift * np.sin(angle), shift * np.cos(angle)))
        return shape_mask("circle", size, rng) & ~bite
    return shape_mask(name, size, rng)


def render_example(rng, image_size, class_name):
    """uint8 [S, S, 3]: a varied background with one shape of `class_name` in a contrasting colour."""
    background = random_background(rng, image_size, image_size)
    image = background.round().astype(np.uint8)
    size = int(round(image_size * rng.uniform(*SHAPE_FRACTION)))
    mask = class_mask(class_name, size, rng)
    top, left = rng.integers(image_size - size + 1, size=2)
    window = np.s_[top : top + size, left : left + size]
    image[window][mask] = contrasting_colour(rng, [background[window].reshape(-1, 3).mean(axis=0)])
    return image


def _write_split(split_dir, split, num_images, image_size, seed):
    """Writes one split's PNGs; image i has class i mod K and depends only on (seed, split, i)."""
    for class_name in CLASS_NAMES:
        os.makedirs(os.path.join(split_dir, class_name), exist_ok=True)
    for index in range(num_images):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split), index)))
        class_name = CLASS_NAMES[index % len(CLASS_NAMES)]
        image = render_example(rng, image_size, class_name)
        Image.fromarray(image).save(os.path.join(split_dir, class_name, f"{index:05d}.png"))


def write_synthetic_classification(out_dir, num_train=800, num_val=200, image_size=96, seed=0):
    """Writes out_dir/{train,val}/<class name>/NNNNN.png, balanced over the classes (to within one).

    The same arguments give byte-identical files, and the val split does not depend on
    num_train. A complete set written with the same arguments is kept as it is; one
    written with other arguments is an error (delete it or choose another out_dir).
    Returns {"train": {"images", "dir"}, "val": {...}, "classes": class names by label}.
    """
    check_int("num_train", num_train, len(CLASS_NAMES))
    check_int("num_val", num_val, len(CLASS_NAMES))
    check_int("image_size", image_size, MIN_IMAGE_SIZE)
    check_int("seed", seed, 0)
    arguments = {
        "num_train": int(num_train),
        "num_val": int(num_val),
        "image_size": int(image_size),
        "seed": int(seed),
    }
    out_dir = os.fspath(out_dir)
    counts = {"train": arguments["num_train"], "val": arguments["num_val"]}
    summary = {split: {"images": counts[split], "dir": os.path.join(out_dir, split)} for split in SPLITS}
    summary["classes"] = CLASS_NAMES
    summary_file = os.path.join(out_dir, SUMMARY_FILE)
    if os.path.exists(summary_file):
        with open(summary_file) as f:
            written = json.load(f)
        if written != arguments:
            raise DataError(
                f"{out_dir}: holds a synthetic classification set written with {written}, not "
                f"{arguments}; delete it or choose another out_dir."
            )
        return summary
    for split in SPLITS:
        _write_split(summary[split]["dir"], split, counts[split], arguments["image_size"], arguments["seed"])
    with open(summary_file, "w") as f:
        json.dump(arguments, f)
    return summary
