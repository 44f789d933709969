"""Training and evaluation of a RetinaNet experiment: `spinenet train` / `spinenet eval`.

`fit` runs in whole checkpoint intervals (one Keras epoch = `checkpoint_interval` steps)
and each interval ends with a checkpoint of weights, optimizer state and step (see
`checkpoints.py`: written aside and renamed into place, so a write cut short never
replaces the last good one). On start, the latest checkpoint in the model dir is restored
and training continues from its step on the same learning-rate curve.
"""

import collections
import dataclasses
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf
import yaml

from spinenet_tf.builders import build_backbone
from spinenet_tf.data.pipeline import coco_source, eval_dataset, tfrecord_source, train_dataset
from spinenet_tf.data.synthetic import write_synthetic_coco
from spinenet_tf.detection.retinanet import RetinaNet
from spinenet_tf.evaluation import CocoEvaluator
from spinenet_tf.training.checkpoints import CheckpointDirectory
from spinenet_tf.training.config import ConfigError, load_config, to_dict
from spinenet_tf.training.distribute import make_distribution
from spinenet_tf.training.schedule import WarmupStepDecay


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def ensure_synthetic_dataset(data):
    """Writes the synthetic dataset named in `data.synthetic` when its files are missing."""
    if data.synthetic is None:
        return
    missing = [
        s.annotations for s in (data.train, data.val) if s.annotations and not os.path.exists(s.annotations)
    ]
    if missing:
        arguments = dict(data.synthetic)
        print(f"writing the synthetic dataset to {arguments.get('out_dir')} ...", flush=True)
        write_synthetic_coco(**arguments)


def make_source(split):
    if split.tfrecord:
        return tfrecord_source(split.tfrecord)
    source = coco_source(split.images, split.annotations)
    print(source.report.summary(), flush=True)
    return source


def build_model(config):
    """The detector of `config` (build it inside the distribution's scope, then compile)."""
    keras.config.set_dtype_policy(config.runtime.mixed_precision)
    size = config.data.image_size
    backbone_config = {**config.model.backbone, "image_shape": [size, size, 3]}
    if config.runtime.sync_batch_norm and backbone_config.get("type", "spinenet") == "spinenet":
        backbone_config["sync_batch_norm"] = True
    detector_arguments = dict(config.model.detector)
    if config.runtime.sync_batch_norm:
        detector_arguments["sync_batch_norm"] = True
    model = RetinaNet(build_backbone(backbone_config), config.model.num_classes, **detector_arguments)
    if config.model.freeze_backbone:
        model.backbone.trainable = False  # Keras 3: frozen BN also stops updating its statistics
    return model


def make_optimizer(config):
    train, optimizer = config.train, config.train.optimizer
    schedule = WarmupStepDecay(
        optimizer.learning_rate * train.batch_size / optimizer.base_batch_size,
        optimizer.warmup_steps, optimizer.warmup_start_factor, optimizer.decay_steps, optimizer.decay_factor,
    )  # fmt: skip
    if optimizer.type == "adamw":
        return keras.optimizers.AdamW(schedule, weight_decay=optimizer.weight_decay,
                                      global_clipnorm=optimizer.global_clipnorm)  # fmt: skip
    return keras.optimizers.SGD(
        schedule, momentum=optimizer.momentum, global_clipnorm=optimizer.global_clipnorm
    )


class TrainingProgress(keras.callbacks.Callback):
    """Per step: images/s into the progress bar's logs, loss and learning rate to
    TensorBoard, and a stop naming the step when the loss is NaN or infinite. At each
    interval's end: a checkpoint. Keras epochs here are checkpoint intervals."""

    def __init__(self, checkpoints, interval, batch_size, log_dir=None):
        super().__init__()
        self.checkpoints, self.interval, self.batch_size = checkpoints, interval, batch_size
        self.writer = tf.summary.create_file_writer(log_dir) if log_dir else None
        self.epoch, self.step_ends = 0, collections.deque(maxlen=21)

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
        if len(self.step_ends) > 1:  # a window of recent steps: the first one includes tracing
            logs["images_per_second"] = (
                (len(self.step_ends) - 1) * self.batch_size / (self.step_ends[-1] - self.step_ends[0])
            )
        if self.writer:
            learning_rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            with self.writer.as_default(step=step):
                tf.summary.scalar("loss", loss)
                tf.summary.scalar("learning_rate", learning_rate)
                if "images_per_second" in logs:
                    tf.summary.scalar("images_per_second", logs["images_per_second"])

    def on_epoch_end(self, epoch, logs=None):
        self.checkpoints.save(self.model, (epoch + 1) * self.interval)
        self.step_ends.clear()  # the save is not training time


def _check_classes(config, source):
    if source.categories:
        largest = max(category["id"] for category in source.categories)
        if largest >= config.model.num_classes:
            raise ConfigError(
                f"model.num_classes: {config.model.num_classes} outputs cannot hold category id {largest} "
                f"(class ids are used as they are; set num_classes to at least {largest + 1})."
            )


def _training_dataset(config):
    source = make_source(config.data.train)
    _check_classes(config, source)
    data = config.data
    dataset = train_dataset(
        source, data.image_size, config.train.batch_size, data.max_boxes, data.scale_range, data.flip,
        data.copy_paste_probability, data.shuffle_buffer, data.cache,
    )  # fmt: skip
    options = tf.data.Options()
    # Workers of a multi-worker run take alternate per-replica slices of each global batch.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def _checkpoints(config, model_dir, write=True):
    return CheckpointDirectory(os.path.join(model_dir, "checkpoints"), config.train.keep_checkpoints, write)


def train(config, model_dir, verbose=1):
    """Trains (resuming from `model_dir` when it holds a checkpoint), then evaluates.

    Returns the COCO metrics (None on the non-chief workers of a multi-worker run).
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
    print(f"strategy {distribution.name}: {replicas} replicas, global batch "
          f"{config.train.batch_size}", flush=True)  # fmt: skip
    if distribution.is_chief:
        ensure_synthetic_dataset(config.data)
        with open(os.path.join(model_dir, "config.yaml"), "w") as f:
            yaml.safe_dump(to_dict(config), f, sort_keys=False)
    dataset = _training_dataset(config)

    checkpoints = _checkpoints(config, model_dir, write=distribution.is_chief)
    with distribution.scope():
        model = build_model(config)
        model.compile(optimizer=make_optimizer(config), cross_replica_sum=distribution.cross_replica_sum,
                      jit_compile=config.runtime.jit_compile)  # fmt: skip
        restored = checkpoints.restore(model)
    step = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    interval = config.train.checkpoint_interval
    if restored:
        print(f"resuming from {restored} at step {step}", flush=True)
    if step < config.train.total_steps:
        log_dir = os.path.join(model_dir, "logs", "train") if distribution.is_chief else None
        progress = TrainingProgress(checkpoints, interval, config.train.batch_size, log_dir)
        model.fit(dataset, epochs=config.train.total_steps // interval, initial_epoch=step // interval,
                  steps_per_epoch=interval, callbacks=[progress], verbose=verbose, shuffle=False)  # fmt: skip
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
    config_path = config_path or os.path.join(model_dir, "config.yaml")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{config_path} not found: not a training run's model dir? Pass its config.")
    config = load_config(config_path)
    runtime = dataclasses.replace(config.runtime, mixed_precision="float32", sync_batch_norm=False)
    config = dataclasses.replace(config, runtime=runtime)
    model = build_model(config)
    path = _checkpoints(config, model_dir).restore_weights(model, checkpoint)
    return model, config, path


def evaluate(config, model_dir, model=None):
    """COCO metrics of the val split, printed and written to metrics.json and TensorBoard.

    Without `model`, the latest checkpoint in `model_dir` is loaded into a fresh one.
    """
    if model is None:
        ensure_synthetic_dataset(config.data)
        model = build_model(config)
        model.compile(optimizer=make_optimizer(config))
        if not _checkpoints(config, model_dir).restore(model):
            raise FileNotFoundError(f"No checkpoint in {os.path.join(model_dir, 'checkpoints')} to evaluate.")
    split = config.data.val
    if not split.annotations:
        raise ConfigError("data.val.annotations: COCO evaluation needs the val split's annotations JSON.")
    evaluator = CocoEvaluator(split.annotations)
    for images, meta in eval_dataset(make_source(split), config.data.image_size, config.eval.batch_size):
        detections = model.predict_on_batch(images.numpy())  # numpy: every backend takes it
        evaluator.update(meta["image_id"].numpy(), detections, meta["scale"].numpy())
    metrics = evaluator.result()
    step = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    print(evaluator.summary(), flush=True)
    with open(os.path.join(model_dir, "metrics.json"), "w") as f:
        json.dump({"step": step, **metrics}, f, indent=2)
    with tf.summary.create_file_writer(os.path.join(model_dir, "logs", "eval")).as_default(step=step):
        for name, value in metrics.items():
            tf.summary.scalar(f"coco/{name}", value)
    return metrics
