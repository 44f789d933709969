"""Our weights written in Model Garden's checkpoint layout (what `benchmarks.model_garden_accuracy`
hands Model Garden): the loader reads back exactly what was written, for a template written by
Model Garden itself (the committed parity fixture)."""

import os

import numpy as np
import pytest
import tensorflow as tf

from spinenet_tf.errors import ModelError
from spinenet_tf.pretrained.convert import load_reference_checkpoint
from spinenet_tf.pretrained.export_reference import write_reference_checkpoint
from spinenet_tf.pretrained.source import OBJECT_GRAPH_KEY
from tests.pretrained.fixtures import fixture, fixture_model


def _randomised(model, seed):
    """`model` with every weight, BN statistics included, set to random values."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        weight.assign(rng.uniform(0.5, 1.5, weight.shape).astype("float32"))
    return model


def test_our_weights_round_trip_through_model_garden_layout(tmp_path):
    template, arch, _ = fixture("model_garden_49")
    ours = _randomised(fixture_model(arch), 0)
    out = write_reference_checkpoint(ours, template, str(tmp_path / "ours" / "ckpt"), "model-garden")

    fresh = fixture_model(arch)
    report = load_reference_checkpoint(fresh, out, "model-garden")
    assert report.not_loaded == [] and len(report.loaded) == len(fresh.weights)
    for expected, loaded in zip(ours.weights, fresh.weights):
        np.testing.assert_array_equal(np.asarray(loaded), np.asarray(expected), err_msg=expected.path)
    # Model Garden restores by its object graph: the template's, and every template variable
    # (the step and optimizer slots too) still there.
    written, original = tf.train.load_checkpoint(out), tf.train.load_checkpoint(template)
    assert written.get_tensor(OBJECT_GRAPH_KEY) == original.get_tensor(OBJECT_GRAPH_KEY)
    assert written.get_variable_to_shape_map() == original.get_variable_to_shape_map()


def test_a_template_of_another_architecture_is_refused_before_writing(tmp_path):
    template, arch, _ = fixture("model_garden_49")
    out = tmp_path / "ckpt"
    with pytest.raises(ModelError, match="class_net_predict"):
        write_reference_checkpoint(
            fixture_model({**arch, "num_classes": 7}), template, str(out), "model-garden"
        )
    assert not os.path.exists(f"{out}.index")
