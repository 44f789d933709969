"""TF Model Garden's Mobile SpineNet RetinaNets: the trainable parameter counts of
`published.MOBILE_REFERENCE`, taken from the models themselves.

Runs inside the Model Garden virtualenv (tf-models-official 2.20, tf_keras), not the
project's. Builds the model of Model Garden's `retinanet_mobile_coco` experiment (91
classes, separable head of 4 convs, anchor size 3, swish) for each Mobile SpineNet, at
the size and head width of its row, and prints one JSON line per model: the trainable
parameters of the backbone and of the whole detector.

Usage (from the repository root):
    .bench-venvs/model-garden/bin/python -m benchmarks.model_garden_mobile
"""

import argparse
import json

import numpy as np
import tensorflow as tf
import tf_keras
from official.vision.configs import retinanet as retinanet_config
from official.vision.modeling import factory

# model_id -> (input size, head filters): the rows of published.MOBILE_REFERENCE.
ROWS = {"49": (384, 48), "49S": (384, 40), "49XS": (256, 24)}


def build(model_id, size, num_filters):
    """The `retinanet_mobile_coco` RetinaNet with `model_id`'s backbone, at `size` px, with
    `num_filters` head filters, without sync batch norm (no parameters of its own)."""
    config = retinanet_config.retinanet_spinenet_mobile_coco().task.model
    config.backbone.spinenet_mobile.model_id = model_id
    config.input_size = [size, size, 3]
    config.head.num_filters = num_filters
    config.norm_activation.use_sync_bn = False
    model = factory.build_retinanet(tf_keras.layers.InputSpec(shape=[None, size, size, 3]), config)
    model.head(model.backbone(tf.zeros([1, size, size, 3]), training=False))  # the head builds on call
    return model


def trainable(layer):
    return int(sum(np.prod(w.shape) for w in layer.trainable_weights))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-id", choices=sorted(ROWS), nargs="*", default=list(ROWS))
    args = parser.parse_args(argv)
    for model_id in args.model_id:
        size, num_filters = ROWS[model_id]
        model = build(model_id, size, num_filters)
        answer = {
            "model_id": model_id,
            "size": size,
            "num_filters": num_filters,
            "backbone_params": trainable(model.backbone),
            "trainable_params": trainable(model),
        }
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
