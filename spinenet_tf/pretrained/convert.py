"""Loading a published SpineNet checkpoint into our model, and converting it to a `.keras` file.

`load_reference_checkpoint` maps every variable by the source format's explicit rule
(`model_garden.py`, `tpu.py`), checks every shape, then assigns; a checkpoint variable
of the loaded parts that the rule does not use is an error, so a wrong or partial
mapping cannot pass silently. `modules="backbone"` loads the backbone only and reports
what it left as initialised.
"""

import keras

from spinenet_tf.errors import ModelError
from spinenet_tf.pretrained.mapping import assign, listing
from spinenet_tf.pretrained.model_garden import is_weight as model_garden_weight
from spinenet_tf.pretrained.model_garden import model_garden_pairs
from spinenet_tf.pretrained.source import SourceCheckpoint
from spinenet_tf.pretrained.tpu import is_weight as tpu_weight
from spinenet_tf.pretrained.tpu import tpu_pairs

SOURCE_FORMATS = {
    "model-garden": (model_garden_pairs, model_garden_weight),
    "tpu": (tpu_pairs, tpu_weight),
}
MODULES = ("all", "backbone")
# What a model needs to compute what each reference computes, as experiment overrides for
# each kind of task (`ModelConfig.task_key`): the tensorflow/tpu code pads strided convs
# explicitly and pools once per down-sampling (its ops); its detectors use BN epsilon 1e-4 /
# momentum 0.997 and anchor ratios [1, 2, 0.5]. Its classifiers' BN (1e-5 / 0.9) is their
# configs', which the shipped classification experiments carry.
FORMAT_OVERRIDES = {
    "model-garden": {"detector": (), "classifier": ()},
    "tpu": {
        "detector": (
            "model.backbone.ops_flavor=tpu",
            "model.backbone.norm_epsilon=1.0e-4",
            "model.backbone.norm_momentum=0.997",
            "model.detector.norm_epsilon=1.0e-4",
            "model.detector.norm_momentum=0.997",
            "model.detector.aspect_ratios=[1.0, 2.0, 0.5]",
        ),
        "classifier": ("model.backbone.ops_flavor=tpu",),
    },
}


def check_choice(name, value, allowed):
    if value not in allowed:
        raise ModelError(f"Unknown {name} {value!r}; use one of {list(allowed)}.")


def load_reference_checkpoint(model, checkpoint, source_format, modules="all"):
    """Loads a Model Garden or tensorflow/tpu checkpoint into `model` (a RetinaNet, a tensorflow/tpu
    ImageClassifier, or a SpineNet).

    Returns a `LoadReport`. Raises ModelError, listing the variables, when anything of
    the loaded parts is unmapped or mismatched; nothing is assigned then.
    """
    check_choice("source format", source_format, SOURCE_FORMATS)
    check_choice("modules", modules, MODULES)
    backbone = getattr(model, "backbone", model)
    if backbone is model:
        modules = "backbone"
    elif getattr(model, "decoder", None) == "fpn":  # "auto" is the identity on a SpineNet
        raise ModelError("Only SpineNet RetinaNets (identity decoder) have published checkpoints to load.")
    if not hasattr(backbone, "block_specs"):
        raise ModelError(
            f"{type(backbone).__name__} backbones have no published checkpoints; SpineNet ones do."
        )
    source = SourceCheckpoint(checkpoint)
    rule, is_weight = SOURCE_FORMATS[source_format]
    pairs, owned = rule(model, backbone, source, modules)
    mapped = {key for pair in pairs for key in pair.keys.values()}
    unmapped = sorted(set(owned) - mapped)
    if unmapped:
        raise ModelError(
            f"{len(unmapped)} variables of the checkpoint's {modules} have no counterpart in this model: "
            f"{listing(unmapped)}."
        )
    others = sorted(set(source.shapes) - set(owned))
    unused = {
        "other model parts": [key for key in others if is_weight(key)],
        "training state (step, optimizer)": [key for key in others if not is_weight(key)],
    }
    return assign(model, pairs, source, source_format, modules, unused)


def reference_config(config, source_format, overrides=()):
    """The experiment `config` (a name or YAML path) as a checkpoint of `source_format` needs it:
    the format's settings for its task (`FORMAT_OVERRIDES`), float32, then `overrides`."""
    from spinenet_tf.training.config import load_config

    check_choice("source format", source_format, SOURCE_FORMATS)
    task_key = load_config(config, overrides).model.task_key
    return load_config(
        config, [*FORMAT_OVERRIDES[source_format][task_key], "runtime.mixed_precision=float32", *overrides]
    )


def convert_checkpoint(checkpoint, source_format, config, out=None, modules="all", overrides=()):
    """(model, report): the experiment `config`'s model with the checkpoint loaded, saved to `out`.

    `config` is an experiment name or YAML path naming the architecture the checkpoint
    was trained with (e.g. "retinanet/spinenet49_coco", "classification/spinenet49_imagenet"),
    made as the source format needs it (`reference_config`, with `overrides` "key=value").
    The model is float32; `out` is a `.keras` file.
    """
    from spinenet_tf.training.trainer import build_model

    check_choice("source format", source_format, SOURCE_FORMATS)
    if out is not None and not str(out).endswith(".keras"):
        raise ModelError(f"--out {out}: the converted model is a Keras file; name it *.keras.")
    experiment = reference_config(config, source_format, overrides)
    policy = keras.config.dtype_policy()  # build_model sets the global policy: put it back
    try:
        model = build_model(experiment)
    finally:
        keras.config.set_dtype_policy(policy)
    report = load_reference_checkpoint(model, checkpoint, source_format, modules)
    if out is not None:
        model.save(out)
    return model, report
