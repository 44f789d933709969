"""TF Model Garden's Mask R-CNN / Faster R-CNN, timed call by call on request, for
two_stage_inference's comparison.

A `model_garden.Server`: runs inside the Model Garden virtualenv (tf-models-official,
TensorFlow 2.20, tf_keras), not the project's. It reads one line per timed call,
"BATCH MODE" (MODE: eager, tf.function or XLA), and answers each with the call's seconds
and its mean number of detections per image (or the error that stopped it), and "params"
with the trainable parameter count, as JSON lines. A call is what Model Garden's serving
module runs after preprocessing: the model in inference mode on normalised images, with
the image shape and the anchors, to final detections (and masks).

Usage (from the repository root): printf '1 XLA\n1 XLA\nparams\n' |
    .bench-venvs/model-garden/bin/python -m benchmarks.model_garden_two_stage --model maskrcnn-49
"""

import argparse
import json
import sys

import numpy as np
import tensorflow as tf
import tf_keras
from official.vision.configs import maskrcnn as maskrcnn_config
from official.vision.modeling import factory
from official.vision.ops import anchor, preprocess_ops

from benchmarks.model_garden import MODES
from benchmarks.timing import timed

MODELS = ("maskrcnn-49", "fasterrcnn-49")
OUTPUTS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections", "detection_masks")


def model_config(name, size, model_id="49"):
    """The model of Model Garden's `maskrcnn_spinenet_coco` experiment (SpineNet-49, 91 classes),
    at `size` px, without sync batch norm; fasterrcnn: without the mask head. `model_id`:
    another SpineNet in the same recipe (how `published.TWO_STAGE_REFERENCE`'s 96 and 143
    counts were taken: `--model-id 96 --size 1024`, one call, then "params")."""
    config = maskrcnn_config.maskrcnn_spinenet_coco().task.model
    config.input_size = [size, size, 3]
    config.norm_activation.use_sync_bn = False
    config.include_mask = name.startswith("maskrcnn")
    config.backbone.spinenet.model_id = model_id
    return config


def detector(config):
    """(model, f(images) -> final detections): the model called as `DetectionModule.serve` calls it."""
    size = config.input_size[0]
    model = factory.build_maskrcnn(tf_keras.layers.InputSpec(shape=[None, size, size, 3]), config)
    level_anchors = anchor.build_anchor_generator(
        min_level=config.min_level,
        max_level=config.max_level,
        num_scales=config.anchor.num_scales,
        aspect_ratios=config.anchor.aspect_ratios,
        anchor_size=config.anchor.anchor_size,
    )(image_size=(size, size))

    def detect(images):
        batch = tf.shape(images)[0]
        outputs = model(
            images,
            image_shape=tf.fill([batch, 2], float(size)),
            anchor_boxes={
                level: tf.tile(boxes[None], [batch, 1, 1, 1]) for level, boxes in level_anchors.items()
            },
            training=False,
        )
        return {key: outputs[key] for key in OUTPUTS if key in outputs}

    return model, detect


def time_call(function, images):
    """The answer to a timed call: its seconds (outputs fetched as NumPy) and detections per image."""
    outputs, seconds = timed(lambda: tf.nest.map_structure(np.asarray, function(images)))
    return {"seconds": seconds, "num_detections": float(np.mean(outputs["num_detections"]))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, choices=MODELS)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--model-id", default="49", help="the SpineNet variant (the recipe's is 49)")
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow intra- and inter-op threads")
    args = parser.parse_args(argv)
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    model, detect = detector(model_config(args.model, args.size, args.model_id))
    functions = {
        mode: detect if jit is None else tf.function(detect, jit_compile=jit) for mode, jit in MODES.items()
    }
    images = {}
    for line in sys.stdin:
        if line.strip() == "params":  # after a call: the heads create their weights when called
            answer = {"trainable_params": int(sum(np.prod(w.shape) for w in model.trainable_weights))}
        else:
            batch, mode = line.split()
            batch = int(batch)
            if batch not in images:  # the photos of ours, normalised as ours are
                photos = np.random.default_rng(0).integers(
                    0, 256, (batch, args.size, args.size, 3), dtype=np.uint8
                )
                mean, std = np.array(preprocess_ops.MEAN_RGB), np.array(preprocess_ops.STDDEV_RGB)
                images[batch] = tf.constant((photos - mean) / std, tf.float32)
            try:
                answer = time_call(functions[mode], images[batch])
            except Exception as error:  # e.g. an op XLA cannot compile: the table reports it
                answer = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
