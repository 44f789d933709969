"""Training and evaluation of an experiment (detector or classifier): `spinenet train` / `spinenet eval`.

`fit` runs in whole checkpoint intervals (one Keras epoch = `checkpoint_interval` steps)
and each interval ends with a checkpoint of weights, optimizer state and step (see
`checkpoints.py`: written aside and renamed into place, so a write cut short never
replaces the last good one). On start, the latest checkpoint in the model dir is restored
and training continues from its step on the same learning-rate curve. A fresh run with
`model.init_checkpoint` starts from those weights instead (see `initialize.py`).
"""

import collections
import dataclasses
import json
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf
import yaml

from spinenet_tf.builders import build_task, predicts_masks
from spinenet_tf.data.classification import (
    classification_eval_dataset,
    classification_source,
    classification_train_dataset,
)
from spinenet_tf.data.coco import category_names, load_annotations
from spinenet_tf.data.pipeline import eval_dataset, make_source, train_dataset, unpad
from spinenet_tf.data.synthetic import write_synthetic_coco
from spinenet_tf.data.synthetic_classification import SUMMARY_FILE as SYNTHETIC_CLASSIFICATION_SUMMARY
from spinenet_tf.data.synthetic_classification import write_synthetic_classification
from spinenet_tf.errors import ConfigError, DataError, SpineNetError
from spinenet_tf.evaluation import CocoEvaluator
from spinenet_tf.training.checkpoints import CheckpointDirectory
from spinenet_tf.training.config import load_config, resolve_steps, to_dict
from spinenet_tf.training.distribute import make_distribution
from spinenet_tf.training.initialize import initialize_from, load_init_source
from spinenet_tf.training.schedule import WarmupCosineDecay, WarmupStepDecay
from spinenet_tf.viz.detections import draw_ground_truth_and_detections

# Val images drawn into TensorBoard at each evaluation (ground truth | detections).
NUM_EVAL_IMAGES = 4
EVAL_IMAGE_MIN_SCORE = 0.3


# A classifier run's class names (label i is name i), for `spinenet predict` and exports.
CLASS_NAMES_FILE = "class_names.json"


def run_class_names(model_dir):
    """The class names a classifier run was trained with (its image folders), or None."""
    path = os.path.join(model_dir, CLASS_NAMES_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


class TrainingDiverged(SpineNetError, RuntimeError):
    """The loss became NaN or infinite."""


def ensure_synthetic_dataset(config):
    """Writes the synthetic dataset named in `data.synthetic` when it is missing or incomplete."""
    data = config.data
    if data.synthetic is None:
        return
    arguments = dict(data.synthetic)
    if config.model.is_classifier:
        complete = os.path.exists(os.path.join(arguments["out_dir"], SYNTHETIC_CLASSIFICATION_SUMMARY))
        write = write_synthetic_classification
    else:
        complete = all(not s.annotations or os.path.exists(s.annotations) for s in (data.train, data.val))
        write = write_synthetic_coco
    if not complete:
        print(f"writing the synthetic dataset to {arguments['out_dir']} ...", flush=True)
        write(**arguments)


def build_model(config):
    """The task model of `config` (build it inside the distribution's scope, then compile)."""
    keras.config.set_dtype_policy(config.runtime.mixed_precision)
    model_config = {
        "type": config.model.type,
        "backbone": config.model.backbone,
        "num_classes": config.model.num_classes,
    }
    model_config.update(config.model.task_arguments)
    model = build_task(model_config, config.data.image_size, config.runtime.sync_batch_norm)
    if config.model.freeze_backbone:
        model.backbone.trainable = False  # Keras 3: frozen BN also stops updating its statistics
    return model


def make_optimizer(config):
    train, optimizer = config.train, config.train.optimizer
    learning_rate = optimizer.learning_rate * train.batch_size / optimizer.base_batch_size
    warmup_steps = resolve_steps(optimizer.warmup_steps, train.total_steps)
    if optimizer.schedule == "cosine":
        schedule = WarmupCosineDecay(
            learning_rate, train.total_steps, warmup_steps, optimizer.warmup_start_factor
        )
    else:
        schedule = WarmupStepDecay(
            learning_rate,
            warmup_steps,
            optimizer.warmup_start_factor,
            [resolve_steps(step, train.total_steps) for step in optimizer.decay_steps],
            optimizer.decay_factor,
        )
    if optimizer.type == "adamw":
        return keras.optimizers.AdamW(
            schedule, weight_decay=optimizer.weight_decay, global_clipnorm=optimizer.global_clipnorm
        )
    return keras.optimizers.SGD(
        schedule, momentum=optimizer.momentum, global_clipnorm=optimizer.global_clipnorm
    )


def _duration(seconds):
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class TrainingProgress(keras.callbacks.Callback):
    """Per step: the progress line (step k of total_steps, ETA, loss, images/s), loss,
    learning rate and images/s to TensorBoard, and a stop naming the step when the loss is
    NaN or infinite. At each interval's end: a checkpoint.

    Keras epochs here are checkpoint intervals, so Keras' own "Epoch k/N" bar would count
    those; this one counts steps. `verbose`: 0 silent, 1 a line updated in place (ended at
    each checkpoint), 2 one line per checkpoint (for log files).
    """

    def __init__(self, checkpoints, interval, total_steps, batch_size, log_dir=None, verbose=1):
        super().__init__()
        self.checkpoints, self.interval, self.total_steps = checkpoints, interval, total_steps
        self.batch_size, self.verbose = batch_size, verbose
        self.writer = tf.summary.create_file_writer(log_dir) if log_dir else None
        self.epoch, self.step_ends, self.last_shown = 0, collections.deque(maxlen=21), 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        step = self.epoch * self.interval + batch + 1
        loss = float(logs["loss"])
        if not np.isfinite(loss):
            raise TrainingDiverged(
                f"loss became {loss} at step {step}; stopping. The last good checkpoint is kept: "
                f"{self.checkpoints.latest or 'none yet'}. "
                "Lower train.optimizer.learning_rate or check the data."
            )
        self.step_ends.append(time.perf_counter())
        # A window of recent steps: the first step after a start includes tracing, a save is not training.
        step_time = None
        if len(self.step_ends) > 1:
            step_time = (self.step_ends[-1] - self.step_ends[0]) / (len(self.step_ends) - 1)
        if self.writer:
            learning_rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            with self.writer.as_default(step=step):
                tf.summary.scalar("loss", loss)
                tf.summary.scalar("learning_rate", learning_rate)
                if step_time:
                    tf.summary.scalar("images_per_second", self.batch_size / step_time)
        self._show(step, loss, step_time)

    def _show(self, step, loss, step_time):
        interval_end = step % self.interval == 0
        now = time.perf_counter()
        if self.verbose == 0 or (self.verbose == 2 and not interval_end):
            return
        if self.verbose == 1 and not interval_end and now - self.last_shown < 0.2:
            return
        self.last_shown = now
        width = 24
        done = width * step // self.total_steps
        text = f"step {step}/{self.total_steps}"
        if self.verbose == 1:
            text += f" [{'=' * done}{'.' * (width - done)}]"
        if step_time and step < self.total_steps:
            text += f" ETA {_duration(step_time * (self.total_steps - step))}"
        text += f" - loss: {loss:.4f}"
        if step_time:
            text += f" - images/s: {self.batch_size / step_time:.1f}"
        if self.verbose == 1:
            sys.stdout.write("\r" + text.ljust(100) + ("\n" if interval_end else ""))
        else:
            sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def on_epoch_end(self, epoch, logs=None):
        self.checkpoints.save(self.model, (epoch + 1) * self.interval)
        self.step_ends.clear()  # the save is not training time


def _check_classes(config, source):
    if config.model.is_classifier:
        needed = source.num_classes_needed
        if needed is not None and needed > config.model.num_classes:
            raise ConfigError(
                f"model.num_classes: {config.model.num_classes} outputs cannot hold label {needed - 1} of "
                f"{source.report.source} (set num_classes to at least {needed})."
            )
        return
    if source.categories:
        largest = max(category["id"] for category in source.categories)
        if largest >= config.model.num_classes:
            raise ConfigError(
                f"model.num_classes: {config.model.num_classes} outputs cannot hold category id {largest} "
                f"(class ids are used as they are; set num_classes to at least {largest + 1})."
            )


def _training_dataset(config):
    """(the training tf.data.Dataset, its source: whose report counts the problems met)."""
    if config.model.is_classifier:
        dataset, source = _classification_training_dataset(config)
    else:
        dataset, source = _detection_training_dataset(config)
    options = tf.data.Options()
    # Workers of a multi-worker run take alternate per-replica slices of each global batch.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options), source


def _classification_training_dataset(config):
    data = config.data
    source = classification_source(data.train)
    _check_classes(config, source)
    dataset = classification_train_dataset(
        source,
        data.image_size,
        config.train.batch_size,
        flip=data.flip,
        shuffle_buffer=data.shuffle_buffer,
        cache=data.cache,
        area_range=data.crop_area_range,
    )
    return dataset, source


def _detection_training_dataset(config):
    split = config.data.train
    data = config.data
    with_masks = predicts_masks(config.model.type, config.model.detector)
    source = make_source(split, check_masks=with_masks or data.copy_paste_probability > 0)
    if source.num_boxes == 0:
        raise DataError(
            f"{split.annotations}: the training split (data.train) has no boxes to learn from; a model "
            "trained on it would only learn background. Check the annotations file."
        )
    _check_classes(config, source)
    dataset = train_dataset(
        source,
        data.image_size,
        config.train.batch_size,
        data.max_boxes,
        data.scale_range,
        data.flip,
        data.copy_paste_probability,
        data.shuffle_buffer,
        data.cache,
        mask_crop_size=data.mask_crop_size if with_masks else None,
    )
    return dataset, source


def _checkpoints(config, model_dir, write=True):
    return CheckpointDirectory(os.path.join(model_dir, "checkpoints"), config.train.keep_checkpoints, write)


def train(config, model_dir, verbose=1):
    """Trains (resuming from `model_dir` when it holds a checkpoint), then evaluates.

    `verbose`: the progress display (see `TrainingProgress`). Returns the COCO metrics
    (None on the non-chief workers of a multi-worker run).
    """
    distribution = make_distribution(config.runtime)  # first: multi-worker TF must start before any op
    os.makedirs(model_dir, exist_ok=True)
    keras.utils.set_random_seed(config.runtime.seed)
    replicas = distribution.num_replicas
    if config.train.batch_size % replicas:
        raise ConfigError(
            f"train.batch_size: {config.train.batch_size} is not divisible by the {replicas} "
            f"replicas of runtime.strategy={config.runtime.strategy}."
        )
    print(
        f"strategy {distribution.name}: {replicas} replicas, global batch {config.train.batch_size}",
        flush=True,
    )
    if distribution.is_chief:
        ensure_synthetic_dataset(config)
        with open(os.path.join(model_dir, "config.yaml"), "w") as f:
            yaml.safe_dump(to_dict(config), f, sort_keys=False)
    dataset, source = _training_dataset(config)
    if distribution.is_chief and getattr(source, "class_names", None):
        with open(os.path.join(model_dir, CLASS_NAMES_FILE), "w") as f:
            json.dump(list(source.class_names), f)

    checkpoints = _checkpoints(config, model_dir, write=distribution.is_chief)
    with distribution.scope():
        model = build_model(config)
        model.compile(
            optimizer=make_optimizer(config),
            cross_replica_sum=distribution.cross_replica_sum,
            jit_compile=config.runtime.jit_compile,
        )
        restored = checkpoints.restore(model)
    step = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    interval, total_steps = config.train.checkpoint_interval, config.train.total_steps
    if restored:
        print(f"resuming from {restored} at step {step}", flush=True)
    elif config.model.init_checkpoint:
        init_source = load_init_source(config.model.init_checkpoint)  # outside the scope: not replicated
        with distribution.scope():
            report = initialize_from(model, init_source, config.model.init_modules)
        modules = ", ".join(config.model.init_modules)
        print(f"initialised {modules} from {config.model.init_checkpoint}: {report}", flush=True)
    if step < total_steps:
        log_dir = os.path.join(model_dir, "logs", "train") if distribution.is_chief else None
        progress = TrainingProgress(
            checkpoints, interval, total_steps, config.train.batch_size, log_dir, verbose
        )
        model.fit(
            dataset,
            epochs=total_steps // interval,
            initial_epoch=step // interval,
            steps_per_epoch=interval,
            callbacks=[progress],
            verbose=0,
            shuffle=False,
        )
        if source.report.counts:  # problems met while reading (TFRecord masks are only seen then)
            print(source.report.summary(), flush=True)
    if not distribution.is_chief:
        return None
    if replicas > 1:  # evaluate on one device, whatever the val batch sizes
        distribution.release()
        return evaluate(config, model_dir)
    return evaluate(config, model_dir, model)


def load_trained_model(model_dir, config_path=None, checkpoint=None):
    """(float32 detector with a run's latest or given checkpoint, its config, the checkpoint path).

    The config is the run's resolved `config.yaml` unless `config_path` is given. The
    model is float32 whatever the run's mixed precision: for export and inference.
    """
    config = load_config(config_path or run_config_path(model_dir))
    runtime = dataclasses.replace(config.runtime, mixed_precision="float32", sync_batch_norm=False)
    config = dataclasses.replace(config, runtime=runtime)
    model = build_model(config)
    path = _checkpoints(config, model_dir).restore_weights(model, checkpoint)
    return model, config, path


def run_config_path(model_dir):
    """The resolved config.yaml a training run writes into its model dir."""
    path = os.path.join(model_dir, "config.yaml")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found: not a training run's model dir? Give its experiment with --config."
        )
    return path


def _ground_truth(annotations, image_ids):
    """{image id: {"boxes" [K, 4] ymin, xmin, ymax, xmax pixels, "classes" [K]}} for `image_ids`."""
    wanted = {int(image_id): ([], []) for image_id in image_ids}
    for annotation in annotations["annotations"]:
        if annotation["image_id"] in wanted:
            x, y, width, height = annotation["bbox"]
            wanted[annotation["image_id"]][0].append([y, x, y + height, x + width])
            wanted[annotation["image_id"]][1].append(annotation["category_id"])
    return {
        image_id: {
            "boxes": np.reshape(np.asarray(boxes, np.float32), (-1, 4)),
            "classes": np.asarray(classes),
        }
        for image_id, (boxes, classes) in wanted.items()
    }


def _eval_images(examples, annotations_file, min_score=EVAL_IMAGE_MIN_SCORE):
    """[N, H, W, 3] uint8: each example's ground truth and detections side by side, padded to one size."""
    annotations = load_annotations(annotations_file)  # read once for the boxes and the names
    ground_truth = _ground_truth(annotations, [image_id for image_id, _, _ in examples])
    names = category_names(annotations)
    pictures = [
        np.asarray(draw_ground_truth_and_detections(photo, ground_truth[image_id], found, names, min_score))
        for image_id, photo, found in examples
    ]
    height, width = max(p.shape[0] for p in pictures), max(p.shape[1] for p in pictures)
    batch = np.zeros((len(pictures), height, width, 3), np.uint8)
    for picture, canvas in zip(pictures, batch):
        canvas[: picture.shape[0], : picture.shape[1]] = picture
    return batch


def _per_class_table(per_class_ap):
    width = max(len(name) for name in per_class_ap)
    rows = [
        f"{name:<{width}}  {'n/a (no ground truth)' if ap < 0 else f'{ap:.3f}'}"
        for name, ap in per_class_ap.items()
    ]
    return "\n".join([f"{'category':<{width}}  AP", *rows])


def evaluate(config, model_dir, model=None):
    """The val split's metrics (COCO for a detector, top-1 / top-k for a classifier), printed
    and written to metrics.json and TensorBoard.

    A detector's evaluation also writes, under logs/eval, a few val images with ground truth
    and detections side by side. Without `model`, the latest checkpoint in `model_dir` is
    loaded into a fresh one.
    """
    if model is None:
        ensure_synthetic_dataset(config)
        model = build_model(config)
        model.compile(optimizer=make_optimizer(config))
        if not _checkpoints(config, model_dir).restore(model):
            raise FileNotFoundError(f"No checkpoint in {os.path.join(model_dir, 'checkpoints')} to evaluate.")
    if config.model.is_classifier:
        return _evaluate_classifier(config, model_dir, model)
    return _evaluate_detector(config, model_dir, model)


def _write_metrics(model_dir, model, metrics, details, tensorboard_prefix):
    """metrics.json ({"step", **metrics, **details}) and the metrics as TensorBoard scalars."""
    step = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    with open(os.path.join(model_dir, "metrics.json"), "w") as f:
        json.dump({"step": step, **metrics, **details}, f, indent=2)
    writer = tf.summary.create_file_writer(os.path.join(model_dir, "logs", "eval"))
    with writer.as_default(step=step):
        for name, value in metrics.items():
            tf.summary.scalar(f"{tensorboard_prefix}/{name}", value)
    return writer, step


def _evaluate_classifier(config, model_dir, model):
    """Top-1 and top-k accuracy (k = min(5, classes)) of the val split's centre crops, and
    top-1 per class."""
    source = classification_source(config.data.val)
    dataset = classification_eval_dataset(
        source, config.data.image_size, config.eval.batch_size, model.image_converter.crop_fraction
    )
    logits_of = tf.function(lambda images: model(images, training=False))
    correct_top1, correct_topk, labels_seen = [], [], []
    for images, labels in dataset:
        logits = logits_of(images).numpy()
        ranked = np.argsort(-logits, axis=-1)[:, : model.top_k]
        labels = labels.numpy()
        correct_top1.append(ranked[:, 0] == labels)
        correct_topk.append((ranked == labels[:, None]).any(axis=-1))
        labels_seen.append(labels)
    if not labels_seen:
        raise DataError(f"{source.report.source}: the val split has no readable images to evaluate.")
    correct_top1, correct_topk = np.concatenate(correct_top1), np.concatenate(correct_topk)
    labels_seen = np.concatenate(labels_seen)
    metrics = {
        "top1": float(correct_top1.mean()),
        f"top{model.top_k}": float(correct_topk.mean()),
        "num_images": len(labels_seen),
    }
    names = source.class_names or [str(label) for label in range(model.num_classes)]
    per_class = {
        names[label] if label < len(names) else str(label): float(correct_top1[labels_seen == label].mean())
        for label in np.unique(labels_seen)
    }
    print(
        f"top-1 {metrics['top1']:.4f}  top-{model.top_k} {metrics[f'top{model.top_k}']:.4f}  "
        f"({len(labels_seen)} images)",
        flush=True,
    )
    width = max(len(name) for name in per_class)
    print(
        "\n".join([f"{'class':<{width}}  top-1", *(f"{n:<{width}}  {v:.3f}" for n, v in per_class.items())])
    )
    if source.report.counts:
        print(source.report.summary(), flush=True)
    _write_metrics(model_dir, model, metrics, {"per_class_top1": per_class}, "classification")
    return metrics


def _evaluate_detector(config, model_dir, model):
    split = config.data.val
    masks = getattr(model, "include_mask", False)
    evaluator = CocoEvaluator(split.annotations, iou_types=("bbox", "segm") if masks else ("bbox",))
    examples = []  # (image id, photo, its detections) for TensorBoard
    for images, meta in eval_dataset(make_source(split), config.eval.batch_size):
        photos = unpad(images, meta["original_size"])
        detections = model.predict_on_batch(photos)
        image_ids = meta["image_id"].numpy()
        evaluator.update(image_ids, detections)
        for index in range(min(len(photos), NUM_EVAL_IMAGES - len(examples))):
            count = int(detections["num_detections"][index])
            found = {
                key: np.asarray(detections[key][index])[:count]
                for key in ("boxes", "scores", "classes", "masks")
                if key in detections
            }
            examples.append((int(image_ids[index]), photos[index], found))
    metrics, per_class_ap = evaluator.result(), evaluator.per_class_ap()
    print(evaluator.summary(), flush=True)
    print(_per_class_table(per_class_ap), flush=True)
    writer, step = _write_metrics(model_dir, model, metrics, {"per_class_AP": per_class_ap}, "coco")
    with writer.as_default(step=step):
        for name, value in per_class_ap.items():
            tf.summary.scalar(f"coco_per_class_AP/{name}", value)
        if examples:
            tf.summary.image(
                "ground_truth_vs_detections",
                _eval_images(examples, split.annotations),
                max_outputs=NUM_EVAL_IMAGES,
            )
    return metrics
