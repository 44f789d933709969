"""Mask ("segm") scoring of CocoEvaluator: box-frame masks pasted at each image's size, as RLEs."""

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from spinenet_tf.errors import DataError
from spinenet_tf.evaluation import COCO_METRIC_NAMES, MASK_METRIC_NAMES, CocoEvaluator
from spinenet_tf.masks import paste_masks
from tests.data.coco_fixture import annotation

CELLS = 28
_rows, _cols = np.mgrid[:CELLS, :CELLS]
# 28 x 28 pixel shapes (one pixel per mask cell, so a 28-cell mask holds them exactly) touching
# all four sides, so their boxes are 28 x 28 too.
L_SHAPE = ((_cols < 10) | (_rows >= 18)).astype(np.uint8)
DISK = ((_rows - 13.5) ** 2 + (_cols - 13.5) ** 2 < 14**2).astype(np.uint8)
# (image id, height, width, [(category, (x, y), shape pixels, how the segmentation is stored), ...]):
# rectangles as polygons at any size, the shapes as compressed (text) and uncompressed RLE; small,
# medium and large objects.
IMAGES = [
    (
        1,
        100,
        120,
        [(1, (10, 10), np.ones((20, 20))), (2, (30, 40), np.ones((50, 60))), (1, (88, 5), L_SHAPE)],
    ),
    (2, 80, 60, [(3, (0, 0), np.ones((80, 60))), (1, (20, 30), DISK)]),
    (3, 200, 150, [(2, (20, 30), np.ones((150, 120))), (3, (5, 0), DISK)]),
]
ENCODINGS = {id(L_SHAPE): "rle", id(DISK): "uncompressed rle"}


def image_mask(height, width, position, shape):
    (x, y), (h, w) = position, shape.shape
    mask = np.zeros((height, width), np.uint8)
    mask[y : y + h, x : x + w] = shape
    return mask


def segmentation(mask, shape, position):
    """The object's COCO segmentation: a polygon for a rectangle, else (uncompressed) RLE."""
    encoding = ENCODINGS.get(id(shape), "polygon")
    if encoding == "polygon":
        (x, y), (h, w) = position, shape.shape
        return [[x, y, x + w, y, x + w, y + h, x, y + h]]
    if encoding == "rle":
        rle = mask_utils.encode(np.asfortranarray(mask))
        return {"counts": rle["counts"].decode("ascii"), "size": list(mask.shape)}
    flat = mask.flatten(order="F")  # runs in column-major order, starting with a run of zeros
    edges = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return {"counts": [0, *counts] if flat[0] else counts, "size": list(mask.shape)}


def ground_truth():
    data = {"images": [], "annotations": [], "categories": [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]}
    for image_id, height, width, objects in IMAGES:
        data["images"].append({"id": image_id, "height": height, "width": width})
        for category, position, shape in objects:
            mask = image_mask(height, width, position, shape)
            entry = annotation(
                len(data["annotations"]) + 1, image_id, category, [*position, *shape.shape[::-1]]
            )
            entry.update(area=int(mask.sum()), segmentation=segmentation(mask, shape, position))
            data["annotations"].append(entry)
    return data


def box_frame(mask, box):
    """The image mask sampled at the box's cell centres, 0 off the image: a perfect mask head's answer."""
    ymin, xmin, ymax, xmax = box
    centres = (np.arange(CELLS) + 0.5) / CELLS
    rows = np.floor(ymin + centres * (ymax - ymin)).astype(int)
    cols = np.floor(xmin + centres * (xmax - xmin)).astype(int)
    padded = np.pad(mask, 1)  # indices -1 and size land on the zero border
    rows, cols = np.clip(rows, -1, mask.shape[0]) + 1, np.clip(cols, -1, mask.shape[1]) + 1
    return padded[np.ix_(rows, cols)].astype(np.float32)


def perfect_detections(change_mask=lambda image_id, mask: mask):
    """{image id: [(label, box yxyx, 0.9, box-frame mask), ...]}: each object, masks via `change_mask`."""
    found = {}
    for image_id, height, width, objects in IMAGES:
        found[image_id] = []
        for category, (x, y), shape in objects:
            box = [y, x, y + shape.shape[0], x + shape.shape[1]]
            mask = box_frame(image_mask(height, width, (x, y), shape), box)
            found[image_id].append((category, box, 0.9, change_mask(image_id, mask)))
    return found


def model_outputs(per_image, k=6):
    """[[(label, box, score, mask), ...] per image] -> predict() dict; padding rows have full masks."""
    batch = len(per_image)
    outputs = {
        "boxes": np.tile(np.float32([0, 0, 40, 40]), (batch, k, 1)),
        "scores": np.full((batch, k), 0.99, np.float32),
        "classes": np.ones((batch, k), np.int32),
        "masks": np.ones((batch, k, CELLS, CELLS), np.float32),
        "num_detections": np.array([len(d) for d in per_image], np.int32),
    }
    for i, detections in enumerate(per_image):
        for j, (label, box, score, mask) in enumerate(detections):
            outputs["boxes"][i, j], outputs["scores"][i, j], outputs["classes"][i, j] = box, score, label
            outputs["masks"][i, j] = mask
    return outputs


def evaluated(evaluator, found):
    evaluator.update([1, 2], model_outputs([found[1], found[2]]))
    evaluator.update([3], model_outputs([found[3]]))
    return evaluator


@pytest.mark.parametrize("source", ["dict", "path"])
def test_ground_truth_masks_score_perfectly_and_leave_the_box_metrics_as_they_were(source, tmp_path):
    data = ground_truth()
    if source == "path":
        (tmp_path / "instances.json").write_text(json.dumps(data))
        data = tmp_path / "instances.json"
    found = perfect_detections()
    # Rows dropped in the middle of an image must take their masks with them: background, and a
    # box right of the 120-pixel-wide image (zero width once clipped), both full masks at score 1.
    full = np.ones((CELLS, CELLS))
    found[1][1:1] = [(0, [10, 10, 30, 30], 1.0, full), (2, [0, 125, 30, 140], 1.0, full)]
    # Image 2's full-image object (80 x 60) in a box reaching 20 rows above the image: its mask is
    # pasted in that box (the top row is lost to the blur from the zero cells above: IoU 79/80),
    # and the box is clipped to the image for box scoring.
    overhang = [-20, 0, 80, 60]
    found[2][0] = (3, overhang, 0.9, box_frame(np.ones((80, 60)), overhang))
    evaluator = evaluated(CocoEvaluator(data, iou_types=("bbox", "segm")), found)

    metrics = evaluator.result()
    assert list(metrics) == [*COCO_METRIC_NAMES, *MASK_METRIC_NAMES]
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "ARs", "ARm", "ARl"):
        assert metrics[f"mask_{name}"] == pytest.approx(1.0), name
    assert evaluator.num_detections == 7
    assert evaluator.per_class_ap("segm") == pytest.approx({"c1": 1.0, "c2": 1.0, "c3": 1.0})

    boxes_only = evaluated(CocoEvaluator(data), found)
    assert boxes_only.result() == {name: metrics[name] for name in COCO_METRIC_NAMES}
    assert boxes_only.per_class_ap() == evaluator.per_class_ap()
    summary = evaluator.summary()
    assert summary.startswith("bbox:\n") and "\nsegm:\n" in summary
    assert summary.count("Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all") == 2


def shifted_or_eroded(image_id, mask):
    """Image 1's masks 3 cells to the right, image 2's without a 2-cell border, image 3's as they are."""
    changed = np.zeros_like(mask)
    if image_id == 1:
        changed[:, 3:] = mask[:, :-3]
    elif image_id == 2:
        changed[2:-2, 2:-2] = mask[2:-2, 2:-2]
    else:
        changed = mask
    return changed


def test_shifted_and_eroded_masks_score_lower_as_pycocotools_scores_their_pasted_rles():
    data = ground_truth()
    found = perfect_detections(shifted_or_eroded)
    # A false positive of class 1 with a medium box (60 x 60) but a small mask (about 13 x 13): it
    # costs small-object mask AP, as it is sized by its mask, where a box's size would hide it.
    blob = np.zeros((CELLS, CELLS), np.float32)
    blob[:6, :6] = 1
    found[3].append((1, [0, 60, 60, 120], 1.0, blob))
    evaluator = evaluated(CocoEvaluator(data, iou_types=("bbox", "segm")), found)
    metrics = evaluator.result()
    assert (
        metrics["AP"] > 0.9 > metrics["mask_AP"] > 0.2
    )  # the boxes (but for the false positive) are perfect

    sizes = {image_id: (height, width) for image_id, height, width, _ in IMAGES}
    results = []
    for image_id, detections in found.items():
        for label, box, score, mask in detections:
            pasted = paste_masks(mask[None], [box], *sizes[image_id])[0]
            rle = mask_utils.encode(np.asfortranarray(pasted))
            results.append({"image_id": image_id, "category_id": label, "segmentation": rle, "score": score})
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(data)
        coco.createIndex()
        direct = COCOeval(coco, coco.loadRes(results), "segm")
        direct.evaluate()
        direct.accumulate()
        direct.summarize()
    assert {name: metrics[name] for name in MASK_METRIC_NAMES} == dict(zip(MASK_METRIC_NAMES, direct.stats))
    per_class = evaluator.per_class_ap("segm")  # every class has a shifted or an eroded object
    assert all(0.0 < ap < 1.0 for ap in per_class.values())
    assert np.mean(list(per_class.values())) == pytest.approx(metrics["mask_AP"])
    assert evaluator.per_class_ap()["c3"] == pytest.approx(1.0)  # boxes by default


def test_masks_only():
    evaluator = evaluated(CocoEvaluator(ground_truth(), iou_types="segm"), perfect_detections())
    assert list(evaluator.result()) == list(MASK_METRIC_NAMES)
    assert evaluator.per_class_ap() == pytest.approx({"c1": 1.0, "c2": 1.0, "c3": 1.0})
    assert CocoEvaluator(ground_truth(), iou_types=["segm", "bbox"]).iou_types == ("bbox", "segm")


def test_nothing_predicted_scores_masks_as_it_scores_boxes():
    evaluator = CocoEvaluator(ground_truth(), iou_types=("bbox", "segm"))
    evaluator.update([2], model_outputs([[]]))
    evaluator.update(
        [1],
        {
            "boxes": np.zeros((1, 0, 4)),
            "scores": np.zeros((1, 0)),
            "classes": np.zeros((1, 0)),
            "masks": np.zeros((1, 0, CELLS, CELLS)),
        },
    )
    metrics = evaluator.result()
    assert evaluator.num_detections == 0
    assert {name: metrics[f"mask_{name}"] for name in COCO_METRIC_NAMES} == {
        name: metrics[name] for name in COCO_METRIC_NAMES
    }
    assert metrics["mask_APl"] == -1.0  # images 1 and 2 have no large object
    assert metrics["mask_AP"] == 0.0 and metrics["mask_ARs"] == 0.0


def test_mask_scoring_needs_masks_and_ground_truth_segmentations(tmp_path):
    evaluator = CocoEvaluator(ground_truth(), iou_types=("bbox", "segm"))
    good = model_outputs([perfect_detections()[1]])
    with pytest.raises(ValueError, match=r"detections has no 'masks', which iou_types 'segm' scores"):
        evaluator.update([1], {key: value for key, value in good.items() if key != "masks"})
    with pytest.raises(
        ValueError, match=r"detections\['masks'\] has shape \(1, 5, 28, 28\); expected \(1, 6, M, M\)"
    ):
        evaluator.update([1], {**good, "masks": good["masks"][:, :5]})
    assert evaluator.num_images == 0
    with pytest.raises(ValueError, match="per_class_ap: iou_type 'segm' is not scored here"):
        CocoEvaluator(ground_truth()).per_class_ap("segm")

    no_segmentation = ground_truth()
    del no_segmentation["annotations"][1]["segmentation"]
    CocoEvaluator(no_segmentation)  # boxes need none
    with pytest.raises(
        DataError, match=r"ground-truth dict: annotations\[1\] \(id 2\) has no \['segmentation'\]"
    ):
        CocoEvaluator(no_segmentation, iou_types=("bbox", "segm"))
    (tmp_path / "no_segmentation.json").write_text(json.dumps(no_segmentation))
    with pytest.raises(DataError, match=r"no_segmentation.json: annotations\[1\] \(id 2\) has no"):
        CocoEvaluator(tmp_path / "no_segmentation.json", iou_types="segm")
    empty = ground_truth()
    empty["annotations"][3]["segmentation"] = []
    with pytest.raises(
        DataError, match=r"annotations\[3\] \(id 4\) has no polygons or RLE in 'segmentation'"
    ):
        CocoEvaluator(empty, iou_types="segm")
