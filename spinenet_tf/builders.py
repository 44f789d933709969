"""Builds backbones and task models (detectors, classifiers) from plain config dicts (YAML sections).

Config keys are constructor argument names, so a YAML section reaches its constructor
in one hop. This module is the one place that knows those signatures: the experiment
config (`training/config.py`) checks its model section with `check_arguments` and
`input_size_multiple` before anything is built, and the trainer builds with
`build_task`, so a config that passes its checks is a config that builds.
"""

import inspect

from spinenet_tf.backbones.resnet import ResNet50Backbone
from spinenet_tf.backbones.spinenet import SpineNet, spinenet_size_multiple
from spinenet_tf.backbones.spinenet_mobile import SpineNetMobile
from spinenet_tf.classification.image_classifier import ImageClassifier
from spinenet_tf.detection.mask_rcnn import MaskRCNN
from spinenet_tf.detection.retinanet import RetinaNet
from spinenet_tf.errors import ModelError

BACKBONES = {"spinenet": SpineNet, "spinenet_mobile": SpineNetMobile, "resnet50": ResNet50Backbone}
DETECTORS = {"retinanet": RetinaNet, "maskrcnn": MaskRCNN}
CLASSIFIERS = {"classifier": ImageClassifier}
TASKS = {**DETECTORS, **CLASSIFIERS}


def constructor_arguments(function):
    """{argument name: default (inspect.Parameter.empty if none)} of a class's constructor or a function."""
    signature = inspect.signature(function.__init__ if inspect.isclass(function) else function)
    return {
        name: parameter.default
        for name, parameter in signature.parameters.items()
        if name != "self" and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
    }


def check_arguments(function, arguments, key, managed=(), error=ModelError):
    """Raises `error` naming `key.<name>` for the first of `arguments` that `function` does not take.

    `managed` are arguments the caller sets itself (and a config must therefore not give).
    """
    allowed = sorted(name for name in constructor_arguments(function) if name not in managed)
    unknown = sorted(set(arguments) - set(allowed))
    if unknown:
        raise error(f"{key}.{unknown[0]}: unknown key; allowed keys here are {allowed}.")


def backbone_class(config, key="backbone", error=ModelError):
    """The class named by a backbone config's "type" (default "spinenet")."""
    kind = config.get("type", "spinenet")
    if kind not in BACKBONES:
        raise error(f"{key}.type: {kind!r} is not one of the allowed values {sorted(BACKBONES)}.")
    return BACKBONES[kind]


def task_class(kind, key="model.type", error=ModelError, allowed=TASKS):
    """The task model class of a config's "type" ("retinanet", "maskrcnn" or "classifier")."""
    if kind not in allowed:
        raise error(f"{key}: {kind!r} is not one of the allowed values {sorted(allowed)}.")
    return allowed[kind]


def detector_class(kind, key="model.type", error=ModelError):
    """The detector class of a config's "type" ("retinanet" or "maskrcnn")."""
    return task_class(kind, key, error, DETECTORS)


def predicts_masks(detector_type, detector_config):
    """Whether a detector of this type and config has a mask head (and so trains on masks)."""
    cls = task_class(detector_type)
    return bool(detector_config.get("include_mask", constructor_arguments(cls).get("include_mask", False)))


def input_size_multiple(backbone_config):
    """What the input height and width of this backbone config must be a multiple of.

    The models' own rules: SpineNet's coarsest block level (from its block table and
    levels), ResNet-50's stride 32.
    """
    cls = backbone_class(backbone_config)
    if cls is SpineNet:
        arguments = constructor_arguments(SpineNet)
        return spinenet_size_multiple(
            backbone_config.get("block_specs"),
            backbone_config.get("min_level", arguments["min_level"]),
            backbone_config.get("max_level", arguments["max_level"]),
        )
    return cls.size_multiple


def build_backbone(config, image_size=None, sync_batch_norm=False):
    """{"type": "spinenet" | "spinenet_mobile" | "resnet50", **constructor arguments} -> backbone model.

    `image_size` (square inputs) replaces the config's `image_shape`; `sync_batch_norm`
    turns synchronised batch norm on (a runtime option, for every backbone).
    """
    arguments = {key: value for key, value in config.items() if key != "type"}
    cls = backbone_class(config)
    check_arguments(cls, {key for key in arguments if key != "name"}, "backbone")  # Keras takes a name
    if image_size is not None:
        arguments["image_shape"] = [image_size, image_size, 3]
    if sync_batch_norm:
        arguments["sync_batch_norm"] = True
    return cls(**arguments)


def build_task(config, image_size=None, sync_batch_norm=False, allowed=TASKS):
    """{"type": "retinanet" | "maskrcnn" | "classifier", "backbone": {...}, "num_classes": ...,
    **task arguments} -> RetinaNet, MaskRCNN or ImageClassifier (type defaults to retinanet).

    `image_size` and `sync_batch_norm` are runtime options (the training app's
    `data.image_size` and `runtime.sync_batch_norm`); sync batch norm applies to the
    backbone and the head alike.
    """
    config = dict(config)
    missing = [key for key in ("backbone", "num_classes") if key not in config]
    if missing:
        raise ModelError(f"A task model config needs 'backbone' and 'num_classes'; {missing} missing.")
    backbone_config = config.pop("backbone")
    kind = config.pop("type", "retinanet")
    cls = task_class(kind, key="detector type" if allowed is DETECTORS else "model type", allowed=allowed)
    check_arguments(cls, config, "classifier" if kind in CLASSIFIERS else "detector", managed=("backbone",))
    backbone = build_backbone(backbone_config, image_size, sync_batch_norm)
    if sync_batch_norm:
        config["sync_batch_norm"] = True
    return cls(backbone=backbone, **config)


def build_detector(config, image_size=None, sync_batch_norm=False):
    """`build_task` for a detector ("type" "retinanet", the default, or "maskrcnn")."""
    return build_task(config, image_size, sync_batch_norm, DETECTORS)


def build_classifier(config, image_size=None, sync_batch_norm=False):
    """`build_task` for an ImageClassifier: {"backbone": {...}, "num_classes": ..., **its arguments}."""
    return build_task({**config, "type": "classifier"}, image_size, sync_batch_norm)
