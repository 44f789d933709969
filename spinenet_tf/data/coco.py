"""COCO instances JSON: the project's one reader of it, and validated image records.

`load_annotations` is the only code that opens and checks an annotations file: training
(`read_coco`), evaluation and the exporter's label names all use it, so a broken file
fails the same way everywhere, with a DataError naming the file, the list and the entry.
Damage to single images or boxes is counted in a `DataReport` and skipped or fixed, so
one bad entry in 100k never stops a run.
"""

import dataclasses
import json
import numbers
import os

import numpy as np
from pycocotools import mask as mask_utils

from spinenet_tf.data.images import probe_image
from spinenet_tf.data.report import DataReport
from spinenet_tf.errors import DataError

LISTS = ("images", "annotations", "categories")
# COCO 2017's 80 category names by id (1..90, ten ids unused), the labels of the published
# detectors, which predict the ids as class indices.
COCO_CATEGORY_NAMES = {
    1: "person",
    2: "bicycle",
    3: "car",
    4: "motorcycle",
    5: "airplane",
    6: "bus",
    7: "train",
    8: "truck",
    9: "boat",
    10: "traffic light",
    11: "fire hydrant",
    13: "stop sign",
    14: "parking meter",
    15: "bench",
    16: "bird",
    17: "cat",
    18: "dog",
    19: "horse",
    20: "sheep",
    21: "cow",
    22: "elephant",
    23: "bear",
    24: "zebra",
    25: "giraffe",
    27: "backpack",
    28: "umbrella",
    31: "handbag",
    32: "tie",
    33: "suitcase",
    34: "frisbee",
    35: "skis",
    36: "snowboard",
    37: "sports ball",
    38: "kite",
    39: "baseball bat",
    40: "baseball glove",
    41: "skateboard",
    42: "surfboard",
    43: "tennis racket",
    44: "bottle",
    46: "wine glass",
    47: "cup",
    48: "fork",
    49: "knife",
    50: "spoon",
    51: "bowl",
    52: "banana",
    53: "apple",
    54: "sandwich",
    55: "orange",
    56: "broccoli",
    57: "carrot",
    58: "hot dog",
    59: "pizza",
    60: "donut",
    61: "cake",
    62: "chair",
    63: "couch",
    64: "potted plant",
    65: "bed",
    67: "dining table",
    70: "toilet",
    72: "tv",
    73: "laptop",
    74: "mouse",
    75: "remote",
    76: "keyboard",
    77: "cell phone",
    78: "microwave",
    79: "oven",
    80: "toaster",
    81: "sink",
    82: "refrigerator",
    84: "book",
    85: "clock",
    86: "vase",
    87: "scissors",
    88: "teddy bear",
    89: "hair drier",
    90: "toothbrush",
}


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
    segmentations: list  # [K] COCO segmentations (polygons or RLE) of this size; None where unusable

    def masks(self):
        """[K, height, width] uint8 instance masks.

        An object without a usable segmentation, or whose segmentation covers no pixel,
        gets its box filled (the pixels whose centres lie in it), so copy-paste and mask
        training go on; `read_coco(check_masks=True)` counts these objects.
        """
        masks = np.zeros((len(self.classes), self.height, self.width), np.uint8)
        ys, xs = np.arange(self.height) + 0.5, np.arange(self.width) + 0.5
        for k, segmentation in enumerate(self.segmentations):
            if segmentation is not None:
                masks[k] = mask_utils.decode(_rle(segmentation, self.height, self.width))
            if not masks[k].any():
                ymin, xmin, ymax, xmax = self.boxes[k]
                masks[k] = ((ys >= ymin) & (ys < ymax))[:, None] & ((xs >= xmin) & (xs < xmax))[None, :]
        return masks


@dataclasses.dataclass
class CocoDataset:
    records: list
    categories: list
    report: DataReport

    @property
    def category_ids(self):
        return sorted(category["id"] for category in self.categories)


def _rle(segmentation, height, width):
    """A usable segmentation (see `_usable_segmentation`) -> pycocotools' compressed RLE."""
    if isinstance(segmentation, list):  # polygons
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):  # uncompressed RLE
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


def _is_polygon(points):
    return (
        isinstance(points, list)
        and len(points) >= 6
        and len(points) % 2 == 0
        and all(isinstance(v, numbers.Real) for v in points)
    )


def _usable_segmentation(segmentation, height, width):
    """(segmentation pycocotools can rasterise at height x width, or None; the problem kind, or None).

    Polygons need 3 or more (x, y) points (shorter ones are left out: pycocotools would
    read 4 numbers as a box); an RLE needs counts and the image's size.
    """
    if isinstance(segmentation, list):
        polygons = [points for points in segmentation if _is_polygon(points)]
        return (polygons, None) if polygons else (None, "missing_mask")
    if not isinstance(segmentation, dict) or not isinstance(segmentation.get("counts"), (str, bytes, list)):
        return None, "missing_mask"
    if segmentation.get("size") != [height, width]:
        return None, "mismatched_mask"
    return segmentation, None


def check_annotations(data, source, required_fields=None):
    """Raises a DataError naming `source`, the list and the entry unless `data` is a COCO instances object.

    Every file needs the three LISTS and integer `id`s on its images and categories;
    `required_fields` ({list name: field names}) adds what a consumer relies on: the
    image files of `read_coco`, the image sizes and annotation areas of the evaluator.
    """
    if not isinstance(data, dict):
        raise DataError(f"{source}: expected a JSON object with lists {LISTS}, got {type(data).__name__}.")
    for key in LISTS:
        if not isinstance(data.get(key), list):
            raise DataError(
                f"{source}: key {key!r} is missing or not a list (a COCO instances file has {LISTS})."
            )
    for key in ("images", "categories"):
        for n, entry in enumerate(data[key]):
            identifier = entry.get("id") if isinstance(entry, dict) else None
            if not isinstance(identifier, numbers.Integral):
                raise DataError(f"{source}: {key}[{n}] has no integer 'id' (got {identifier!r}).")
    for key, fields in (required_fields or {}).items():
        for n, entry in enumerate(data[key]):
            if not isinstance(entry, dict):
                raise DataError(f"{source}: {key}[{n}] is not an object: {entry!r:.60}.")
            missing = [field for field in fields if field not in entry]
            if missing:
                raise DataError(f"{source}: {key}[{n}] (id {entry.get('id')}) has no {missing}.")


def load_annotations(annotations_file, required_fields=None):
    """The parsed and checked JSON of a COCO instances file (see `check_annotations`).

    The project's only reader of these files. A missing file is a FileNotFoundError; any
    other problem a one-line DataError that names the file.
    """
    path = os.fspath(annotations_file)
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"COCO annotations file not found: {path}") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a COCO annotations JSON file.") from None
    except json.JSONDecodeError as error:
        raise DataError(
            f"{path}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})."
        ) from None
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not valid JSON (not UTF-8 text at byte {error.start}).") from None
    check_annotations(data, path, required_fields)
    return data


def category_names(annotations):
    """{category id: name} of a COCO instances file (or its parsed JSON); the id as text where a
    category has no name."""
    data = annotations if isinstance(annotations, dict) else load_annotations(annotations)
    return {int(category["id"]): str(category.get("name", category["id"])) for category in data["categories"]}


def _image_size(path, image, report):
    """(height, width) from the file's header, or None when it is not a readable, complete image."""
    probed = probe_image(path, image["file_name"], report)
    if probed is None:
        return None
    height, width, _ = probed
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


def _checked_segmentation(annotation, height, width, report, check_masks):
    """The annotation's usable segmentation or None; with `check_masks`, a non-crowd object
    whose mask will be box-filled (see `ImageRecord.masks`) is counted in `report`."""
    segmentation, problem = _usable_segmentation(annotation.get("segmentation"), height, width)
    if not check_masks or annotation.get("iscrowd"):  # crowd objects are never trained on
        return segmentation
    if problem == "missing_mask":
        report.warn(
            problem, f"annotation {annotation.get('id')}: segmentation {annotation.get('segmentation')!r:.60}"
        )
    elif problem == "mismatched_mask":
        report.warn(
            problem,
            f"annotation {annotation.get('id')}: RLE size {annotation['segmentation'].get('size')} "
            f"in a {height}x{width} image",
        )
    elif mask_utils.area(_rle(segmentation, height, width)) == 0:
        report.warn("empty_mask", f"annotation {annotation.get('id')}: segmentation covers no pixel")
    return segmentation


def read_coco(images_dir, annotations_file, verify_images=True, check_masks=False):
    """Validated records of a COCO instances file whose `file_name`s live under `images_dir`.

    `verify_images` reads each file's header and last bytes (fast: no decoding) to catch
    missing, corrupt, truncated or mis-sized images up front; image data damaged in the
    middle fails to decode later and the pipeline skips it with a logged warning.
    `check_masks` (for readers that use the instance masks) counts the objects whose mask
    will be box-filled: no usable segmentation, an RLE of another size, or one covering
    no pixel (found by rasterising each polygon, ~20 us each: ~20 s for COCO train2017).
    """
    data = load_annotations(annotations_file, required_fields={"images": ("file_name",)})
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
            objects.append(
                (
                    box,
                    annotation["category_id"],
                    bool(annotation.get("iscrowd", 0)),
                    _checked_segmentation(annotation, height, width, report, check_masks),
                )
            )

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
            )
        )
    return CocoDataset(records, data["categories"], report)
