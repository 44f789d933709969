"""Tests of the published-checkpoint converter and presets.

The preset tests share two helpers, kept here: the experiment YAML that builds a parity
fixture's architecture, and a preset whose "download" is a file:// archive of that
fixture's checkpoint, so the whole preset path runs without network.
"""

import hashlib
import tarfile

import yaml

from spinenet_tf.pretrained.presets import Preset
from tests.pretrained.fixtures import FIXTURES, fixture


def fixture_experiment(name, path):
    """Writes the experiment YAML of fixture `name`'s architecture to `path`; returns (path, arch, io)."""
    checkpoint, arch, arrays = fixture(name)
    backbone = {key: arch[key] for key in ("filter_size_scale", "endpoints_num_filters", "resample_alpha")}
    config = {
        "model": {
            "backbone": {
                "type": "spinenet",
                "model_id": arch["model_id"],
                "block_repeats": arch["block_repeats"],
                "activation": arch["activation"],
                **backbone,
            },
            "detector": {"num_filters": arch["num_filters"], "activation": arch["activation"]},
            "num_classes": arch["num_classes"],
        },
        "data": {
            "image_size": arch["image_size"],
            "train": {"images": "x", "annotations": "x.json"},
            "val": {"images": "x", "annotations": "x.json"},
        },
    }
    path.write_text(yaml.safe_dump(config))
    return str(path), arch, arrays


def write_archive(name, path, prefix="spinenet49/ckpt-277200"):
    """A tar.gz of fixture `name`'s checkpoint files, renamed to `prefix` as published archives are."""
    with tarfile.open(path, "w:gz") as tar:
        for file in sorted((FIXTURES / name).glob("ckpt.*")):
            tar.add(file, arcname=prefix + file.name[len("ckpt") :])
    return path


def archive_preset(name, tmp_path, preset_name="tiny_spinenet49_fixture"):
    """(a Preset whose URL is a file:// archive of fixture `name`, the fixture's io arrays)."""
    experiment, arch, arrays = fixture_experiment(name, tmp_path / "experiment.yaml")
    archive = write_archive(name, tmp_path / "published.tar.gz")
    preset = Preset(
        name=preset_name,
        task="retinanet",
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
