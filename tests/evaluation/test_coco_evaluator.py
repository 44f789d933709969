import contextlib
import copy
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from spinenet_tf.errors import DataError
from spinenet_tf.evaluation import COCO_METRIC_NAMES, CocoEvaluator
from tests.data.coco_fixture import annotation

# (image id, height, width, [(category id, [x, y, w, h]), ...]) covering small, medium and large objects.
IMAGES = [
    (1, 100, 120, [(1, [10, 10, 20, 20]), (2, [30, 40, 60, 50]), (1, [50, 5, 40, 30])]),
    (2, 80, 60, [(3, [0, 0, 60, 80]), (1, [5, 5, 10, 12])]),
    (3, 200, 150, [(2, [20, 30, 120, 150]), (3, [100, 10, 40, 40])]),
    (4, 64, 64, [(1, [8, 8, 16, 16])]),
]
PADDING_ROW = ([0.0, 0.0, 40.0, 40.0], 0.99, 1)  # garbage past num_detections: a false positive if kept


def coco_dict(images=IMAGES, categories=(1, 2, 3)):
    data = {"images": [], "annotations": [], "categories": [{"id": c, "name": f"c{c}"} for c in categories]}
    for image_id, height, width, objects in images:
        data["images"].append({"id": image_id, "height": height, "width": width})
        for category, bbox in objects:
            data["annotations"].append(annotation(len(data["annotations"]) + 1, image_id, category, bbox))
    return data


def model_outputs(per_image, k=6):
    """per_image: one [(label, [x, y, w, h], score), ...] per image -> predict() dict (original pixels)."""
    batch = len(per_image)
    boxes = np.tile(np.asarray(PADDING_ROW[0], np.float32), (batch, k, 1))
    scores = np.full((batch, k), PADDING_ROW[1], np.float32)
    classes = np.full((batch, k), PADDING_ROW[2], np.int32)
    for i, detections in enumerate(per_image):
        for j, (label, (x, y, w, h), score) in enumerate(detections):
            boxes[i, j] = [y, x, y + h, x + w]
            scores[i, j], classes[i, j] = score, label
    num_detections = np.array([len(d) for d in per_image], np.int32)
    return {"boxes": boxes, "scores": scores, "classes": classes, "num_detections": num_detections}


def ground_truth_detections(images=IMAGES):
    return [[(category, box, 1.0) for category, box in objects] for _, _, _, objects in images]


def pycocotools_stats(ground_truth, results, image_ids, category_ids=None):
    """The 12 stats from pycocotools used directly (on `category_ids` only, if given), for comparison."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(ground_truth)
        coco.createIndex()
        evaluation = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), "bbox")
        evaluation.params.imgIds = image_ids
        if category_ids is not None:
            evaluation.params.catIds = category_ids
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return dict(zip(COCO_METRIC_NAMES, evaluation.stats.tolist()))


@pytest.mark.parametrize("source", ["dict", "path", "coco"])
def test_ground_truth_fed_back_scores_perfectly(source, tmp_path):
    ground_truth = coco_dict()
    if source == "path":
        (tmp_path / "instances.json").write_text(json.dumps(ground_truth))
        ground_truth = tmp_path / "instances.json"
    elif source == "coco":
        with contextlib.redirect_stdout(io.StringIO()):
            ground_truth = COCO()
            ground_truth.dataset = coco_dict()
            ground_truth.createIndex()
    evaluator = CocoEvaluator(ground_truth)
    detections = ground_truth_detections()

    first = model_outputs(detections[:2])
    first["boxes"][1, 0, 2:] += [7.0, 9.0]  # image 2's full-image box overhangs the image: clipped back
    # Image 1 (120 wide), class 2 at score 1, entirely right of the image: zero width once clipped.
    first["boxes"][0, 3], first["scores"][0, 3], first["classes"][0, 3] = [10, 130, 20, 150], 1.0, 2
    first["num_detections"][0] = 4
    evaluator.update([1, 2], first)
    evaluator.update(np.array([3, 4]), model_outputs(detections[2:]))

    metrics = evaluator.result()
    assert set(metrics) == set(COCO_METRIC_NAMES)
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "ARs", "ARm", "ARl"):
        assert metrics[name] == pytest.approx(1.0), name
    # Image 1 has two class-1 objects, so one detection per image and class finds 7 of 8 objects
    # (per-category recall: class 1 3/4, classes 2 and 3 2/2).
    assert metrics["AR1"] == pytest.approx((0.75 + 1 + 1) / 3)
    assert evaluator.num_images == 4 and evaluator.num_detections == 8
    assert "Average Precision" in evaluator.summary()
    if source == "dict":
        assert coco_dict() == ground_truth, "the caller's ground-truth dict was modified"


def test_perturbed_detections_match_pycocotools_directly():
    ground_truth = coco_dict()
    results = [  # original pixels: shifted, dropped, wrong-class and low-score false-positive boxes
        (1, 1, [13, 10, 20, 20], 0.9),
        (1, 2, [30, 40, 60, 50], 0.8),
        (1, 1, [70, 60, 20, 20], 0.3),
        (2, 3, [0, 0, 60, 80], 0.95),
        (2, 2, [5, 5, 10, 12], 0.7),
        (3, 2, [25, 35, 120, 140], 0.6),
        (3, 3, [100, 10, 40, 40], 0.5),
        (3, 3, [0, 0, 30, 30], 0.4),
        (4, 1, [9, 8, 16, 16], 0.85),
        (4, 2, [40, 40, 10, 10], 0.2),
    ]
    per_image = [[(c, box, s) for i, c, box, s in results if i == image_id] for image_id in (1, 2, 3, 4)]
    evaluator = CocoEvaluator(ground_truth)
    evaluator.update([1, 2, 3, 4], model_outputs(per_image))

    as_results = [{"image_id": i, "category_id": c, "bbox": box, "score": s} for i, c, box, s in results]
    expected = pycocotools_stats(ground_truth, as_results, [1, 2, 3, 4])
    assert evaluator.result() == expected
    assert 0.0 < expected["AP"] < 0.9 and expected["AR100"] < 1.0  # the perturbation does cost something

    per_class = evaluator.per_class_ap()
    assert list(per_class) == ["c1", "c2", "c3"]
    for category in (1, 2, 3):  # pycocotools run on one category at a time
        alone = pycocotools_stats(ground_truth, as_results, [1, 2, 3, 4], category_ids=[category])
        assert per_class[f"c{category}"] == pytest.approx(alone["AP"], abs=1e-12)
    assert len(set(per_class.values())) == 3 and np.mean(list(per_class.values())) == pytest.approx(
        expected["AP"]
    )


def test_per_class_ap_of_a_found_a_missed_and_an_absent_class():
    images = [
        (1, 100, 100, [(1, [10, 10, 40, 40]), (2, [60, 60, 30, 30])]),
        (2, 100, 100, [(1, [5, 5, 50, 50])]),
    ]
    ground_truth = coco_dict(images, categories=(1, 2, 3))
    ground_truth["categories"][2].pop("name")
    evaluator = CocoEvaluator(ground_truth)
    # Class 1 found exactly in both images; class 2 missed; class 3: no ground truth, a false positive.
    detections = [[(1, [10, 10, 40, 40], 0.9), (3, [0, 0, 20, 20], 0.8)], [(1, [5, 5, 50, 50], 0.7)]]
    evaluator.update([1, 2], model_outputs(detections))
    assert evaluator.per_class_ap() == pytest.approx({"c1": 1.0, "c2": 0.0, "3": -1.0})
    assert evaluator.result()["AP"] == pytest.approx(0.5)  # the mean over the classes with ground truth


def test_per_class_ap_keys_tell_apart_categories_that_share_a_name():
    ground_truth = coco_dict(ONE_PER_IMAGE, categories=(1, 2))
    for category in ground_truth["categories"]:
        category["name"] = "shape"
    evaluator = CocoEvaluator(ground_truth)
    evaluator.update([1], model_outputs([[(1, [10, 10, 50, 50], 1.0)]]))
    assert evaluator.per_class_ap() == pytest.approx({"shape (id 1)": 1.0, "shape (id 2)": -1.0})


ONE_PER_IMAGE = [(image_id, 100, 100, [(1, [10, 10, 50, 50])]) for image_id in (1, 2, 3, 4)]  # medium only


def test_seen_images_without_predictions_count_as_misses():
    evaluator = CocoEvaluator(coco_dict(ONE_PER_IMAGE, categories=(1,)))
    detections = ground_truth_detections(ONE_PER_IMAGE)
    detections[2:] = [[], []]  # images 3 and 4 are seen but get no detections
    evaluator.update([1, 2, 3, 4], model_outputs(detections))
    metrics = evaluator.result()
    # 2 of 4 objects found at every IoU threshold; precision is 1 up to recall 0.5 and 0 beyond,
    # so 51 of pycocotools' 101 recall points (0.00 .. 0.50) score 1.
    assert metrics["AR100"] == 0.5 and metrics["ARm"] == 0.5
    assert metrics["AP"] == pytest.approx(51 / 101)

    evaluator.reset()
    evaluator.update([1, 2], model_outputs(detections[:2]))
    assert evaluator.num_images == 2
    seen_only = evaluator.result()  # scored on the two images seen, both found
    assert seen_only["AP"] == pytest.approx(1.0) and seen_only["AR100"] == 1.0


def test_nothing_predicted_gives_zeros_and_minus_one_for_empty_area_ranges():
    evaluator = CocoEvaluator(coco_dict(ONE_PER_IMAGE, categories=(1,)))
    evaluator.update([1, 2], model_outputs([[], []]))
    evaluator.update(
        [3], {"boxes": np.zeros((1, 0, 4)), "scores": np.zeros((1, 0)), "classes": np.zeros((1, 0))}
    )
    metrics = evaluator.result()
    assert evaluator.num_detections == 0
    # All ground truth is medium: pycocotools' -1 ("no objects in this range") stays for small and large.
    assert {name: metrics[name] for name in ("APs", "APl", "ARs", "ARl")} == dict.fromkeys(
        ("APs", "APl", "ARs", "ARl"), -1.0
    )
    assert all(metrics[name] == 0.0 for name in COCO_METRIC_NAMES if name not in ("APs", "APl", "ARs", "ARl"))
    assert "Average Recall" in evaluator.summary()


SPARSE_IMAGES = [
    (1, 100, 100, [(1, [10, 10, 30, 30]), (7, [50, 50, 40, 40])]),
    (2, 100, 100, [(90, [0, 0, 60, 60])]),
]


def test_label_to_category_maps_contiguous_labels_to_sparse_ids():
    ground_truth = coco_dict(SPARSE_IMAGES, categories=(1, 7, 90))
    label_of = {1: 1, 7: 2, 90: 3}
    detections = [
        [(label_of[c], box, s) for c, box, s in image] for image in ground_truth_detections(SPARSE_IMAGES)
    ]
    detections[0].append((0, [10, 10, 30, 30], 1.0))  # background rows are dropped, never looked up

    evaluator = CocoEvaluator(ground_truth, label_to_category={1: 1, 2: 7, 3: 90})
    evaluator.update([1, 2], model_outputs(detections))
    assert evaluator.result()["AP"] == pytest.approx(1.0) and evaluator.num_detections == 3

    identity = CocoEvaluator(ground_truth)  # labels 2 and 3 are not categories: dropped, so 7 and 90 score 0
    identity.update([1, 2], model_outputs(detections))
    assert identity.result()["AP"] == pytest.approx(1 / 3) and identity.num_detections == 1

    detections[1].append((4, [0, 0, 10, 10], 0.5))
    with pytest.raises(ValueError, match="class label 4 is not in label_to_category"):
        CocoEvaluator(ground_truth, {1: 1, 2: 7, 3: 90}).update([1, 2], model_outputs(detections))
    with pytest.raises(ValueError, match=r"category ids \[5\] that are not ground-truth categories"):
        CocoEvaluator(ground_truth, label_to_category={1: 1, 2: 5})
    with pytest.raises(ValueError, match="0 is background"):
        CocoEvaluator(ground_truth, label_to_category={0: 1})


def test_bad_ground_truth_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="COCO annotations file not found: .*missing.json"):
        CocoEvaluator(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text('{"images": [')
    with pytest.raises(DataError, match="broken.json: not valid JSON"):
        CocoEvaluator(tmp_path / "broken.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(DataError, match="list.json: expected a JSON object"):
        CocoEvaluator(tmp_path / "list.json")
    no_annotations = coco_dict()
    del no_annotations["annotations"]
    with pytest.raises(DataError, match="ground-truth dict: key 'annotations' is missing or not a list"):
        CocoEvaluator(no_annotations)
    no_area = coco_dict()
    del no_area["annotations"][2]["area"]
    with pytest.raises(DataError, match=r"ground-truth dict: annotations\[2\] \(id 3\) has no \['area'\]"):
        CocoEvaluator(no_area)
    (tmp_path / "no_area.json").write_text(json.dumps(no_area))
    with pytest.raises(DataError, match=r"no_area.json: annotations\[2\] \(id 3\) has no \['area'\]"):
        CocoEvaluator(tmp_path / "no_area.json")
    with contextlib.redirect_stdout(io.StringIO()):
        no_size = COCO()
        no_size.dataset = coco_dict()
        del no_size.dataset["images"][1]["width"]
        no_size.createIndex()
    with pytest.raises(DataError, match=r"ground-truth COCO object: images\[1\] \(id 2\) has no \['width'\]"):
        CocoEvaluator(no_size)
    with pytest.raises(ValueError, match=r"iou_types \('bbox', 'keypoints'\): expected one or both of"):
        CocoEvaluator(coco_dict(), iou_types=("bbox", "keypoints"))
    with pytest.raises(ValueError, match=r"iou_types \(\): expected one or both of \('bbox', 'segm'\)"):
        CocoEvaluator(coco_dict(), iou_types=())


def test_bad_detections_are_clear_errors_and_change_nothing():
    evaluator = CocoEvaluator(coco_dict())
    good = model_outputs(ground_truth_detections()[:2])
    with pytest.raises(ValueError, match="before any update"):
        evaluator.result()
    with pytest.raises(ValueError, match="before any update"):
        evaluator.per_class_ap()
    with pytest.raises(ValueError, match=r"detections\['scores'\] has shape \(2, 7\); expected \(2, 6\)"):
        evaluator.update([1, 2], {**good, "scores": np.zeros((2, 7))})
    with pytest.raises(ValueError, match=r"detections\['boxes'\] has shape \(2, 6, 3\)"):
        evaluator.update([1, 2], {**good, "boxes": np.zeros((2, 6, 3))})
    with pytest.raises(
        ValueError, match=r"detections\['boxes'\] has shape \(2, 6, 4\); expected \(3, K, 4\)"
    ):
        evaluator.update([1, 2, 3], good)
    with pytest.raises(ValueError, match=r"detections has no \['classes'\]"):
        evaluator.update([1, 2], {k: v for k, v in good.items() if k != "classes"})
    with pytest.raises(ValueError, match=r"num_detections'\] \[2, 9\] is outside \[0, K=6\]"):
        evaluator.update([1, 2], {**good, "num_detections": np.array([2, 9])})
    with pytest.raises(ValueError, match="image id 999 is not in the ground truth"):
        evaluator.update([1, 999], good)
    assert evaluator.num_images == 0 and evaluator.num_detections == 0
    evaluator.update([1, 2], good)
    with pytest.raises(ValueError, match="image id 2 was already passed to update"):
        evaluator.update([2, 3], good)
    assert evaluator.num_images == 2


def test_scoring_and_the_coco_reader_it_shares_with_training_do_not_load_tensorflow():
    code = (
        "import sys, spinenet_tf.evaluation; "
        "print('spinenet_tf.data.coco' in sys.modules, any(m.startswith('tensorflow') for m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.split() == ["True", "False"]
