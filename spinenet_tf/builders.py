"""Builds backbones and detectors from plain config dicts (YAML sections).

Config keys are constructor argument names, so a YAML section reaches its constructor
in one hop; a misspelt key is an error that lists the accepted ones.
"""

import inspect

from spinenet_tf.backbones.resnet import ResNet50Backbone
from spinenet_tf.backbones.spinenet import SpineNet
from spinenet_tf.detection.retinanet import RetinaNet

BACKBONES = {"spinenet": SpineNet, "resnet50": ResNet50Backbone}


def _construct(cls, config, where):
    accepted = [name for name in inspect.signature(cls.__init__).parameters if name not in ("self", "kwargs")]
    unknown = sorted(set(config) - set(accepted) - {"name"})
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; accepted keys are {accepted}.")
    return cls(**config)


def build_backbone(config):
    """{"type": "spinenet" | "resnet50", **constructor arguments} -> backbone model."""
    config = dict(config)
    kind = config.pop("type", "spinenet")
    if kind not in BACKBONES:
        raise ValueError(f"backbone.type: unknown backbone {kind!r}; use one of {sorted(BACKBONES)}.")
    return _construct(BACKBONES[kind], config, f"backbone ({kind})")


def build_detector(config):
    """{"backbone": {...}, "num_classes": ..., **RetinaNet arguments} -> RetinaNet."""
    config = dict(config)
    if "backbone" not in config or "num_classes" not in config:
        raise ValueError("A detector config needs 'backbone' and 'num_classes'.")
    backbone = build_backbone(config.pop("backbone"))
    return _construct(RetinaNet, {"backbone": backbone, **config}, "detector")
