import json
import logging

import numpy as np
import pytest

from spinenet_tf.data.coco import read_coco
from tests.data.coco_fixture import write_coco


def test_good_records_have_pixel_boxes_classes_crowd_and_masks(tmp_path):
    images_dir, annotations = write_coco(
        tmp_path, [("a.png", 40, 60, [(1, [10, 5, 20, 10], 0), (3, [0, 0, 60, 40], 1)])]
    )
    coco = read_coco(images_dir, annotations)
    (record,) = coco.records
    np.testing.assert_array_equal(record.boxes, [[5, 10, 15, 30], [0, 0, 40, 60]])
    np.testing.assert_array_equal(record.classes, [1, 3])
    np.testing.assert_array_equal(record.is_crowd, [False, True])
    masks = record.masks()
    assert masks.shape == (2, 40, 60)
    ys, xs = np.nonzero(masks[0])
    assert (ys.min(), xs.min()) == (5, 10) and abs(ys.max() - 14) <= 1 and abs(xs.max() - 29) <= 1
    assert coco.report.counts == {} and coco.category_ids == [1, 2, 3]


def test_bad_entries_are_skipped_or_fixed_and_counted(tmp_path, caplog):
    images = [
        ("good.png", 32, 32, [(1, [2, 2, 10, 10], 0)]),
        ("boxes.png", 32, 32, [
            (1, [2, 2, 0, 10], 0),     # zero width
            (1, [2, 2, 10, -3], 0),    # negative height
            (2, [40, 40, 5, 5], 0),    # entirely outside
            (2, [25, 25, 20, 20], 0),  # partly outside: clipped
            (9, [1, 1, 5, 5], 0),      # unknown category
        ]),
        ("empty.png", 32, 32, []),
        ("corrupt.png", 32, 32, [(1, [2, 2, 10, 10], 0)]),
        ("missing.png", 32, 32, [(1, [2, 2, 10, 10], 0)]),
    ]  # fmt: skip
    orphan = {"id": 99, "image_id": 12345, "category_id": 1, "bbox": [0, 0, 1, 1]}
    images_dir, annotations = write_coco(tmp_path, images, extra_annotations=[orphan])
    (images_dir / "corrupt.png").write_bytes(b"this is not an image")
    (images_dir / "missing.png").unlink()
    data = json.loads(annotations.read_text())
    data["images"].append({"id": 50, "file_name": "../instances.json", "height": 1, "width": 1})
    data["annotations"].append({"id": 100, "image_id": 1, "category_id": 1, "bbox": "oops"})
    annotations.write_text(json.dumps(data))

    with caplog.at_level(logging.WARNING, logger="spinenet_tf.data"):
        coco = read_coco(images_dir, annotations)
    by_name = {r.path.rsplit("/", 1)[-1]: r for r in coco.records}
    assert sorted(by_name) == ["boxes.png", "empty.png", "good.png"]
    np.testing.assert_array_equal(by_name["boxes.png"].boxes, [[25, 25, 32, 32]])
    assert len(by_name["empty.png"].classes) == 0
    assert coco.report.counts == {
        "degenerate_box": 2, "box_outside_image": 1, "clipped_box": 1, "unknown_category": 1,
        "no_annotations": 1, "corrupt_image": 1, "missing_file": 1, "unsafe_path": 1,
        "unknown_image": 1, "malformed_annotation": 1,
    }  # fmt: skip
    assert "file_name '../instances.json'" in caplog.text
    summary = coco.report.summary()
    assert "11 data problem(s)" in summary and "2 x annotation skipped: box with zero or negative" in summary


def test_size_in_json_is_checked_against_the_file(tmp_path):
    images_dir, annotations = write_coco(tmp_path, [("a.png", 40, 60, [(1, [50, 30, 20, 20], 0)])])
    data = json.loads(annotations.read_text())
    data["images"][0].update(height=400, width=600)
    annotations.write_text(json.dumps(data))
    coco = read_coco(images_dir, annotations)
    assert (coco.records[0].height, coco.records[0].width) == (40, 60)
    np.testing.assert_array_equal(coco.records[0].boxes, [[30, 50, 40, 60]])  # clipped to the real size
    assert coco.report.counts["size_mismatch"] == 1


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"images": [', r"instances.json: not valid JSON \(Expecting value at line 1, column 13\)"),
        ('{"annotations": [], "categories": []}', r"instances.json: key 'images' is missing or not a list"),
        ("[1, 2]", "expected a JSON object"),
        (
            '{"images": [{"id": 1}], "annotations": [], "categories": []}',
            r"images\[0\] has no \['file_name'\]",
        ),
        (
            '{"images": [], "annotations": [], "categories": [{"name": "x"}]}',
            r"categories\[0\] has no integer 'id'",
        ),
    ],
)
def test_broken_annotation_files_name_the_problem(tmp_path, content, message):
    (tmp_path / "instances.json").write_text(content)
    with pytest.raises(ValueError, match=message):
        read_coco(tmp_path, tmp_path / "instances.json")


def test_missing_annotation_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="COCO annotations file not found: .*nope.json"):
        read_coco(tmp_path, tmp_path / "nope.json")
