"""Experiment configs: YAML -> one typed dataclass tree, validated with errors that name the key.

`--set a.b=value` overrides are applied to the YAML tree before validation, so they get
the same checks. The model section's `backbone` and `detector` keys are constructor
arguments (see `builders.py`) and are checked against those signatures.
"""

import dataclasses
import inspect
import types
import typing

import yaml

from spinenet_tf.backbones.resnet import ResNet50Backbone
from spinenet_tf.backbones.spinenet import SpineNet
from spinenet_tf.builders import BACKBONES
from spinenet_tf.detection.retinanet import RetinaNet

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
OPTIMIZERS = ("sgd", "adamw")


@dataclasses.dataclass
class ModelConfig:
    backbone: dict = dataclasses.field(default_factory=lambda: {"type": "spinenet", "model_id": "49"})
    detector: dict = dataclasses.field(default_factory=dict)  # RetinaNet arguments
    num_classes: int = 91
    freeze_backbone: bool = False


@dataclasses.dataclass
class SplitConfig:
    """A COCO split (images + annotations) or TFRecord shards (tfrecord glob)."""

    images: str | None = None
    annotations: str | None = None
    tfrecord: str | None = None


@dataclasses.dataclass
class DataConfig:
    train: SplitConfig = dataclasses.field(default_factory=SplitConfig)
    val: SplitConfig = dataclasses.field(default_factory=SplitConfig)
    image_size: int = 640
    max_boxes: int = 100
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    copy_paste_probability: float = 0.0
    shuffle_buffer: int = 1000
    cache: bool = False
    synthetic: dict | None = None  # write_synthetic_coco arguments: generate the dataset if absent


@dataclasses.dataclass
class OptimizerConfig:
    type: str = "sgd"
    learning_rate: float = 0.08  # for base_batch_size; scaled linearly to the global batch
    base_batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 0.0  # AdamW's decoupled decay; SGD's L2 is model.detector.weight_decay
    global_clipnorm: float | None = 10.0
    warmup_steps: int = 500
    warmup_start_factor: float = 0.067
    decay_steps: tuple[int, ...] = ()
    decay_factor: float = 0.1


@dataclasses.dataclass
class TrainConfig:
    batch_size: int = 64  # global, over all replicas
    total_steps: int = 10000
    checkpoint_interval: int = 500
    keep_checkpoints: int = 3
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)


@dataclasses.dataclass
class EvalConfig:
    batch_size: int = 8


@dataclasses.dataclass
class RuntimeConfig:
    strategy: str = "default"
    mixed_precision: str = "float32"
    jit_compile: bool = False
    sync_batch_norm: bool = False
    tpu: str | None = None
    seed: int = 0


@dataclasses.dataclass
class ExperimentConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)


class ConfigError(ValueError):
    """A config problem; the message starts with the dotted key."""


def _type_name(annotation):
    return getattr(annotation, "__name__", str(annotation)).replace("NoneType", "null")


def _convert(value, annotation, key):
    """`value` checked against (and lightly coerced to) the field's type annotation."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, key)
            except ConfigError as error:
                errors.append(error)
        raise errors[0]
    if dataclasses.is_dataclass(annotation):
        return _from_dict(annotation, value, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}.")
        item_types = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        if len(item_types) != len(value):
            raise ConfigError(f"{key}: expected {len(item_types)} values, got {len(value)}.")
        return tuple(_convert(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, item_types)))
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    expected = dict if annotation is dict else annotation
    if not isinstance(value, expected) or (annotation in (int, float) and isinstance(value, bool)):
        raise ConfigError(
            f"{key}: expected {_type_name(annotation)}, got {value!r} ({type(value).__name__})."
        )
    return value


def _from_dict(cls, data, prefix):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}.")
    fields = {field.name: field for field in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"{where}{unknown[0]}: unknown key; allowed keys here are {sorted(fields)}.")
    hints = typing.get_type_hints(cls)
    values = {
        name: _convert(value, hints[name], f"{prefix}.{name}" if prefix else name)
        for name, value in data.items()
    }
    return cls(**values)


def _choice(key, value, allowed):
    if value not in allowed:
        raise ConfigError(f"{key}: {value!r} is not one of the allowed values {list(allowed)}.")


def _accepted_arguments(cls):
    return [name for name in inspect.signature(cls.__init__).parameters if name not in ("self", "kwargs")]


def _check_arguments(key, values, cls, managed=()):
    allowed = [name for name in _accepted_arguments(cls) if name not in managed]
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: unknown key; allowed keys here are {sorted(allowed)}.")


def validate(config):
    """Cross-field checks; raises ConfigError naming the key."""
    model, data, train, runtime = config.model, config.data, config.train, config.runtime
    backbone = dict(model.backbone)
    kind = backbone.pop("type", "spinenet")
    _choice("model.backbone.type", kind, sorted(BACKBONES))
    _check_arguments("model.backbone", backbone, {"spinenet": SpineNet, "resnet50": ResNet50Backbone}[kind],
                     managed=("image_shape",))  # fmt: skip
    _check_arguments("model.detector", model.detector, RetinaNet, managed=("backbone", "num_classes"))
    if model.num_classes < 2:
        raise ConfigError(
            f"model.num_classes: must be >= 2 (class 0 is background), got {model.num_classes}."
        )
    min_level = model.detector.get("min_level", 3)
    max_level = model.detector.get("max_level", 7)
    if min_level > max_level:
        raise ConfigError(f"model.detector.min_level: {min_level} is greater than max_level {max_level}.")
    if data.image_size <= 0 or data.image_size % 2**max_level:
        raise ConfigError(
            f"data.image_size: {data.image_size} is not a positive multiple of 2**max_level = {2**max_level}."
        )
    low, high = data.scale_range
    if not 0 < low <= high:
        raise ConfigError(f"data.scale_range: need 0 < low <= high, got {list(data.scale_range)}.")
    if not 0.0 <= data.copy_paste_probability <= 1.0:
        raise ConfigError(
            f"data.copy_paste_probability: must be in [0, 1], got {data.copy_paste_probability}."
        )
    for name in ("train", "val"):
        split = getattr(data, name)
        if split.tfrecord is None and (split.images is None or split.annotations is None):
            raise ConfigError(f"data.{name}: give 'images' and 'annotations' (COCO) or 'tfrecord' (a glob).")
    counts = {
        "train.batch_size": train.batch_size,
        "train.total_steps": train.total_steps,
        "train.checkpoint_interval": train.checkpoint_interval,
        "train.keep_checkpoints": train.keep_checkpoints,
        "eval.batch_size": config.eval.batch_size,
        "data.max_boxes": data.max_boxes,
    }
    for key, value in counts.items():
        if value < 1:
            raise ConfigError(f"{key}: must be >= 1, got {value}.")
    if train.total_steps % train.checkpoint_interval:
        raise ConfigError(
            f"train.checkpoint_interval: {train.checkpoint_interval} does not divide train.total_steps "
            f"{train.total_steps} (checkpoints fall on whole intervals)."
        )
    optimizer = train.optimizer
    _choice("train.optimizer.type", optimizer.type, OPTIMIZERS)
    if list(optimizer.decay_steps) != sorted(optimizer.decay_steps):
        raise ConfigError(f"train.optimizer.decay_steps: must increase, got {list(optimizer.decay_steps)}.")
    _choice("runtime.strategy", runtime.strategy, STRATEGIES)
    _choice("runtime.mixed_precision", runtime.mixed_precision, PRECISIONS)
    return config


def _apply_override(tree, assignment):
    key, separator, raw = assignment.partition("=")
    if not separator or not key:
        raise ConfigError(f"--set {assignment!r}: expected key=value, e.g. train.total_steps=100.")
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: {part!r} is not a section.")
    node[parts[-1]] = yaml.safe_load(raw)


def load_config(path=None, overrides=()):
    """ExperimentConfig from a YAML file (or defaults) plus `key=value` overrides."""
    tree = {}
    if path is not None:
        try:
            with open(path) as f:
                tree = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from None
    for assignment in overrides:
        _apply_override(tree, assignment)
    return validate(_from_dict(ExperimentConfig, tree, ""))


def to_dict(config):
    return dataclasses.asdict(config)
