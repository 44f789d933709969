import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from spinenet_tf.data.coco import read_coco
from spinenet_tf.data.synthetic import (
    CATEGORIES,
    MIN_VISIBLE_FRACTION,
    MIN_VISIBLE_PIXELS,
    render_image,
    write_synthetic_coco,
)
from spinenet_tf.errors import DataError

SMALL = {"min_size": 64, "max_size": 112}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("synthetic")
    return out_dir, write_synthetic_coco(out_dir, num_train=6, num_val=3, seed=0, **SMALL)


def split_files(summary, split):
    """{file name: bytes} of a split's images and its annotations file."""
    files = {path.name: path.read_bytes() for path in sorted(Path(summary[split]["dir"]).iterdir())}
    return files, Path(summary[split]["annotations_file"]).read_bytes()


def erode(mask, steps):
    """Pixels of `mask` at least `steps` pixels (4-connected) from its outside."""
    for _ in range(steps):
        padded = np.pad(mask, 1)
        mask = mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask


def test_files_load_with_pycocotools_and_match_the_summary(dataset):
    out_dir, summary = dataset
    # Ids 1..K, so a model for this set has K + 1 classes (0: background).
    assert [c["id"] for c in CATEGORIES] == list(range(1, len(CATEGORIES) + 1))
    for split, count in (("train", 6), ("val", 3)):
        coco = COCO(summary[split]["annotations_file"])
        assert summary[split]["images"] == count == len(coco.imgs)
        assert summary[split]["annotations"] == len(coco.anns) >= count
        assert coco.loadCats(coco.getCatIds()) == CATEGORIES
        for image in coco.imgs.values():
            with Image.open(Path(summary[split]["dir"]) / image["file_name"]) as opened:
                assert opened.mode == "RGB" and opened.size == (image["width"], image["height"])
            assert 64 <= image["height"] <= 112 and 64 <= image["width"] <= 112
            assert coco.getAnnIds(imgIds=image["id"]), "every image has at least one object"
        assert len({(i["height"], i["width"]) for i in coco.imgs.values()}) > 1
        assert read_coco(summary[split]["dir"], summary[split]["annotations_file"]).report.counts == {}
    assert (out_dir / "annotations" / "instances_val.json").is_file()


def test_same_seed_gives_identical_files_and_val_ignores_num_train(tmp_path, dataset):
    _, summary = dataset
    again = write_synthetic_coco(tmp_path / "again", num_train=6, num_val=3, seed=0, **SMALL)
    more_train = write_synthetic_coco(tmp_path / "more", num_train=8, num_val=3, seed=0, **SMALL)
    other_seed = write_synthetic_coco(tmp_path / "other", num_train=6, num_val=3, seed=1, **SMALL)
    for split in ("train", "val"):
        assert split_files(again, split) == split_files(summary, split)
    assert split_files(more_train, "val") == split_files(summary, "val")
    train, _ = split_files(summary, "train")
    longer_train, _ = split_files(more_train, "train")
    assert all(longer_train[name] == data for name, data in train.items())
    for split in ("train", "val"):
        images, annotations = split_files(other_seed, split)
        reference_images, reference_annotations = split_files(summary, split)
        assert annotations != reference_annotations
        assert all(images[name] != data for name, data in reference_images.items())
    assert split_files(summary, "train")[0]["000000.jpg"] != split_files(summary, "val")[0]["000000.jpg"]


def test_masks_areas_boxes_and_pixels_agree(dataset):
    _, summary = dataset
    checked_interiors = 0
    for split in ("train", "val"):
        data = json.loads(Path(summary[split]["annotations_file"]).read_text())
        images = {image["id"]: image for image in data["images"]}
        covered = {image_id: 0 for image_id in images}
        for annotation in data["annotations"]:
            image = images[annotation["image_id"]]
            mask = mask_utils.decode(annotation["segmentation"]).astype(bool)
            assert mask.shape == (image["height"], image["width"])
            assert mask.sum() == annotation["area"] >= MIN_VISIBLE_PIXELS
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            assert annotation["bbox"] == [cols[0], rows[0], cols[-1] + 1 - cols[0], rows[-1] + 1 - rows[0]]
            assert annotation["iscrowd"] == 0 and 1 <= annotation["category_id"] <= len(CATEGORIES)
            covered[image["id"]] = covered[image["id"]] + mask  # visible masks of one image are disjoint
            assert covered[image["id"]].max() == 1
            interior = erode(mask, 2)
            if interior.sum() >= 20:  # away from edges JPEG error is small: one flat colour
                pixels = np.asarray(Image.open(Path(summary[split]["dir"]) / image["file_name"]), np.float32)
                pixels = pixels[interior]
                deviation = np.abs(pixels - np.median(pixels, axis=0)).max(axis=1)
                assert np.median(deviation) <= 8 and np.percentile(deviation, 95) <= 20, annotation["id"]
                checked_interiors += 1
    assert checked_interiors >= 10


@pytest.mark.parametrize("seed", range(3))
def test_rendered_objects_are_flat_colours_partly_hidden_but_visible_enough(seed):
    rng = np.random.default_rng(seed)
    occluded = 0
    for _ in range(10):
        image, ids, objects = render_image(rng, 96, 128, max_objects=8)
        assert image.shape == (96, 128, 3) and image.dtype == np.uint8 and ids.max() == len(objects) >= 1
        for k, obj in enumerate(objects, start=1):
            visible = ids == k
            assert len(np.unique(image[visible], axis=0)) == 1, "an object is painted in one colour"
            assert visible.sum() >= max(MIN_VISIBLE_PIXELS, MIN_VISIBLE_FRACTION * obj["full_area"])
            occluded += visible.sum() < obj["full_area"]
        assert objects[-1]["full_area"] == (ids == len(objects)).sum(), "the last object is on top"
    assert occluded >= 1


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_train": -1}, "num_train"),
        ({"num_val": -2}, "num_val"),
        ({"num_train": 1.5}, "num_train"),
        ({"seed": -1}, "seed"),
        ({"min_size": 8}, "min_size"),
        ({"min_size": 128, "max_size": 64}, "max_size"),
        ({"max_objects": 0}, "max_objects"),
    ],
)
def test_bad_arguments_are_data_errors_naming_the_argument(tmp_path, kwargs, name):
    with pytest.raises(DataError, match=f"^{name}"):
        write_synthetic_coco(tmp_path, **{"num_train": 1, "num_val": 1, **kwargs})
    assert not (tmp_path / "annotations").exists()
