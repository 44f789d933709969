"""COCO box and mask AP / AR of detector outputs, scored by pycocotools on original-image pixels.

`CocoEvaluator` takes `predict` batches (boxes in each original image's pixels, and a
Mask R-CNN's box-frame masks), clips the boxes to their image, pastes the masks at the
image's size and hands the lot to pycocotools' COCOeval, so the numbers are the ones
published COCO results are compared against.
"""

import collections
import contextlib
import copy
import io
import os
from collections.abc import Mapping

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from spinenet_tf.data.coco import check_annotations, load_annotations
from spinenet_tf.errors import DataError
from spinenet_tf.masks import paste_and_encode

COCO_METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
MASK_METRIC_NAMES = tuple(f"mask_{name}" for name in COCO_METRIC_NAMES)
# pycocotools' IoU types, in the order their metrics are reported, and their metric names.
METRIC_NAMES = {"bbox": COCO_METRIC_NAMES, "segm": MASK_METRIC_NAMES}
# What scoring reads beyond the lists and ids: image sizes (boxes are clipped to them) and
# the annotation fields of COCOeval's matching and area ranges.
COCOEVAL_FIELDS = {
    "images": ("height", "width"),
    "annotations": ("id", "image_id", "category_id", "bbox", "area"),
}
# Mask scoring also rasterises each ground-truth object's polygons or RLE.
SEGM_FIELDS = {**COCOEVAL_FIELDS, "annotations": (*COCOEVAL_FIELDS["annotations"], "segmentation")}


class CocoEvaluator:
    """Accumulates detections over an eval pass; `result()` gives the 12 COCO metrics per IoU type.

    IoU types: "bbox" scores boxes (metrics COCO_METRIC_NAMES); "segm" scores masks
    (MASK_METRIC_NAMES: "mask_AP", ...), which needs `masks` in the detections and a
    `segmentation` on every ground-truth object. A mask is pasted at its image's size as
    `update` receives it and kept as an RLE, never as a full-image array; its detection's
    area range is the mask's own area (no "bbox" in the mask results, as Detectron2 does),
    so masks and boxes each use their own sizes.

    Scope: scoring covers only the images passed to `update` (COCOeval `params.imgIds`),
    so a partial pass is scored on what it saw, and a seen image without detections counts
    its objects as missed. Images never passed to `update` do not count at all.

    Empty results: the metrics are pycocotools' own, including -1 for an area range with no
    ground truth among the seen images. When nothing at all was predicted (pycocotools'
    `loadRes` rejects an empty list) an empty result set is built directly and COCOeval
    still runs, so every metric is 0.0 except those -1 entries.

    Labels: class 0 is background and never reported. Without `label_to_category` a label
    is its COCO category id and labels that are not ground-truth categories are dropped:
    COCOeval ignores them anyway, and the unused ids of a 91-class COCO head must not stop
    an eval. With `label_to_category`, a label missing from it is a ValueError.

    Args:
        ground_truth: path to a COCO instances JSON, a dict in that format (copied), or a
            pycocotools `COCO` (used as is), checked by `spinenet_tf.data.coco` with
            COCOEVAL_FIELDS (SEGM_FIELDS, and a polygon or RLE per object, for "segm"): a
            broken one is a DataError naming the list and the entry.
        label_to_category: optional mapping model class index -> COCO category id.
        iou_types: "bbox", "segm" or both (a sequence); ("bbox", "segm") for a Mask R-CNN.
    """

    def __init__(self, ground_truth, label_to_category=None, iou_types=("bbox",)):
        self.ground_truth = ground_truth
        self.label_to_category = label_to_category
        self.iou_types = _check_iou_types(iou_types)
        self._coco = _load_ground_truth(ground_truth, "segm" in self.iou_types)
        self._image_sizes = {
            image["id"]: (int(image["height"]), int(image["width"])) for image in self._coco.dataset["images"]
        }
        self._label_table = _label_table(label_to_category, set(self._coco.getCatIds()))
        self._class_names = _class_names(self._coco.dataset["categories"])
        self.reset()

    def reset(self):
        """Forget every image and detection seen so far."""
        self._seen = set()
        self._image_ids, self._categories, self._boxes, self._scores = [], [], [], []
        self._masks = []  # one RLE per kept detection, when scoring "segm"
        self._evaluation = None

    @property
    def num_images(self):
        """Images passed to `update` since the last reset."""
        return len(self._seen)

    @property
    def num_detections(self):
        """Detections kept (after dropping padding, empty boxes and background) since the last reset."""
        return sum(len(scores) for scores in self._scores)

    def update(self, image_ids, detections):
        """Adds one predicted batch.

        Args:
            image_ids: [B] COCO image ids, each seen at most once per pass.
            detections: `predict` output: `boxes` [B, K, 4] ([ymin, xmin, ymax, xmax] in
                each original image's pixels; clipped to the image here), `scores` [B, K],
                `classes` [B, K], optionally `num_detections` [B] (rows past it are padding;
                all K rows count when absent) and, required for "segm", `masks` [B, K, M, M]
                (probabilities in each box's frame, see `spinenet_tf.masks.paste_masks`).
        """
        image_ids = np.asarray(image_ids)
        if image_ids.ndim != 1:
            raise ValueError(f"image_ids has shape {image_ids.shape}; expected [B]")
        image_ids = image_ids.astype(np.int64)
        batch = len(image_ids)
        boxes, scores, classes, num_detections = _check_detections(detections, batch)
        masks = _check_masks(detections, boxes.shape) if "segm" in self.iou_types else None
        self._check_new_images(image_ids)

        sizes = np.array([self._image_sizes[image_id] for image_id in image_ids.tolist()], np.float64)
        limits = np.tile(sizes.reshape(batch, 2), 2)[:, None, :]  # [B, 1, 4] (h, w, h, w)
        clipped = np.clip(boxes, 0.0, limits)
        heights = clipped[..., 2] - clipped[..., 0]
        widths = clipped[..., 3] - clipped[..., 1]
        rows = np.arange(boxes.shape[1])[None, :] < num_detections[:, None]
        keep = rows & (heights > 0) & (widths > 0) & (classes != 0)
        categories = np.full(keep.shape, -1, np.int64)
        categories[keep] = self._categories_of(classes[keep])
        keep &= categories >= 0
        xywh = np.stack([clipped[..., 1], clipped[..., 0], widths, heights], axis=-1)
        if masks is not None:  # before any state changes: a failure here leaves the pass as it was
            encoded = self._encoded_masks(image_ids, masks, boxes, keep)

        self._seen.update(image_ids.tolist())
        self._image_ids.append(np.broadcast_to(image_ids[:, None], keep.shape)[keep])
        self._categories.append(categories[keep])
        self._boxes.append(xywh[keep])
        self._scores.append(scores[keep])
        if masks is not None:
            self._masks += encoded
        self._evaluation = None

    def result(self):
        """{name: float} for each IoU type's metric names, scored on the images seen since the last reset."""
        return {
            name: value for metrics, _, _ in self._evaluated().values() for name, value in metrics.items()
        }

    def summary(self):
        """pycocotools' printed metric table for the current results, one per IoU type under its name."""
        return "\n".join(f"{iou_type}:\n{table}" for iou_type, (_, table, _) in self._evaluated().items())

    def per_class_ap(self, iou_type=None):
        """{category name: AP} at IoU .50:.95, all areas, 100 detections per image, in id order.

        Of the first of `iou_types` ("bbox" when scored) unless `iou_type` names another.

        A category is named by its "name" (its id as text where it has none; " (id N)"
        added where two share a name). A category with no ground truth among the seen
        images gets -1.0, pycocotools' own "nothing to score" (as `result()` has for an
        empty area range; JSON has no NaN): its false positives count nowhere, so no AP
        could be computed. Over the categories with ground truth the mean is `result()["AP"]`
        (`result()["mask_AP"]` for "segm").
        """
        iou_type = self.iou_types[0] if iou_type is None else iou_type
        if iou_type not in self.iou_types:
            raise ValueError(
                f"per_class_ap: iou_type {iou_type!r} is not scored here (iou_types {self.iou_types})"
            )
        _, _, per_class = self._evaluated()[iou_type]
        return dict(per_class)

    def _evaluated(self):
        """{IoU type: (metrics, summary table, per-class AP)} of the images seen, computed once per change."""
        if not self._seen:
            raise ValueError("CocoEvaluator: nothing to score before any update()")
        if self._evaluation is None:
            self._evaluation = self._evaluate()
        return self._evaluation

    def _check_new_images(self, image_ids):
        for image_id in image_ids.tolist():
            if image_id not in self._image_sizes:
                raise ValueError(f"image id {image_id} is not in the ground truth")
        seen = set(self._seen)
        for image_id in image_ids.tolist():
            if image_id in seen:
                raise ValueError(
                    f"image id {image_id} was already passed to update(); call reset() between eval passes"
                )
            seen.add(image_id)

    def _categories_of(self, labels):
        """Category id per label; -1 for labels to drop (identity mapping, not a GT category)."""
        table = self._label_table
        in_table = (labels >= 0) & (labels < len(table))
        categories = np.full(labels.shape, -1, np.int64)
        categories[in_table] = table[labels[in_table]]
        if self.label_to_category is not None and np.any(categories < 0):
            label = int(labels[categories < 0][0])
            raise ValueError(
                f"class label {label} is not in label_to_category (labels {sorted(self.label_to_category)})"
            )
        return categories

    def _encoded_masks(self, image_ids, masks, boxes, keep):
        """RLEs of the kept detections' masks, pasted at their images' sizes, in row-major (B, K) order."""
        encoded = []
        for image_id, image_masks, image_boxes, kept in zip(image_ids.tolist(), masks, boxes, keep):
            encoded += paste_and_encode(image_masks[kept], image_boxes[kept], *self._image_sizes[image_id])
        return encoded

    def _evaluate(self):
        detections = [
            {"image_id": image_id, "category_id": category, "score": score}
            for image_id, category, score in zip(
                np.concatenate(self._image_ids).tolist(),
                np.concatenate(self._categories).tolist(),
                np.concatenate(self._scores).tolist(),
            )
        ]
        # Each result carries only its own IoU type's shape: pycocotools takes a result's area
        # from its "bbox" whenever there is one, which would size masks by their boxes.
        shapes = {
            "bbox": ("bbox", np.concatenate(self._boxes).tolist()),
            "segm": ("segmentation", self._masks),
        }
        evaluated = {}
        for iou_type in self.iou_types:
            key, values = shapes[iou_type]
            results = [{**detection, key: value} for detection, value in zip(detections, values)]
            evaluated[iou_type] = self._score(results, iou_type)
        return evaluated

    def _score(self, detections, iou_type):
        """(metrics, summary table, per-class AP) of COCOeval on one IoU type's results."""
        with contextlib.redirect_stdout(io.StringIO()):
            results = self._coco.loadRes(detections) if detections else _empty_results(self._coco)
            evaluation = COCOeval(self._coco, results, iou_type)
            evaluation.params.imgIds = sorted(self._seen)
            evaluation.evaluate()
            evaluation.accumulate()
        table = io.StringIO()
        with contextlib.redirect_stdout(table):
            evaluation.summarize()
        metrics = {name: float(value) for name, value in zip(METRIC_NAMES[iou_type], evaluation.stats)}
        return metrics, table.getvalue(), self._per_class_ap(evaluation)

    def _per_class_ap(self, evaluation):
        """Per-category means of COCOeval's accumulated precision, as `summarize` computes AP."""
        params = evaluation.params
        # [IoU thresholds, recall points, categories, area ranges, max detections]; -1: no ground truth.
        precision = evaluation.eval["precision"][
            :, :, :, params.areaRngLbl.index("all"), params.maxDets.index(100)
        ]
        per_class = {}
        for k, category in enumerate(params.catIds):
            values = precision[:, :, k]
            values = values[values > -1]
            per_class[self._class_names[category]] = float(values.mean()) if values.size else -1.0
        return per_class


def _check_iou_types(iou_types):
    """The IoU types as a tuple in METRIC_NAMES order; a single name is taken as one type."""
    given = (iou_types,) if isinstance(iou_types, str) else tuple(iou_types)
    unknown = [iou_type for iou_type in given if iou_type not in METRIC_NAMES]
    if unknown or not given:
        raise ValueError(f"iou_types {iou_types!r}: expected one or both of {tuple(METRIC_NAMES)}")
    return tuple(iou_type for iou_type in METRIC_NAMES if iou_type in given)


def _load_ground_truth(ground_truth, masks):
    """A pycocotools COCO from a path, a dict (deep-copied: COCOeval writes into it) or a COCO.

    With `masks` every annotation must carry a segmentation (polygons or RLE) to score against.
    """
    fields = SEGM_FIELDS if masks else COCOEVAL_FIELDS
    if isinstance(ground_truth, COCO):
        source, dataset = "ground-truth COCO object", ground_truth.dataset
        check_annotations(dataset, source, fields)
    elif isinstance(ground_truth, Mapping):
        source, dataset = "ground-truth dict", copy.deepcopy(dict(ground_truth))
        check_annotations(dataset, source, fields)
    elif isinstance(ground_truth, (str, os.PathLike)):
        source, dataset = os.fspath(ground_truth), load_annotations(ground_truth, fields)
    else:
        raise TypeError(
            f"ground_truth must be a path, a COCO-format dict or a pycocotools COCO, not {type(ground_truth)}"
        )
    if masks:
        _check_segmentations(dataset["annotations"], source)
    if isinstance(ground_truth, COCO):
        return ground_truth
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _check_segmentations(annotations, source):
    """A DataError naming the first annotation whose segmentation is neither polygons nor an RLE."""
    for n, annotation in enumerate(annotations):
        segmentation = annotation["segmentation"]
        if isinstance(segmentation, list) and segmentation:
            continue
        if isinstance(segmentation, dict) and {"counts", "size"} <= segmentation.keys():
            continue
        raise DataError(
            f"{source}: annotations[{n}] (id {annotation.get('id')}) has no polygons or RLE in "
            f"'segmentation' (got {segmentation!r:.60}); mask scoring needs one per object."
        )


def _class_names(categories):
    """{category id: its key in `per_class_ap`}: the name, else the id; the id added to a shared name."""
    names = {category["id"]: str(category.get("name", category["id"])) for category in categories}
    counts = collections.Counter(names.values())
    return {
        category: name if counts[name] == 1 else f"{name} (id {category})" for category, name in names.items()
    }


def _label_table(label_to_category, category_ids):
    """label -> category id as an array indexed by label; -1 where a label has no category."""
    if label_to_category is None:
        mapping = {category: category for category in category_ids if category > 0}
    else:
        mapping = {int(label): int(category) for label, category in dict(label_to_category).items()}
        if any(label <= 0 for label in mapping):
            raise ValueError(
                f"label_to_category keys must be class labels > 0 (0 is background), got {sorted(mapping)}"
            )
        unknown = sorted(set(mapping.values()) - category_ids)
        if unknown:
            raise ValueError(
                f"label_to_category maps to category ids {unknown} that are not ground-truth categories "
                f"{sorted(category_ids)}"
            )
    table = np.full(max(mapping, default=-1) + 1, -1, np.int64)
    for label, category in mapping.items():
        table[label] = category
    return table


def _check_detections(detections, batch):
    """(boxes [B, K, 4] float64, scores [B, K] float64, classes [B, K] int64, num_detections [B] int64)."""
    missing = [key for key in ("boxes", "scores", "classes") if key not in detections]
    if missing:
        raise ValueError(f"detections has no {missing}; got keys {sorted(detections)}")
    boxes = np.asarray(detections["boxes"], np.float64)
    if boxes.ndim != 3 or boxes.shape[0] != batch or boxes.shape[2] != 4:
        raise ValueError(
            f"detections['boxes'] has shape {boxes.shape}; expected ({batch}, K, 4) for {batch} image ids"
        )
    expected = boxes.shape[:2]
    scores = np.asarray(detections["scores"], np.float64)
    classes = np.asarray(detections["classes"])
    for key, value in (("scores", scores), ("classes", classes)):
        if value.shape != expected:
            raise ValueError(
                f"detections['{key}'] has shape {value.shape}; expected {expected} to match "
                f"detections['boxes'] {boxes.shape}"
            )
    if "num_detections" not in detections:
        num_detections = np.full(batch, expected[1], np.int64)
    else:
        num_detections = np.asarray(detections["num_detections"])
        if num_detections.shape != (batch,):
            raise ValueError(
                f"detections['num_detections'] has shape {num_detections.shape}; expected ({batch},)"
            )
        num_detections = num_detections.astype(np.int64)
        if np.any((num_detections < 0) | (num_detections > expected[1])):
            raise ValueError(
                f"detections['num_detections'] {num_detections.tolist()} is outside [0, K={expected[1]}]"
            )
    return boxes, scores, classes.astype(np.int64), num_detections


def _check_masks(detections, boxes_shape):
    """detections["masks"] as float32 [B, K, M, M], checked against the boxes [B, K, 4]."""
    if "masks" not in detections:
        raise ValueError(
            f"detections has no 'masks', which iou_types 'segm' scores (a Mask R-CNN's predict gives them); "
            f"got keys {sorted(detections)}"
        )
    masks = np.asarray(detections["masks"], np.float32)
    if masks.ndim != 4 or masks.shape[:2] != boxes_shape[:2]:
        raise ValueError(
            f"detections['masks'] has shape {masks.shape}; expected "
            f"({boxes_shape[0]}, {boxes_shape[1]}, M, M) to match detections['boxes'] {boxes_shape}"
        )
    return masks


def _empty_results(ground_truth):
    """A results COCO with no detections (loadRes cannot build one from an empty list)."""
    results = COCO()
    results.dataset = {
        "images": list(ground_truth.dataset["images"]),
        "categories": copy.deepcopy(ground_truth.dataset["categories"]),
        "annotations": [],
    }
    results.createIndex()
    return results
