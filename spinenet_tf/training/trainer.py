"""Training and evaluation of a RetinaNet experiment: `spinenet train` / `spinenet eval`.

`fit` runs in whole checkpoint intervals (one Keras epoch = `checkpoint_interval` steps).
Each interval ends with a tf.train.CheckpointManager save of weights, optimizer state and
step; its index file is replaced atomically, so a write cut short leaves the last good
checkpoint in place. On start, the latest checkpoint in the model dir is restored and
training continues from its step with the same learning-rate curve.
"""

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
from spinenet_tf.training.config import ConfigError, to_dict
from spinenet_tf.training.schedule import WarmupStepDecay


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def make_strategy(runtime):
    if runtime.strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    if runtime.strategy == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if runtime.strategy == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=runtime.tpu or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    return tf.distribute.get_strategy()


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
    """The compiled detector of `config` (call inside the strategy's scope)."""
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


class CheckpointEveryInterval(keras.callbacks.Callback):
    def __init__(self, manager, optimizer):
        super().__init__()
        self.manager, self.optimizer = manager, optimizer

    def on_epoch_end(self, epoch, logs=None):
        self.manager.save(checkpoint_number=int(self.optimizer.iterations.numpy()))


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops with a message naming the step; no checkpoint is written for the broken interval."""

    def __init__(self, manager, optimizer):
        super().__init__()
        self.manager, self.optimizer = manager, optimizer

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            step = int(self.optimizer.iterations.numpy())
            raise TrainingDiverged(
                f"loss became {float(loss)} at step {step}; stopping. The last good checkpoint is kept: "
                f"{self.manager.latest_checkpoint or 'none yet'}. Lower train.optimizer.learning_rate "
                f"or check the data."
            )


class TensorBoardScalars(keras.callbacks.Callback):
    """Loss, learning rate and images/s per `every` steps to TensorBoard."""

    def __init__(self, log_dir, optimizer, batch_size, every=10):
        super().__init__()
        self.writer = tf.summary.create_file_writer(log_dir)
        self.optimizer, self.batch_size, self.every = optimizer, batch_size, every
        self.last_time, self.last_step = None, None

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.optimizer.iterations.numpy())
        if step % self.every:
            return
        now = time.perf_counter()
        with self.writer.as_default(step=step):
            tf.summary.scalar("loss", float(logs["loss"]))
            tf.summary.scalar(
                "learning_rate", float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))
            )
            if self.last_time is not None:
                tf.summary.scalar(
                    "images_per_second", (step - self.last_step) * self.batch_size / (now - self.last_time)
                )
        self.last_time, self.last_step = now, step


def _check_classes(config, source):
    if source.categories:
        largest = max(category["id"] for category in source.categories)
        if largest >= config.model.num_classes:
            raise ConfigError(
                f"model.num_classes: {config.model.num_classes} outputs cannot hold category id {largest} "
                f"(class ids are used as they are; set num_classes to at least {largest + 1})."
            )


def _checkpoint_manager(model, model_dir, keep):
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    return checkpoint, tf.train.CheckpointManager(checkpoint, os.path.join(model_dir, "checkpoints"), keep)


def train(config, model_dir, verbose=1):
    """Trains (resuming from `model_dir` when it holds a checkpoint), then evaluates; returns the metrics."""
    os.makedirs(model_dir, exist_ok=True)
    keras.utils.set_random_seed(config.runtime.seed)
    ensure_synthetic_dataset(config.data)
    strategy = make_strategy(config.runtime)
    replicas = strategy.num_replicas_in_sync
    if config.train.batch_size % replicas:
        raise ConfigError(
            f"train.batch_size: {config.train.batch_size} is not divisible by the {replicas} replicas of "
            f"runtime.strategy={config.runtime.strategy}."
        )
    with open(os.path.join(model_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(to_dict(config), f, sort_keys=False)

    source = make_source(config.data.train)
    _check_classes(config, source)
    data = config.data
    dataset = train_dataset(
        source, data.image_size, config.train.batch_size, data.max_boxes, data.scale_range, data.flip,
        data.copy_paste_probability, data.shuffle_buffer, data.cache,
    )  # fmt: skip
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = dataset.with_options(options)

    with strategy.scope():
        model = build_model(config)
        model.compile(optimizer=make_optimizer(config), jit_compile=config.runtime.jit_compile)
        checkpoint, manager = _checkpoint_manager(model, model_dir, config.train.keep_checkpoints)
        if manager.latest_checkpoint:
            checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    step = int(model.optimizer.iterations.numpy())
    interval = config.train.checkpoint_interval
    if step:
        print(f"resuming from {manager.latest_checkpoint} at step {step}", flush=True)
    if step < config.train.total_steps:
        callbacks = [
            StopOnNonFiniteLoss(manager, model.optimizer),
            CheckpointEveryInterval(manager, model.optimizer),
            TensorBoardScalars(
                os.path.join(model_dir, "logs", "train"), model.optimizer, config.train.batch_size
            ),
        ]
        model.fit(dataset, epochs=config.train.total_steps // interval, initial_epoch=step // interval,
                  steps_per_epoch=interval, callbacks=callbacks, verbose=verbose)  # fmt: skip
    return evaluate(config, model_dir, model)


def evaluate(config, model_dir, model=None):
    """COCO metrics of the val split, printed and written to metrics.json and TensorBoard."""
    if model is None:
        ensure_synthetic_dataset(config.data)
        model = build_model(config)
        model.compile(optimizer=make_optimizer(config))
        checkpoint, manager = _checkpoint_manager(model, model_dir, config.train.keep_checkpoints)
        if not manager.latest_checkpoint:
            raise FileNotFoundError(f"No checkpoint in {os.path.join(model_dir, 'checkpoints')} to evaluate.")
        checkpoint.restore(manager.latest_checkpoint).expect_partial()
    split = config.data.val
    evaluator = CocoEvaluator(split.annotations) if split.annotations else None
    if evaluator is None:
        raise ConfigError("data.val.annotations: COCO evaluation needs the val split's annotations JSON.")
    for images, meta in eval_dataset(make_source(split), config.data.image_size, config.eval.batch_size):
        detections = model.predict_on_batch(images)
        evaluator.update(meta["image_id"].numpy(), detections, meta["scale"].numpy())
    metrics = evaluator.result()
    step = int(model.optimizer.iterations.numpy())
    print(evaluator.summary(), flush=True)
    with open(os.path.join(model_dir, "metrics.json"), "w") as f:
        json.dump({"step": step, **metrics}, f, indent=2)
    with tf.summary.create_file_writer(os.path.join(model_dir, "logs", "eval")).as_default(step=step):
        for name, value in metrics.items():
            tf.summary.scalar(f"coco/{name}", value)
    return metrics
