"""Starting a fresh run from existing weights: `model.init_checkpoint` and `model.init_modules`.

Weights are matched by path (`layer name/weight name`, the task's backbone under
`backbone/`) and checked by shape, so a checkpoint of another architecture is refused with
the weights that differ rather than half-loaded. Values are assigned into the variables of
the model the trainer built, which keeps working inside a `tf.distribute` scope.
"""

import dataclasses
import os

import keras

from spinenet_tf.errors import ConfigError, SpineNetError

# The class predictors whose shape follows num_classes: RetinaNet's (`detection/head.py`) and
# ImageClassifier's.
CLASS_PREDICTORS = ("class_net_predict", "logits")
SHOWN_PROBLEMS = 5


@dataclasses.dataclass(frozen=True)
class InitReport:
    """The weight paths `initialize_from` loaded, and those that kept their fresh initialisation."""

    loaded: tuple[str, ...]
    reinitialised: tuple[str, ...]

    def summary(self):
        text = f"{len(self.loaded)} weights loaded, {len(self.reinitialised)} re-initialised"
        if self.reinitialised:
            text += f" ({', '.join(self.reinitialised)}: num_classes differs from the checkpoint's)"
        return text

    __str__ = summary


def named_weights(model, backbone=None):
    """{path: variable} of a model: `layer name/weight name`, a task's backbone under `backbone/`.

    Every weighted layer is named by the architecture, so two models of one config (built in
    one process, loaded from a file) give the same paths whatever their own model names.
    A task made of networks (Mask R-CNN's dense network and heads) names the layers inside them.
    """
    backbone = backbone or getattr(model, "backbone", None)
    found = {}
    for layer in model.layers:
        if layer is backbone:
            found.update({f"backbone/{path}": weight for path, weight in named_weights(layer).items()})
        elif isinstance(layer, keras.Model):
            found.update(named_weights(layer, backbone))
        else:
            found.update({f"{layer.name}/{weight.name}": weight for weight in layer.weights})
    return found


def _backbone_weights(model):
    """`named_weights` of a task's backbone, or of a bare backbone, under the same `backbone/` paths."""
    backbone = getattr(model, "backbone", model)
    return {f"backbone/{path}": weight for path, weight in named_weights(backbone).items()}


def _problems(weights, source_weights, keep_fresh):
    """What stops `source_weights` from filling `weights`, one phrase each."""
    problems = [f"{path}: not in the checkpoint" for path in weights if path not in source_weights]
    problems += [f"{path}: only in the checkpoint" for path in source_weights if path not in weights]
    problems += [
        f"{path}: shape {tuple(weight.shape)} here, {tuple(source_weights[path].shape)} in the checkpoint"
        for path, weight in weights.items()
        if path in source_weights
        and path not in keep_fresh
        and tuple(weight.shape) != tuple(source_weights[path].shape)
    ]
    return problems


def initialize_from(model, source_model, modules):
    """Copies `source_model`'s weights into `model` for `modules` ("backbone",) or ("all",).

    `source_model` is a task model or, for ("backbone",), a bare backbone. With ("all",)
    the class predictor keeps its fresh initialisation (the prior-probability bias) when its
    shape differs, i.e. another num_classes. Nothing is assigned unless every other weight
    matches; a mismatch is a ConfigError listing the weights. Returns an `InitReport`.
    """
    if tuple(modules) == ("all",):
        if getattr(source_model, "backbone", None) is None:
            raise ConfigError(
                "model.init_modules: [all] copies a whole task model, but model.init_checkpoint holds only "
                "a backbone; use [backbone]."
            )
        weights, source_weights = named_weights(model), named_weights(source_model)
        keep_fresh = {
            path
            for path, weight in weights.items()
            if path.split("/")[0] in CLASS_PREDICTORS
            and path in source_weights
            and tuple(weight.shape) != tuple(source_weights[path].shape)
        }
        keys = "model.backbone and model.detector (or model.classifier)"
    else:
        weights, source_weights = _backbone_weights(model), _backbone_weights(source_model)
        keep_fresh, keys = set(), "model.backbone"
    problems = _problems(weights, source_weights, keep_fresh)
    if problems:
        shown = "; ".join(problems[:SHOWN_PROBLEMS]) + ("; ..." if len(problems) > SHOWN_PROBLEMS else "")
        raise ConfigError(
            f"model.init_checkpoint: the checkpoint does not fit this model, {len(problems)} weights differ "
            f"({shown}). The experiment's {keys} must match the checkpoint's architecture."
        )
    loaded = [path for path in weights if path not in keep_fresh]
    for path in loaded:
        weights[path].assign(keras.ops.convert_to_numpy(source_weights[path]))
    return InitReport(tuple(loaded), tuple(sorted(keep_fresh)))


def load_init_source(init_checkpoint):
    """The model `init_checkpoint` names: a .keras file, a run's model dir, else a preset name.

    Paths are relative to the working directory. The global dtype policy is left as it was
    (loading a run builds its model in float32).
    """
    from spinenet_tf.training import trainer  # the trainer imports this module

    policy = keras.config.dtype_policy()
    try:
        if os.path.isfile(init_checkpoint):
            if not init_checkpoint.endswith(".keras"):
                raise ConfigError(
                    f"model.init_checkpoint: {init_checkpoint} is a file but not a .keras model (give a "
                    "training run's model dir rather than one of its checkpoint files)."
                )
            try:
                return keras.saving.load_model(init_checkpoint)
            except ValueError as error:  # not a Keras archive, or one of unknown classes
                raise ConfigError(f"model.init_checkpoint: {init_checkpoint}: {error}") from None
        if os.path.isdir(init_checkpoint):
            try:
                return trainer.load_trained_model(init_checkpoint)[0]
            except FileNotFoundError:
                raise ConfigError(
                    f"model.init_checkpoint: {init_checkpoint} is a directory but not a training run with a "
                    "checkpoint (a run's model dir holds config.yaml and checkpoints/ckpt-<step>/)."
                ) from None
        from spinenet_tf.pretrained.presets import preset_weights  # needed only for a preset name

        try:
            return preset_weights(init_checkpoint)
        except (SpineNetError, OSError) as error:
            raise ConfigError(
                f"model.init_checkpoint: {init_checkpoint!r} is not a file or directory (relative to "
                f"{os.getcwd()}), and as a preset name: {' '.join(str(error).split())}"
            ) from None
    finally:
        keras.config.set_dtype_policy(policy)
