"""COCO instances JSON -> validated image records (boxes, classes, crowd flags, masks).

Structural damage (not JSON, missing 'images') is an error naming the file and the
problem. Damage to single images or boxes is counted in a `DataReport` and skipped or
fixed, so one bad entry in 100k never stops a run.
"""

import dataclasses
import json
import os

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from spinenet_tf.data.report import DataReport

REQUIRED_KEYS = ("images", "annotations", "categories")


@dataclasses.dataclass
class ImageRecord:
    """One image and its objects; boxes are [ymin, xmin, ymax, xmax] in pixels."""

    image_id: int
    path: str
    height: int
    width: int
    boxes: np.ndarray  # [K, 4] float32
    classes: np.ndarray  # [K] int32: COCO category ids
    is_crowd: np.ndarray  # [K] bool
    segmentations: list  # [K] raw COCO segmentations (polygons or RLE), None where absent

    def masks(self):
        """[K, height, width] uint8 instance masks; a box-filled mask where there is no segmentation."""
        masks = np.zeros((len(self.classes), self.height, self.width), np.uint8)
        for k, segmentation in enumerate(self.segmentations):
            if segmentation:
                masks[k] = _rasterise(segmentation, self.height, self.width)
            else:
                ymin, xmin, ymax, xmax = np.round(self.boxes[k]).astype(int)
                masks[k, ymin:ymax, xmin:xmax] = 1
        return masks


@dataclasses.dataclass
class CocoDataset:
    records: list
    categories: list
    report: DataReport

    @property
    def category_ids(self):
        return sorted(category["id"] for category in self.categories)


def _rasterise(segmentation, height, width):
    if isinstance(segmentation, list):  # polygons
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle)


def load_annotations(annotations_file):
    """The parsed JSON, or an error that names the file and what is wrong with it."""
    try:
        with open(annotations_file) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"COCO annotations file not found: {annotations_file}") from None
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{annotations_file}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})."
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"{annotations_file}: expected a JSON object with keys {REQUIRED_KEYS}.")
    for key in REQUIRED_KEYS:
        if not isinstance(data.get(key), list):
            raise ValueError(
                f"{annotations_file}: key {key!r} is missing or not a list "
                f"(a COCO instances file has {REQUIRED_KEYS})."
            )
    for n, image in enumerate(data["images"]):
        missing = [key for key in ("id", "file_name") if not isinstance(image, dict) or key not in image]
        if missing:
            raise ValueError(f"{annotations_file}: images[{n}] has no {missing}.")
    for n, category in enumerate(data["categories"]):
        if not isinstance(category, dict) or not isinstance(category.get("id"), int):
            raise ValueError(f"{annotations_file}: categories[{n}] has no integer 'id'.")
    return data


def _image_size(path, image, report):
    """(height, width) from the file itself, or None when it is not a readable image."""
    try:
        with Image.open(path) as opened:
            width, height = opened.size
    except (OSError, SyntaxError, ValueError) as error:
        report.warn("corrupt_image", f"{image['file_name']}: {error}")
        return None
    if (image.get("height"), image.get("width")) != (height, width):
        report.warn(
            "size_mismatch",
            f"{image['file_name']}: JSON says {image.get('height')}x{image.get('width')}, "
            f"file is {height}x{width}",
        )
    return height, width


def _clean_box(annotation, height, width, report):
    """COCO [x, y, w, h] -> [ymin, xmin, ymax, xmax] clipped to the image, or None."""
    bbox = annotation.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
        report.warn("malformed_annotation", f"annotation {annotation.get('id')}: bbox {bbox!r}")
        return None
    x, y, w, h = (float(v) for v in bbox)
    if not (w > 0 and h > 0):
        report.warn("degenerate_box", f"annotation {annotation.get('id')}: bbox {bbox}")
        return None
    box = np.array([y, x, y + h, x + w], np.float32)
    clipped = np.clip(box, 0, [height, width, height, width]).astype(np.float32)
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        report.warn(
            "box_outside_image", f"annotation {annotation.get('id')}: bbox {bbox} in {height}x{width}"
        )
        return None
    if not np.array_equal(box, clipped):
        report.warn("clipped_box", f"annotation {annotation.get('id')}: bbox {bbox} in {height}x{width}")
    return clipped


def read_coco(images_dir, annotations_file, verify_images=True):
    """Validated records of a COCO instances file whose `file_name`s live under `images_dir`.

    `verify_images` opens each file's header (fast: no decoding) to catch missing, corrupt
    or mis-sized images up front; truncated image data is caught later by the pipeline.
    """
    data = load_annotations(annotations_file)
    report = DataReport(os.fspath(annotations_file))
    root = os.path.realpath(images_dir)
    category_ids = {category["id"] for category in data["categories"]}
    listed_ids = {image["id"] for image in data["images"]}

    images = {}
    for image in data["images"]:
        path = os.path.realpath(os.path.join(root, str(image["file_name"])))
        if os.path.commonpath([root, path]) != root:
            report.warn("unsafe_path", f"file_name {image['file_name']!r}")
            continue
        if image["id"] in images:
            report.warn("duplicate_image_id", f"id {image['id']} ({image['file_name']})")
            continue
        if not os.path.isfile(path):
            report.warn("missing_file", path)
            continue
        size = (
            _image_size(path, image, report) if verify_images else (image.get("height"), image.get("width"))
        )
        if size is None:
            continue
        images[image["id"]] = (path, *size, [])

    for annotation in data["annotations"]:
        image_id = annotation.get("image_id") if isinstance(annotation, dict) else None
        if image_id not in images:
            # Annotations of skipped images are expected; only truly orphaned ones are reported.
            if image_id not in listed_ids:
                report.warn("unknown_image", f"annotation {annotation!r:.80}")
            continue
        if annotation.get("category_id") not in category_ids:
            report.warn(
                "unknown_category", f"annotation {annotation.get('id')}: {annotation.get('category_id')}"
            )
            continue
        _, height, width, objects = images[image_id]
        box = _clean_box(annotation, height, width, report)
        if box is not None:
            objects.append((box, annotation["category_id"], bool(annotation.get("iscrowd", 0)),
                            annotation.get("segmentation")))  # fmt: skip

    records = []
    for image_id, (path, height, width, objects) in images.items():
        if not objects:
            report.warn("no_annotations", os.path.basename(path))
        records.append(
            ImageRecord(
                image_id=image_id,
                path=path,
                height=height,
                width=width,
                boxes=np.array([o[0] for o in objects], np.float32).reshape(-1, 4),
                classes=np.array([o[1] for o in objects], np.int32),
                is_crowd=np.array([o[2] for o in objects], bool),
                segmentations=[o[3] for o in objects],
            )  # fmt: skip
        )
    return CocoDataset(records, data["categories"], report)
