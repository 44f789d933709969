import os

import keras
import numpy as np
import pytest

from spinenet_tf.training.checkpoints import CheckpointDirectory
from tests.helpers import synthetic_batch, tiny_detector


@pytest.fixture(scope="module")
def model():
    """A tiny detector after 2 training steps (one traced step shared by the tests)."""
    model = tiny_detector()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    images, labels = synthetic_batch(2)
    for _ in range(2):
        model.train_on_batch(images, labels)
    return model


def test_restore_brings_back_weights_batch_norm_statistics_and_optimizer_state(tmp_path, model):
    checkpoints = CheckpointDirectory(str(tmp_path), keep=3)
    checkpoints.save(model, 2)

    fresh = tiny_detector()
    fresh.compile(optimizer=keras.optimizers.Adam(1e-3))
    assert checkpoints.restore(fresh) == str(tmp_path / "ckpt-2")
    for saved, restored in zip(model.weights, fresh.weights, strict=True):  # includes BN moving statistics
        np.testing.assert_array_equal(saved.numpy(), restored.numpy())
    assert int(fresh.optimizer.iterations.numpy()) == 2
    # Adam moments included
    for saved, restored in zip(model.optimizer.variables, fresh.optimizer.variables, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(saved), keras.ops.convert_to_numpy(restored))


def test_keeps_the_newest_and_ignores_a_write_cut_short(tmp_path, model):
    checkpoints = CheckpointDirectory(str(tmp_path), keep=2)
    for step in (10, 20, 30):
        checkpoints.save(model, step)
    assert checkpoints.steps() == [20, 30]
    # A process killed mid-write leaves a partial directory: not a checkpoint, and the next save removes it.
    os.makedirs(tmp_path / ".ckpt-40.partial")
    (tmp_path / ".ckpt-40.partial" / "model.weights.h5").write_bytes(b"half a file")
    assert checkpoints.latest == str(tmp_path / "ckpt-30")
    checkpoints.save(model, 50)
    assert sorted(os.listdir(tmp_path)) == ["ckpt-30", "ckpt-50"]


def test_non_writing_process_saves_nothing_and_an_empty_directory_restores_nothing(tmp_path, model):
    CheckpointDirectory(str(tmp_path / "a"), keep=2, write=False).save(model, 1)
    assert not (tmp_path / "a").exists()
    assert CheckpointDirectory(str(tmp_path / "b"), keep=2).restore(model) is None
