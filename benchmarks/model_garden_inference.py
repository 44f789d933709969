"""TF Model Garden's RetinaNet, timed call by call on request, for cpu_inference's comparison.

A `model_garden.Server`: runs inside the Model Garden virtualenv (tf-models-official,
TensorFlow 2.20, tf_keras), not the project's. It reads one line per timed call,
"BATCH MODE" (MODE: eager, tf.function or XLA), and answers each with the call's seconds,
and "params" with the trainable parameter count, as JSON lines.

Usage (from the repository root): printf '1 XLA\n1 XLA\nparams\n' |
    .bench-venvs/model-garden/bin/python -m benchmarks.model_garden_inference --model 49S --size 640
"""

import argparse
import json
import sys

import numpy as np
import tensorflow as tf
import tf_keras
from official.vision.configs import backbones, decoders
from official.vision.configs import retinanet as retinanet_config
from official.vision.modeling import factory

from benchmarks.model_garden import MODES
from benchmarks.timing import seconds


def build(name, size):
    """Model Garden's RetinaNet for a cpu_inference model name: 91 classes, relu, heads as ours."""
    if name == "R50-FPN":
        backbone = backbones.Backbone(type="resnet", resnet=backbones.ResNet(model_id=50))
        decoder = decoders.Decoder(type="fpn", fpn=decoders.FPN())
    else:
        backbone = backbones.Backbone(type="spinenet", spinenet=backbones.SpineNet(model_id=name))
        decoder = decoders.Decoder(type="identity", identity=decoders.Identity())
    config = retinanet_config.RetinaNet(
        num_classes=91,
        input_size=[size, size, 3],
        backbone=backbone,
        decoder=decoder,
        anchor=retinanet_config.Anchor(anchor_size=3),
        head=retinanet_config.RetinaNetHead(num_filters=128 if name == "49S" else 256),
    )
    input_specs = tf_keras.layers.InputSpec(shape=[None, size, size, 3])
    return factory.build_retinanet(input_specs, config)


def time_call(function, images):
    """Seconds of one call, outputs fetched as NumPy (as cpu_inference times ours)."""
    return seconds(lambda: tf.nest.map_structure(np.asarray, function(images)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, choices=["49S", "49", "R50-FPN"])
    parser.add_argument("--size", type=int, default=640)
    args = parser.parse_args(argv)
    model = build(args.model, args.size)

    def raw_outputs(images):  # backbone -> decoder -> head, as RetinaNetModel.call before decoding
        features = model.backbone(images, training=False)
        if model.decoder:
            features = model.decoder(features, training=False)
        return model.head(features, training=False)[:2]

    functions = {
        mode: raw_outputs if jit is None else tf.function(raw_outputs, jit_compile=jit)
        for mode, jit in MODES.items()
    }
    images = {}
    for line in sys.stdin:
        if line.strip() == "params":  # after a call: Model Garden's head creates its weights when called
            answer = {"trainable_params": int(sum(np.prod(w.shape) for w in model.trainable_weights))}
        else:
            batch, mode = line.split()
            batch = int(batch)
            if batch not in images:
                shape = (batch, args.size, args.size, 3)
                images[batch] = tf.constant(np.random.default_rng(0).uniform(0, 255, shape), tf.float32)
            answer = {"seconds": time_call(functions[mode], images[batch])}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
