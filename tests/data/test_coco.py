import io
import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from spinenet_tf.data.coco import category_names, check_annotations, load_annotations, read_coco
from spinenet_tf.errors import DataError
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
        (
            "boxes.png",
            32,
            32,
            [
                (1, [2, 2, 0, 10], 0),  # zero width
                (1, [2, 2, 10, -3], 0),  # negative height
                (2, [40, 40, 5, 5], 0),  # entirely outside
                (2, [25, 25, 20, 20], 0),  # partly outside: clipped
                (9, [1, 1, 5, 5], 0),  # unknown category
            ],
        ),
        ("empty.png", 32, 32, []),
        ("corrupt.png", 32, 32, [(1, [2, 2, 10, 10], 0)]),
        ("missing.png", 32, 32, [(1, [2, 2, 10, 10], 0)]),
    ]
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
        "degenerate_box": 2,
        "box_outside_image": 1,
        "clipped_box": 1,
        "unknown_category": 1,
        "no_annotations": 1,
        "corrupt_image": 1,
        "missing_file": 1,
        "unsafe_path": 1,
        "unknown_image": 1,
        "malformed_annotation": 1,
    }
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
        ('{"images": [', r"instances.json: not valid JSON \(Expecting value at line 1, column 13\)\.$"),
        (b"\x89PNG\r\n\x1a\n\x00", r"instances.json: not valid JSON \(not UTF-8 text at byte 0\)\.$"),
        ('{"annotations": [], "categories": []}', r"instances.json: key 'images' is missing or not a list"),
        ('{"images": {}, "annotations": [], "categories": []}', r"key 'images' is missing or not a list"),
        ("[1, 2]", r"instances.json: expected a JSON object with lists .*, got list\.$"),
        (
            '{"images": [{"id": 1}], "annotations": [], "categories": []}',
            r"instances.json: images\[0\] \(id 1\) has no \['file_name'\]\.$",
        ),
        (
            '{"images": [{"id": "a", "file_name": "a.png"}], "annotations": [], "categories": []}',
            r"instances.json: images\[0\] has no integer 'id' \(got 'a'\)\.$",
        ),
        (
            '{"images": [], "annotations": [], "categories": [{"id": 1}, {"name": "x"}]}',
            r"instances.json: categories\[1\] has no integer 'id' \(got None\)\.$",
        ),
    ],
)
def test_broken_annotation_files_are_one_line_data_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "instances.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError, match=message) as raised:
        read_coco(tmp_path, path)
    assert "\n" not in str(raised.value) and str(path) in str(raised.value)


def test_a_directory_is_not_an_annotations_file(tmp_path):
    with pytest.raises(DataError, match="is a directory, not a COCO annotations JSON file"):
        load_annotations(tmp_path)


def test_missing_annotation_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="COCO annotations file not found: .*nope.json"):
        read_coco(tmp_path, tmp_path / "nope.json")


def test_required_fields_are_checked_per_list_and_entry(tmp_path):
    _, annotations = write_coco(tmp_path, [("a.png", 8, 8, [(1, [0, 0, 4, 4], 0), (2, [4, 4, 4, 4], 0)])])
    data = json.loads(annotations.read_text())
    del data["annotations"][1]["area"]
    annotations.write_text(json.dumps(data))
    load_annotations(annotations)  # no consumer needs 'area' by default
    with pytest.raises(DataError, match=r"annotations\[1\] \(id 2\) has no \['area'\]"):
        load_annotations(annotations, required_fields={"annotations": ("bbox", "area")})
    data["annotations"][1] = "not an object"
    with pytest.raises(DataError, match=r"ground truth: annotations\[1\] is not an object: 'not an object'"):
        check_annotations(data, "ground truth", {"annotations": ("area",)})


def test_category_names_by_id_with_the_id_where_a_name_is_missing(tmp_path):
    _, annotations = write_coco(tmp_path, [], categories=(1, 7))
    data = json.loads(annotations.read_text())
    data["categories"].append({"id": 90})
    annotations.write_text(json.dumps(data))
    assert category_names(annotations) == {1: "c1", 7: "c7", 90: "90"}
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(DataError, match="broken.json: not valid JSON"):
        category_names(tmp_path / "broken.json")


def _photo_bytes(image_format, height=96, width=128, seed=0):
    """A noisy image (so most of the file is pixel data, not header), encoded by PIL."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format)
    return buffer.getvalue()


def _with_thumbnail(jpeg):
    """The JPEG with a whole second JPEG (a thumbnail, as EXIF embeds one) in an APP15 segment."""
    thumbnail = _photo_bytes("JPEG", 16, 16, seed=1)
    return jpeg[:2] + b"\xff\xef" + (len(thumbnail) + 2).to_bytes(2, "big") + thumbnail + jpeg[2:]


@pytest.mark.parametrize("image_format", ["JPEG", "PNG"])
def test_truncated_images_are_skipped_and_counted_by_file_name(tmp_path, caplog, image_format):
    extension = image_format.lower()
    images = [(f"{name}.{extension}", 96, 128, [(1, [2, 2, 10, 10], 0)]) for name in ("whole", "cut")]
    images_dir, annotations = write_coco(tmp_path, images, image_format=image_format)
    data = _photo_bytes(image_format)
    (images_dir / f"whole.{extension}").write_bytes(data)
    (images_dir / f"cut.{extension}").write_bytes(data[: len(data) // 2])
    with Image.open(images_dir / f"cut.{extension}") as opened:
        assert opened.size == (128, 96)  # the header alone says nothing is wrong

    with caplog.at_level(logging.WARNING, logger="spinenet_tf.data"):
        coco = read_coco(images_dir, annotations)
    assert [os.path.basename(r.path) for r in coco.records] == [f"whole.{extension}"]
    assert coco.report.counts == {"truncated_image": 1}
    assert f"cut.{extension}: {image_format} data ends before its end marker" in caplog.text
    assert "1 x image skipped: file cut short" in coco.report.summary()
    unchecked = read_coco(images_dir, annotations, verify_images=False)
    assert len(unchecked.records) == 2 and unchecked.report.counts == {}


# (image format, change to a complete file, whether the reader must call it truncated)
END_OF_FILE_CASES = {
    "jpeg zero padding": ("JPEG", lambda data: data + b"\0" * 100, False),
    "png zero padding": ("PNG", lambda data: data + b"\0" * 100, False),
    "jpeg motion photo": ("JPEG", lambda data: data + b"\0\0\0\x18ftypmp42" + bytes(range(256)) * 40, False),
    "png trailer": ("PNG", lambda data: data + b"trailer" * 1000, False),
    "jpeg marker cut, then padding": ("JPEG", lambda data: data[:-2] + b"\0" * 10, True),
    "jpeg with thumbnail": ("JPEG", _with_thumbnail, False),
    "jpeg cut after its thumbnail": ("JPEG", lambda data: _with_thumbnail(data)[: len(data) * 3 // 4], True),
    "jpeg cut, then garbage": (
        "JPEG",
        lambda data: _with_thumbnail(data)[: len(data) * 3 // 4] + b"x" * 5000,
        True,
    ),
}


@pytest.mark.parametrize("image_format,change,truncated", END_OF_FILE_CASES.values(), ids=END_OF_FILE_CASES)
def test_end_marker_check_allows_trailing_data_and_ignores_thumbnails(
    tmp_path, image_format, change, truncated
):
    images_dir, annotations = write_coco(tmp_path, [("a.img", 96, 128, [(1, [2, 2, 10, 10], 0)])])
    (images_dir / "a.img").write_bytes(change(_photo_bytes(image_format)))
    coco = read_coco(images_dir, annotations)
    assert coco.report.counts == ({"truncated_image": 1} if truncated else {})
    assert len(coco.records) == (0 if truncated else 1)
