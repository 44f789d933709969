"""A deterministic synthetic detection set in COCO format: coloured shapes on varied backgrounds.

It is the default dataset, so training, evaluation and the tests run without a download.
Every object is painted through its own binary mask while a per-pixel instance map is kept,
so each annotation's mask, area and box are exactly the pixels where that object is on top.
"""

import json
import numbers
import os

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from spinenet_tf.errors import DataError

CATEGORIES = [
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 2, "name": "square", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
    {"id": 4, "name": "ellipse", "supercategory": "shape"},
    {"id": 5, "name": "star", "supercategory": "shape"},
    {"id": 6, "name": "cross", "supercategory": "shape"},
]

MIN_OBJECT_SIZE = 10  # pixels across; the largest object spans half the image's shorter side
MIN_VISIBLE_PIXELS = 16
MIN_VISIBLE_FRACTION = 0.3  # of an object's full area, once later objects are painted over it
MIN_CONTRAST = 90.0  # RGB distance between an object and the colours it is painted over
PLACEMENT_TRIES = 10
SPLITS = ("train", "val")


def _unit_polygon(vertices):
    """(x, y) vertices scaled so the farthest lies on the unit circle."""
    vertices = np.asarray(vertices, np.float64)
    return vertices / np.linalg.norm(vertices, axis=1).max()


def _regular(n, radii=(1.0,)):
    angles = np.pi / 2 + np.arange(n * len(radii)) * 2 * np.pi / (n * len(radii))
    radius = np.resize(radii, len(angles))
    return _unit_polygon(np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1))


_ARM = 0.3  # half-width of the cross's arms, relative to its half-length
POLYGONS = {
    "square": _regular(4),
    "triangle": _regular(3),
    "star": _regular(5, radii=(1.0, 0.4)),
    "cross": _unit_polygon(
        [
            (_ARM, 1),
            (_ARM, _ARM),
            (1, _ARM),
            (1, -_ARM),
            (_ARM, -_ARM),
            (_ARM, -1),
            (-_ARM, -1),
            (-_ARM, -_ARM),
            (-1, -_ARM),
            (-1, _ARM),
            (-_ARM, _ARM),
            (-_ARM, 1),
        ]
    ),
}


def shape_mask(name, size, rng):
    """Boolean [size, size] mask of a randomly rotated shape that spans the square."""
    centre, radius = (size - 1) / 2, size / 2
    angle = rng.uniform(0, 2 * np.pi)
    cos, sin = np.cos(angle), np.sin(angle)
    if name in ("circle", "ellipse"):
        minor = radius * (rng.uniform(0.35, 0.7) if name == "ellipse" else 1.0)
        dy, dx = (axis - centre for axis in np.ogrid[:size, :size])
        return ((dx * cos + dy * sin) / radius) ** 2 + ((dy * cos - dx * sin) / minor) ** 2 <= 1
    x, y = POLYGONS[name].T
    points = np.stack([x * cos - y * sin, x * sin + y * cos], axis=1) * radius + centre
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in points], fill=1)
    return np.asarray(canvas, bool)


def random_background(rng, height, width):
    """Float [H, W, 3] background: a solid colour, a linear gradient or a smooth noise texture."""
    kind = rng.integers(3)
    if kind == 0:
        return np.broadcast_to(rng.uniform(0, 255, 3), (height, width, 3)).astype(np.float32)
    if kind == 1:
        angle = rng.uniform(0, 2 * np.pi)
        ys, xs = np.ogrid[:height, :width]
        t = xs * np.cos(angle) + ys * np.sin(angle)
        t = (t - t.min()) / (t.max() - t.min())
        start, end = rng.uniform(0, 255, (2, 3))
        return (start + t[..., None] * (end - start)).astype(np.float32)
    blobs = rng.integers(0, 256, (*rng.integers(2, 9, 2), 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(blobs).resize((width, height), Image.BICUBIC), np.float32)
    grain = rng.standard_normal(smooth.shape, dtype=np.float32) * np.float32(rng.uniform(2, 12))
    return np.clip(smooth + grain, 0, 255)


def contrasting_colour(rng, references):
    """A random colour at least MIN_CONTRAST from every reference colour (or the farthest of 16 tries)."""
    candidates = rng.integers(0, 256, (16, 3))
    distance = np.linalg.norm(candidates[:, None] - np.asarray(references)[None], axis=-1).min(axis=1)
    far = np.flatnonzero(distance >= MIN_CONTRAST)
    return candidates[far[0] if len(far) else distance.argmax()].astype(np.uint8)


def render_image(rng, height, width, max_objects=8):
    """One synthetic image: (image uint8 [H, W, 3], instance ids uint8 [H, W], objects).

    Instance k (1-based; 0 is background) is objects[k - 1], a dict with its "category_id"
    and "full_area" (its pixel count before later objects covered part of it). A placement
    that would leave an earlier object under MIN_VISIBLE_PIXELS or MIN_VISIBLE_FRACTION of its
    area is drawn again, so every painted object stays visible enough to be annotated.
    """
    background = random_background(rng, height, width)
    image = background.round().astype(np.uint8)
    ids = np.zeros((height, width), np.uint8)
    objects, colours, visible, needed = [], [], np.zeros(1, np.int64), np.zeros(1, np.int64)
    largest = max(MIN_OBJECT_SIZE, min(height, width) // 2)
    for _ in range(rng.integers(1, max_objects + 1)):
        for _ in range(PLACEMENT_TRIES):
            category = CATEGORIES[rng.integers(len(CATEGORIES))]
            size = int(round(np.exp(rng.uniform(np.log(MIN_OBJECT_SIZE), np.log(largest)))))
            mask = shape_mask(category["name"], size, rng)
            top, left = rng.integers(height - size + 1), rng.integers(width - size + 1)
            window = np.s_[top : top + size, left : left + size]
            hidden = np.bincount(ids[window][mask], minlength=len(visible))
            if mask.sum() >= MIN_VISIBLE_PIXELS and np.all((visible - hidden)[1:] >= needed[1:]):
                break
        else:
            continue
        area = int(mask.sum())
        present = np.unique(ids[window])
        references = [background[window].reshape(-1, 3).mean(axis=0)] + [colours[k - 1] for k in present if k]
        colours.append(contrasting_colour(rng, references))
        image[window][mask] = colours[-1]
        ids[window][mask] = len(objects) + 1
        visible = np.append(visible - hidden, area)
        needed = np.append(needed, max(MIN_VISIBLE_PIXELS, int(np.ceil(MIN_VISIBLE_FRACTION * area))))
        objects.append({"category_id": category["id"], "full_area": area})
    return image, ids, objects


def _annotations(ids, objects, image_id, first_id):
    """COCO annotations (RLE of the visible mask, its pixel count and tight box) of one image."""
    annotations = []
    for k, obj in enumerate(objects, start=1):
        visible = ids == k
        rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
        x, y = cols[0], rows[0]
        rle = mask_utils.encode(np.asfortranarray(visible.astype(np.uint8)))
        annotations.append(
            {
                "id": first_id + len(annotations),
                "image_id": image_id,
                "category_id": obj["category_id"],
                "bbox": [float(x), float(y), float(cols[-1] + 1 - x), float(rows[-1] + 1 - y)],
                "area": float(visible.sum()),
                "iscrowd": 0,
                "segmentation": {
                    "counts": rle["counts"].decode("ascii"),
                    "size": [int(s) for s in rle["size"]],
                },
            }
        )
    return annotations


def _write_split(out_dir, split, num_images, seed, min_size, max_size, max_objects):
    """Writes one split's JPEGs and annotations file; image i's content depends only on (seed, split, i)."""
    images_dir = os.path.join(out_dir, split)
    os.makedirs(images_dir, exist_ok=True)
    data = {
        "info": {"description": "spinenet_tf synthetic shapes", "seed": seed},
        "images": [],
        "annotations": [],
        "categories": CATEGORIES,
    }
    for index in range(num_images):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split), index)))
        height, width = (int(v) for v in rng.integers(min_size, max_size + 1, 2))
        image, ids, objects = render_image(rng, height, width, max_objects)
        file_name = f"{index:06d}.jpg"
        Image.fromarray(image).save(os.path.join(images_dir, file_name), quality=95, subsampling=0)
        data["images"].append({"id": index + 1, "file_name": file_name, "height": height, "width": width})
        data["annotations"] += _annotations(ids, objects, index + 1, len(data["annotations"]) + 1)
    annotations_file = os.path.join(out_dir, "annotations", f"instances_{split}.json")
    with open(annotations_file, "w") as f:
        json.dump(data, f)
    return {
        "images": num_images,
        "annotations": len(data["annotations"]),
        "dir": images_dir,
        "annotations_file": annotations_file,
    }


def check_int(name, value, minimum, maximum=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise DataError(f"{name} must be an integer, got {value!r}.")
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise DataError(f"{name} must be {bounds}, got {value}.")


def write_synthetic_coco(
    out_dir, num_train=1000, num_val=200, seed=0, min_size=192, max_size=320, max_objects=8
):
    """Writes out_dir/{train,val}/NNNNNN.jpg and out_dir/annotations/instances_{train,val}.json.

    Image heights and widths are drawn independently from [min_size, max_size]; each image
    has 1..max_objects shapes. The same seed gives byte-identical files, and the val split
    does not depend on num_train. Returns {"train": {...}, "val": {...}}, each with the
    number of images and annotations, the image directory and the annotations file.
    """
    check_int("num_train", num_train, 0)
    check_int("num_val", num_val, 0)
    check_int("seed", seed, 0)
    check_int("min_size", min_size, 2 * MIN_OBJECT_SIZE)
    check_int("max_size", max_size, 2 * MIN_OBJECT_SIZE)
    if max_size < min_size:
        raise DataError(f"max_size ({max_size}) must be >= min_size ({min_size}).")
    check_int("max_objects", max_objects, 1, 255)
    out_dir = os.fspath(out_dir)
    os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
    return {
        split: _write_split(
            out_dir, split, int(count), int(seed), int(min_size), int(max_size), int(max_objects)
        )
        for split, count in zip(SPLITS, (num_train, num_val))
    }
