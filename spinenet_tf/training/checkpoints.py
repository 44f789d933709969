"""Training checkpoints that work on every Keras backend: one directory per step.

A checkpoint `ckpt-<step>/` holds `model.weights.h5` (Keras weights, BN statistics
included) and `optimizer.npz` (the optimizer's variables: its step, slots, loss scale).
It is written into a temporary directory and renamed into place, a single atomic step,
so a process killed mid-write leaves only a stray `.partial` directory (removed on the
next save) and the previous checkpoint stays the latest.
"""

import os
import re
import shutil

import numpy as np

_NAME = re.compile(r"^ckpt-(\d+)$")


class CheckpointDirectory:
    """The checkpoints of one run; keeps the newest `keep`.

    `write=False` (the non-chief workers of a multi-worker run) makes `save` a no-op so
    that a single process writes the shared directory.
    """

    def __init__(self, directory, keep, write=True):
        self.directory, self.keep, self.write = directory, keep, write

    def steps(self):
        """The steps of the complete checkpoints, oldest first."""
        if not os.path.isdir(self.directory):
            return []
        names = (_NAME.match(name) for name in os.listdir(self.directory))
        return sorted(int(match.group(1)) for match in names if match)

    def path(self, step):
        return os.path.join(self.directory, f"ckpt-{step}")

    @property
    def latest(self):
        steps = self.steps()
        return self.path(steps[-1]) if steps else None

    def save(self, model, step):
        if not self.write or os.path.exists(self.path(step)):
            return
        os.makedirs(self.directory, exist_ok=True)
        for name in os.listdir(self.directory):
            if name.endswith(".partial"):
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        partial = os.path.join(self.directory, f".ckpt-{step}.partial")
        os.makedirs(partial)
        model.save_weights(os.path.join(partial, "model.weights.h5"))
        store = {}
        model.optimizer.save_own_variables(store)
        np.savez(os.path.join(partial, "optimizer.npz"), **store)
        for name in os.listdir(partial):
            with open(os.path.join(partial, name), "rb") as f:
                os.fsync(f.fileno())
        os.replace(partial, self.path(step))
        for old in self.steps()[: -self.keep]:
            shutil.rmtree(self.path(old), ignore_errors=True)

    def restore_weights(self, model, path=None):
        """Loads only the weights of the latest (or the given) checkpoint, for inference and export."""
        path = path or self.latest
        if path is None:
            raise FileNotFoundError(f"No checkpoint in {self.directory}.")
        model.load_weights(os.path.join(path, "model.weights.h5"))
        return path

    def restore(self, model, path=None):
        """Loads the latest (or the given) checkpoint into a compiled model; returns its path or None.

        Call it inside the distribution scope the model was built in (the optimizer's slots
        are created here).
        """
        path = path or self.latest
        if path is None:
            return None
        if not model.optimizer.built:  # its slots are made on the first step; they must exist to be loaded
            model.optimizer.build(model.trainable_variables)
        model.load_weights(os.path.join(path, "model.weights.h5"))
        with np.load(os.path.join(path, "optimizer.npz")) as store:
            model.optimizer.load_own_variables(dict(store))
        return path
