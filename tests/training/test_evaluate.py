"""Evaluation writes per-class AP and val images (ground truth beside detections) for TensorBoard;
training refuses a split with nothing to learn."""

import json

import numpy as np
import pytest
import tensorflow as tf

from spinenet_tf.data.synthetic import CATEGORIES
from spinenet_tf.errors import DataError
from spinenet_tf.training.config import load_config
from spinenet_tf.training.trainer import (
    build_model,
    ensure_synthetic_dataset,
    evaluate,
    make_optimizer,
    train,
)
from spinenet_tf.viz.detections import CAPTION_HEIGHT, PANEL_GAP
from tests.data.coco_fixture import write_coco
from tests.training.tiny_experiment import write_experiment


def logged_images(log_dir, tag):
    """The PNGs of the last image summary `tag` in a TensorBoard log directory, decoded."""
    found = []
    for path in tf.io.gfile.glob(str(log_dir / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            found += [tf.make_ndarray(value.tensor) for value in event.summary.value if value.tag == tag]
    return [tf.io.decode_png(png).numpy() for png in found[-1][2:]]  # [width, height, png, ...]


def test_evaluation_writes_per_class_ap_and_ground_truth_beside_detections(tmp_path):
    config = load_config(write_experiment(tmp_path))
    ensure_synthetic_dataset(config)
    model = build_model(config)
    model.compile(optimizer=make_optimizer(config))
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    metrics = evaluate(config, str(model_dir), model)

    written = json.loads((model_dir / "metrics.json").read_text())
    assert written["AP50"] == metrics["AP50"] and written["step"] == 0
    assert list(written["per_class_AP"]) == [category["name"] for category in CATEGORIES]

    pictures = logged_images(model_dir / "logs" / "eval", "ground_truth_vs_detections")
    val = json.loads(open(config.data.val.annotations).read())
    heights, widths = (
        [image["height"] for image in val["images"]],
        [image["width"] for image in val["images"]],
    )
    assert len(pictures) == 4 == len(val["images"])
    assert pictures[0].shape == (max(heights) + CAPTION_HEIGHT, 2 * max(widths) + PANEL_GAP, 3)
    # The untrained model scores ~0.01, under the drawing threshold: its panel is the photo as it is,
    # while the ground-truth panel has the boxes drawn on it.
    photo = tf.io.decode_image(tf.io.read_file(f"{config.data.val.images}/{val['images'][0]['file_name']}"))
    height, width = heights[0], widths[0]
    right = width + PANEL_GAP
    np.testing.assert_array_equal(pictures[0][CAPTION_HEIGHT:][:height, right : right + width], photo)
    assert np.any(pictures[0][CAPTION_HEIGHT:][:height, :width] != photo)


def test_a_training_split_without_boxes_is_refused_naming_its_annotations_file(tmp_path):
    images, annotations = write_coco(tmp_path / "empty", [("a.png", 64, 64, []), ("b.png", 64, 64, [])])
    train_split = {"images": str(images), "annotations": str(annotations)}
    config = load_config(write_experiment(tmp_path, data={"train": train_split}))
    with pytest.raises(
        DataError, match=r"empty/instances.json: the training split \(data.train\) has no boxes"
    ):
        train(config, str(tmp_path / "run"))
