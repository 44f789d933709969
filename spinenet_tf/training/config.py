"""Experiment configs: YAML -> one typed dataclass tree, validated with errors that name the key.

`--set a.b=value` overrides are applied to the YAML tree before validation, so they get
the same checks. The model section's `backbone` and `detector` (or `classifier`) keys
are constructor arguments, checked by `builders.py` (the module that builds them) before anything is built.
Experiments ship inside the package (`spinenet_tf/experiments/`), so `--config synthetic`
works wherever the package is installed.
"""

import dataclasses
import os
import types
import typing

import yaml

from spinenet_tf import builders
from spinenet_tf.cache import cache_dir
from spinenet_tf.data.synthetic import write_synthetic_coco
from spinenet_tf.data.synthetic_classification import write_synthetic_classification
from spinenet_tf.errors import ConfigError

EXPERIMENTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")
DEFAULT_EXPERIMENT = "retinanet/synthetic"
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine")
INIT_MODULES = (("backbone",), ("all",))


@dataclasses.dataclass
class ModelConfig:
    type: str = "retinanet"  # or "maskrcnn" (Mask / Faster / Cascade R-CNN), "classifier"
    backbone: dict = dataclasses.field(default_factory=lambda: {"type": "spinenet", "model_id": "49"})
    detector: dict = dataclasses.field(default_factory=dict)  # RetinaNet / MaskRCNN arguments
    classifier: dict = dataclasses.field(default_factory=dict)  # ImageClassifier arguments
    num_classes: int = 91
    freeze_backbone: bool = False
    # Starting weights of a fresh run (see `initialize.py`): a .keras file, a run's model dir or
    # a preset name. A resumed run starts from its own checkpoint instead.
    init_checkpoint: str | None = None
    # What init_checkpoint fills: ["backbone"], or ["all"] (the class predictor stays fresh
    # when num_classes differs). A plain string is taken as a one-item list.
    init_modules: tuple[str, ...] | str = ("backbone",)

    def __post_init__(self):
        if isinstance(self.init_modules, str):
            self.init_modules = (self.init_modules,)

    @property
    def is_classifier(self):
        return self.type in builders.CLASSIFIERS

    @property
    def task_key(self):
        """The section holding the task model's own arguments."""
        return "classifier" if self.is_classifier else "detector"

    @property
    def task_arguments(self):
        return self.classifier if self.is_classifier else self.detector


@dataclasses.dataclass
class SplitConfig:
    """Detection: a COCO split (images + annotations) or TFRecord shards (tfrecord glob).
    Classification: a folder of class folders (images) or TFRecord shards (tfrecord glob)."""

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
    # Side of each object's mask cropped to its box, in the labels of detectors with masks
    # (Model Garden's mask_crop_size).
    mask_crop_size: int = 112
    # Classification's Inception-style training crop: its share of the image's area.
    crop_area_range: tuple[float, float] = (0.08, 1.0)
    # write_synthetic_coco (detectors) or write_synthetic_classification (classifiers)
    # arguments: the dataset is written if absent. Without out_dir it goes to a cache
    # directory, and train/val default to its splits.
    synthetic: dict | None = None


@dataclasses.dataclass
class OptimizerConfig:
    type: str = "sgd"
    learning_rate: float = 0.08  # for base_batch_size; scaled linearly to the global batch
    base_batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 0.0  # AdamW's decoupled decay; SGD's L2 is model.detector.weight_decay
    global_clipnorm: float | None = 10.0
    # Steps: an integer is a step count, a float in (0, 1) a fraction of train.total_steps
    # (so a shorter or longer run keeps the curve's shape).
    warmup_steps: int | float = 500
    warmup_start_factor: float = 0.067
    # After warm-up: "step" (x decay_factor at each of decay_steps) or "cosine" (a half
    # cosine from learning_rate to 0 at train.total_steps).
    schedule: str = "step"
    decay_steps: tuple[int | float, ...] = ()
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


# Constructor arguments the app sets itself, and the config key that sets them.
MANAGED_BACKBONE_ARGUMENTS = {"image_shape": "data.image_size", "sync_batch_norm": "runtime.sync_batch_norm"}
MANAGED_TASK_ARGUMENTS = {
    "backbone": "model.backbone",
    "num_classes": "model.num_classes",
    "sync_batch_norm": "runtime.sync_batch_norm",
}


def _check_constructor_keys(key, values, function, managed):
    for name in values:
        if name in managed:
            raise ConfigError(f"{key}.{name}: set by {managed[name]}; remove it here.")
    builders.check_arguments(function, values, key, managed, error=ConfigError)


def _check_model(model, image_size):
    backbone = {name: value for name, value in model.backbone.items() if name != "type"}
    cls = builders.backbone_class(model.backbone, "model.backbone", error=ConfigError)
    _check_constructor_keys("model.backbone", backbone, cls, MANAGED_BACKBONE_ARGUMENTS)
    task = builders.task_class(model.type, error=ConfigError)
    other_key = "detector" if model.is_classifier else "classifier"
    if getattr(model, other_key):
        raise ConfigError(
            f"model.{other_key}: a {model.type} model takes its arguments in model.{model.task_key}; "
            f"move them there or remove model.{other_key}."
        )
    _check_constructor_keys(f"model.{model.task_key}", model.task_arguments, task, MANAGED_TASK_ARGUMENTS)
    if model.init_modules not in INIT_MODULES:
        raise ConfigError(
            f"model.init_modules: {list(model.init_modules)} is not one of the allowed values "
            f"{[list(modules) for modules in INIT_MODULES]}."
        )
    if model.num_classes < 2:
        raise ConfigError(f"model.num_classes: must be >= 2, got {model.num_classes}.")
    if image_size <= 0:
        raise ConfigError(f"data.image_size: must be positive, got {image_size}.")
    if model.is_classifier:
        return  # any input size: a classifier's backbone resizes between levels as needed
    detector_defaults = builders.constructor_arguments(task)
    min_level = model.detector.get("min_level", detector_defaults["min_level"])
    max_level = model.detector.get("max_level", detector_defaults["max_level"])
    if min_level > max_level:
        raise ConfigError(f"model.detector.min_level: {min_level} is greater than max_level {max_level}.")
    try:
        multiple = builders.input_size_multiple(model.backbone)
    except ValueError as error:  # an impossible block table or levels
        raise ConfigError(f"model.backbone: {error}") from None
    if image_size % multiple:
        below, above = image_size // multiple * multiple, (image_size // multiple + 1) * multiple
        nearest = f"{below} or {above}" if below > 0 else str(above)
        raise ConfigError(
            f"data.image_size: {image_size} is not a multiple of {multiple}, which this detector's "
            f"{model.backbone.get('type', 'spinenet')} backbone needs for its anchors (its coarsest "
            f"stride); use {nearest}."
        )


def _check_weight_decay(model, optimizer):
    """L2 is given once: the task's weight_decay, AdamW's decoupled decay or a backbone regularizer."""
    task = builders.task_class(model.type, error=ConfigError)
    task_decay = model.task_arguments.get(
        "weight_decay", builders.constructor_arguments(task)["weight_decay"]
    )
    key = f"model.{model.task_key}.weight_decay"
    if optimizer.weight_decay and optimizer.type != "adamw":
        raise ConfigError(
            f"train.optimizer.weight_decay: only AdamW uses it (decoupled decay); with "
            f"{optimizer.type!r} the L2 penalty is {key}."
        )
    twice = [
        name
        for name, value in [
            ("train.optimizer.weight_decay", optimizer.weight_decay),
            ("model.backbone.kernel_regularizer", model.backbone.get("kernel_regularizer")),
        ]
        if value
    ]
    if task_decay and twice:
        given = "" if "weight_decay" in model.task_arguments else f", {task.__name__}'s default"
        raise ConfigError(
            f"{key} ({task_decay}{given}) and {twice[0]} both put L2 on the "
            "weights, so they would be decayed twice; set one of them to 0."
        )


def resolve_steps(value, total_steps):
    """A schedule step: an integer as it is, a float in (0, 1) as that fraction of `total_steps`."""
    return round(value * total_steps) if isinstance(value, float) else value


def _check_schedule(train):
    optimizer, total = train.optimizer, train.total_steps
    steps = [("train.optimizer.warmup_steps", optimizer.warmup_steps)]
    steps += [(f"train.optimizer.decay_steps[{i}]", step) for i, step in enumerate(optimizer.decay_steps)]
    for key, step in steps:
        if isinstance(step, float):
            if not 0.0 < step < 1.0:
                raise ConfigError(
                    f"{key}: {step} is neither a step count (an integer) nor a fraction of the run in (0, 1)."
                )
        elif key.endswith("warmup_steps") and not 0 <= step <= total:
            raise ConfigError(
                f"{key}: {step} is outside 0..train.total_steps ({total}); give a step count in that range "
                f"or a fraction of the run, e.g. 0.05."
            )
        elif not key.endswith("warmup_steps") and not 0 < step < total:
            raise ConfigError(
                f"{key}: step {step} is not inside the run (1..{total - 1}, train.total_steps={total}); "
                f"give a step count in that range or a fraction of the run, e.g. 0.9."
            )
    decays = [resolve_steps(step, total) for step in optimizer.decay_steps]
    if decays != sorted(decays):
        raise ConfigError(f"train.optimizer.decay_steps: must increase, got {list(optimizer.decay_steps)}.")


def _check_splits(model, data):
    for name in ("train", "val"):
        split = getattr(data, name)
        if model.is_classifier and split.images is None and split.tfrecord is None:
            raise ConfigError(
                f"data.{name}: give 'images' (a folder of class folders) or 'tfrecord' (a glob)."
            )
        if (
            not model.is_classifier
            and split.tfrecord is None
            and (split.images is None or split.annotations is None)
        ):
            raise ConfigError(f"data.{name}: give 'images' and 'annotations' (COCO) or 'tfrecord' (a glob).")
    if not model.is_classifier and not data.val.annotations:
        raise ConfigError("data.val.annotations: COCO evaluation needs the val split's annotations JSON.")
    low, high = data.crop_area_range
    if not 0 < low <= high <= 1:
        raise ConfigError(
            f"data.crop_area_range: need 0 < low <= high <= 1, got {list(data.crop_area_range)}."
        )


def validate(config):
    """Cross-field checks; raises ConfigError naming the key."""
    model, data, train, runtime = config.model, config.data, config.train, config.runtime
    _check_model(model, data.image_size)
    low, high = data.scale_range
    if not 0 < low <= high:
        raise ConfigError(f"data.scale_range: need 0 < low <= high, got {list(data.scale_range)}.")
    if not 0.0 <= data.copy_paste_probability <= 1.0:
        raise ConfigError(
            f"data.copy_paste_probability: must be in [0, 1], got {data.copy_paste_probability}."
        )
    _check_splits(model, data)
    counts = {
        "train.batch_size": train.batch_size,
        "train.total_steps": train.total_steps,
        "train.checkpoint_interval": train.checkpoint_interval,
        "train.keep_checkpoints": train.keep_checkpoints,
        "eval.batch_size": config.eval.batch_size,
        "data.max_boxes": data.max_boxes,
        "data.mask_crop_size": data.mask_crop_size,
    }
    for key, value in counts.items():
        if value < 1:
            raise ConfigError(f"{key}: must be >= 1, got {value}.")
    if train.total_steps % train.checkpoint_interval:
        raise ConfigError(
            f"train.checkpoint_interval: {train.checkpoint_interval} does not divide train.total_steps "
            f"{train.total_steps} (checkpoints fall on whole intervals)."
        )
    _choice("train.optimizer.type", train.optimizer.type, OPTIMIZERS)
    _choice("train.optimizer.schedule", train.optimizer.schedule, SCHEDULES)
    if train.optimizer.schedule == "cosine" and train.optimizer.decay_steps:
        raise ConfigError(
            "train.optimizer.decay_steps: a cosine schedule decays continuously; remove decay_steps "
            "or use schedule: step."
        )
    _check_schedule(train)
    _check_weight_decay(model, train.optimizer)
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


def experiment_names():
    """The experiments shipped in the package, e.g. "retinanet/synthetic"."""
    return sorted(
        os.path.relpath(os.path.join(folder, name), EXPERIMENTS_DIR)[: -len(".yaml")].replace(os.sep, "/")
        for folder, _, names in os.walk(EXPERIMENTS_DIR)
        for name in names
        if name.endswith(".yaml")
    )


def experiment_path(name_or_path):
    """A YAML file path as it is, or the file of a shipped experiment: "maskrcnn/synthetic",
    "experiments/maskrcnn/synthetic.yaml", or a bare name ("synthetic": the RetinaNet one
    where several tasks ship that name)."""
    name_or_path = os.fspath(name_or_path)
    if os.path.isfile(name_or_path):
        return name_or_path
    name = name_or_path.removesuffix(".yaml").removeprefix("spinenet_tf/").removeprefix("experiments/")
    matches = [known for known in experiment_names() if name in (known, known.rsplit("/", 1)[-1])]
    default_folder = DEFAULT_EXPERIMENT.split("/")[0] + "/"
    if len(matches) > 1:
        matches = [known for known in matches if known.startswith(default_folder)] or matches
    if len(matches) == 1:
        return os.path.join(EXPERIMENTS_DIR, *matches[0].split("/")) + ".yaml"
    raise ConfigError(
        f"config {name_or_path}: no such file, and not the name of a shipped experiment "
        f"({', '.join(experiment_names())})."
    )


def synthetic_cache_dir(writer, arguments):
    """Where the synthetic set that `writer` (its function name) makes from these arguments goes
    when no out_dir is given.

    A cache directory, not the working directory: the shipped default then trains the same
    way from any folder, and runs with the same arguments share one copy.
    """
    name = "-".join(f"{key}{value}" for key, value in sorted(arguments.items()))
    prefix = "synthetic-classification" if writer == "write_synthetic_classification" else "synthetic"
    return cache_dir(f"{prefix}-{name}")


def _complete_synthetic(model, data):
    """`data.synthetic` with its out_dir, and the splits that are not given pointed at its files."""
    if data.synthetic is None:
        return
    write = write_synthetic_classification if model.is_classifier else write_synthetic_coco
    builders.check_arguments(write, data.synthetic, "data.synthetic", error=ConfigError)
    out_dir = data.synthetic.get("out_dir") or synthetic_cache_dir(write.__name__, data.synthetic)
    data.synthetic = {**data.synthetic, "out_dir": str(out_dir)}
    for name in ("train", "val"):
        if getattr(data, name) == SplitConfig():
            if model.is_classifier:
                split = SplitConfig(images=os.path.join(out_dir, name))
            else:
                annotations = os.path.join(out_dir, "annotations", f"instances_{name}.json")
                split = SplitConfig(images=os.path.join(out_dir, name), annotations=annotations)
            setattr(data, name, split)


def load_config(name_or_path=DEFAULT_EXPERIMENT, overrides=()):
    """ExperimentConfig from a YAML file or a shipped experiment's name, plus `key=value` overrides."""
    path = experiment_path(name_or_path)
    try:
        with open(path) as f:
            tree = yaml.safe_load(f) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    for assignment in overrides:
        _apply_override(tree, assignment)
    config = _from_dict(ExperimentConfig, tree, "")
    _complete_synthetic(config.model, config.data)
    return validate(config)


def to_dict(config):
    return dataclasses.asdict(config)
