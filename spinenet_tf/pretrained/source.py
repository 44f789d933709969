"""Reading a TensorFlow checkpoint written by another code base (TF1 name-based or TF2 object-based).

TensorFlow-only, like the rest of the converter: the checkpoints are TensorFlow files.
"""

import os
import re

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from spinenet_tf.errors import ModelError

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
# Variables that are model weights; anything else (steps, optimizer slots, EMA) is training state.
WEIGHT_NAMES = ("kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance")
_NUMBERED = re.compile(r"^(.*?)(?:_(\d+))?$")


def numbered(layer_name):
    """("conv2d", 5) for "conv2d_5", ("conv2d", 0) for "conv2d": a name's kind and creation rank."""
    kind, number = _NUMBERED.match(layer_name).groups()
    return kind, int(number or 0)


def resolve_checkpoint(path):
    """The checkpoint prefix of `path`: a prefix, one of its files, or a directory holding one."""
    path = os.fspath(path)
    for suffix in (".index", ".meta"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
    path = re.sub(r"\.data-\d{5}-of-\d{5}$", "", path)
    if os.path.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest:
            return latest
        prefixes = sorted(name[: -len(".index")] for name in os.listdir(path) if name.endswith(".index"))
        if len(prefixes) != 1:
            raise FileNotFoundError(
                f"{path}: expected one TensorFlow checkpoint (a .index file) in the directory, "
                f"found {len(prefixes)}{' ' + str(prefixes[:5]) if prefixes else ''}; give its prefix."
            )
        return os.path.join(path, prefixes[0])
    if not os.path.exists(path + ".index"):
        raise FileNotFoundError(f"{path}: no TensorFlow checkpoint there ({path}.index does not exist).")
    return path


class SourceCheckpoint:
    """A checkpoint's variables: names, shapes, values, and for TF2 ones each variable's Keras name."""

    def __init__(self, path):
        self.path = resolve_checkpoint(path)
        try:
            self.reader = tf.train.load_checkpoint(self.path)
        except (tf.errors.OpError, ValueError) as error:
            raise ModelError(f"{self.path}: not a readable TensorFlow checkpoint ({error}).") from None
        self.shapes = {
            key: tuple(shape)
            for key, shape in self.reader.get_variable_to_shape_map().items()
            if key != OBJECT_GRAPH_KEY
        }

    @property
    def object_based(self):
        return self.reader.has_tensor(OBJECT_GRAPH_KEY)

    def variable_names(self):
        """{checkpoint key: the variable's own name (e.g. "conv2d_5/kernel")} of a TF2 checkpoint."""
        graph = trackable_object_graph_pb2.TrackableObjectGraph()
        graph.ParseFromString(self.reader.get_tensor(OBJECT_GRAPH_KEY))
        return {
            attribute.checkpoint_key: attribute.full_name
            for node in graph.nodes
            for attribute in node.attributes
            if attribute.checkpoint_key in self.shapes
        }

    def value(self, key):
        return np.asarray(self.reader.get_tensor(key))
