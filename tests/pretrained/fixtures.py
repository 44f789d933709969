"""The parity fixtures written by the reference code (tests/fixtures/pretrained/make_fixtures.py)."""

import json
import pathlib

import numpy as np

from spinenet_tf import RetinaNet, SpineNet

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "pretrained"
NAMES = ("model_garden_49", "model_garden_96", "tpu_49", "tpu_96")


def fixture(name):
    """(checkpoint prefix, architecture dict, {"image", "P3".., "class_logits", "box_deltas"})."""
    directory = FIXTURES / name
    arch = json.loads((directory / "arch.json").read_text())
    with np.load(directory / "io.npz") as arrays:
        return str(directory / "ckpt"), arch, dict(arrays)


def fixture_model(arch, ops_flavor=None, num_classes=None):
    """Our RetinaNet with the fixture's architecture (and the ops of its format unless told)."""
    flavor = ops_flavor or ("tpu" if arch["format"] == "tpu" else "model_garden")
    size = arch["image_size"]
    norm = {"norm_epsilon": arch["norm_epsilon"], "norm_momentum": arch["norm_momentum"]}
    backbone = SpineNet(
        "49",
        image_shape=(size, size, 3),
        filter_size_scale=arch["filter_size_scale"],
        endpoints_num_filters=arch["endpoints_num_filters"],
        resample_alpha=arch["resample_alpha"],
        block_repeats=arch["block_repeats"],
        activation=arch["activation"],
        ops_flavor=flavor,
        **norm,
    )
    return RetinaNet(
        backbone,
        num_classes=num_classes or arch["num_classes"],
        num_filters=arch["num_filters"],
        activation=arch["activation"],
        aspect_ratios=arch["aspect_ratios"],
        **norm,
    )


def relative_error(ours, reference):
    ours, reference = np.asarray(ours, "float64"), np.asarray(reference, "float64")
    return float(np.max(np.abs(ours - reference)) / np.max(np.abs(reference)))
