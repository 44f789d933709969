"""The parity fixtures written by the reference code (tests/fixtures/pretrained/make_fixtures.py),
the models and experiments of their architectures, and presets whose "download" is a
file:// archive of one, so that the whole preset path runs without network."""

import hashlib
import json
import pathlib
import tarfile

import numpy as np
import yaml

from spinenet_tf import ImageClassifier, RetinaNet, SpineNet
from spinenet_tf.pretrained.presets import Preset

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "pretrained"
NAMES = ("model_garden_49", "model_garden_143", "tpu_49", "tpu_143")
# The tensorflow/tpu classifier: io.npz at its image_size (224), io_<size>.npz at more_image_sizes.
CLASSIFIER = "tpu_49_classifier"


def fixture(name, image_size=None):
    """(checkpoint prefix, architecture dict, {"image", "P3".., and "class_logits", "box_deltas" or
    "logits"}), the arrays at `image_size` (default the fixture's own)."""
    directory = FIXTURES / name
    arch = json.loads((directory / "arch.json").read_text())
    io = "io.npz" if image_size in (None, arch["image_size"]) else f"io_{image_size}.npz"
    with np.load(directory / io) as arrays:
        return str(directory / "ckpt"), arch, dict(arrays)


def _norm(arch):
    return {"norm_epsilon": arch["norm_epsilon"], "norm_momentum": arch["norm_momentum"]}


def fixture_backbone(arch, ops_flavor=None, image_size=None):
    """Our SpineNet with the fixture's architecture (and the ops of its format unless told)."""
    size = image_size or arch["image_size"]
    return SpineNet(
        "49",
        image_shape=(size, size, 3),
        filter_size_scale=arch["filter_size_scale"],
        endpoints_num_filters=arch["endpoints_num_filters"],
        resample_alpha=arch["resample_alpha"],
        block_repeats=arch["block_repeats"],
        activation=arch["activation"],
        ops_flavor=ops_flavor or ("tpu" if arch["format"] == "tpu" else "model_garden"),
        **_norm(arch),
    )


def fixture_model(arch, ops_flavor=None, num_classes=None):
    """Our RetinaNet with the fixture's architecture (and the ops of its format unless told)."""
    return RetinaNet(
        fixture_backbone(arch, ops_flavor),
        num_classes=num_classes or arch["num_classes"],
        num_filters=arch["num_filters"],
        activation=arch["activation"],
        aspect_ratios=arch["aspect_ratios"],
        **_norm(arch),
    )


def fixture_classifier(arch, ops_flavor=None, image_size=None, embedding_filters=None):
    """Our ImageClassifier with the classifier fixture's architecture, at `image_size` if given."""
    return ImageClassifier(
        fixture_backbone(arch, ops_flavor, image_size),
        num_classes=arch["num_classes"],
        aggregation=arch["aggregation"],
        embedding_filters=arch["embedding_filters"] if embedding_filters is None else embedding_filters,
        dropout_rate=arch["dropout_rate"],
        activation=arch["activation"],
        **_norm(arch),
    )


def relative_error(ours, reference):
    ours, reference = np.asarray(ours, "float64"), np.asarray(reference, "float64")
    return float(np.max(np.abs(ours - reference)) / np.max(np.abs(reference)))


def fixture_experiment(name, path):
    """Writes the experiment YAML of fixture `name`'s architecture to `path`; returns (path, arch, io)."""
    checkpoint, arch, arrays = fixture(name)
    backbone = {key: arch[key] for key in ("filter_size_scale", "endpoints_num_filters", "resample_alpha")}
    backbone.update(type="spinenet", model_id=arch["model_id"], block_repeats=arch["block_repeats"])
    backbone["activation"] = arch["activation"]
    if "aggregation" in arch:  # the classifier, with its BN as the shipped classification experiments
        backbone.update(_norm(arch))
        keys = ("aggregation", "embedding_filters", "dropout_rate", "activation", *_norm(arch))
        model = {"type": "classifier", "classifier": {key: arch[key] for key in keys}}
        split = {"images": "x"}
    else:
        model = {"detector": {"num_filters": arch["num_filters"], "activation": arch["activation"]}}
        split = {"images": "x", "annotations": "x.json"}
    config = {
        "model": {"backbone": backbone, **model, "num_classes": arch["num_classes"]},
        "data": {"image_size": arch["image_size"], "train": split, "val": split},
    }
    path.write_text(yaml.safe_dump(config))
    return str(path), arch, arrays


def write_archive(name, path, prefix="spinenet49/ckpt-277200"):
    """A tar.gz of fixture `name`'s checkpoint files, renamed to `prefix` as published archives are."""
    with tarfile.open(path, "w:gz") as tar:
        for file in sorted((FIXTURES / name).glob("ckpt.*")):
            tar.add(file, arcname=prefix + file.name[len("ckpt") :])
    return path


def archive_preset(name, tmp_path, preset_name="tiny_spinenet49_fixture", task="retinanet"):
    """(a `task` Preset whose URL is a file:// archive of fixture `name`, the fixture's io arrays)."""
    experiment, arch, arrays = fixture_experiment(name, tmp_path / "experiment.yaml")
    archive = write_archive(name, tmp_path / "published.tar.gz")
    preset = Preset(
        name=preset_name,
        task=task,
        source_format=arch["format"],
        url=archive.as_uri(),
        sha256=hashlib.sha256(archive.read_bytes()).hexdigest(),
        experiment=experiment,
        overrides=(),
        image_size=arch["image_size"],
        published_ap=0.0,
        params_m=0.0,
    )
    return preset, arrays
