"""Our weights written in a reference checkpoint's layout: the inverse of `load_reference_checkpoint`.

A reference's code restores only checkpoints of its own object graph. Given a template,
a checkpoint that code wrote for the same architecture, the source format's pairing rule
(the loader's) names the template key of each of our weights; the new checkpoint is the
template with those values replaced by ours, its object graph and any training state
kept, so the reference restores it as one of its own. Loading it back into the model
checks that the rule covered every variable both ways.
"""

import os

import keras
import tensorflow as tf

from spinenet_tf.errors import ModelError
from spinenet_tf.pretrained.convert import SOURCE_FORMATS, check_choice, load_reference_checkpoint
from spinenet_tf.pretrained.mapping import listing
from spinenet_tf.pretrained.source import OBJECT_GRAPH_KEY, SourceCheckpoint


def write_reference_checkpoint(model, template, out, source_format):
    """Writes all of `model`'s weights to the checkpoint prefix `out`, in the layout of the
    checkpoint `template` of `source_format`; returns `out`.

    Raises ModelError, naming the variables, when the template is of another architecture
    (nothing is written then), or when the model has weights the template does not hold.
    """
    check_choice("source format", source_format, SOURCE_FORMATS)
    backbone = getattr(model, "backbone", model)
    source = SourceCheckpoint(template)
    rule, _ = SOURCE_FORMATS[source_format]
    pairs, _ = rule(model, backbone, source, "backbone" if backbone is model else "all")
    values = {key: source.reader.get_tensor(key) for key in (*source.shapes, OBJECT_GRAPH_KEY)}
    problems = []
    for pair in pairs:
        weights = {weight.name: weight for weight in pair.layer.weights}
        for name, key in pair.keys.items():
            if name not in weights:
                problems.append(f"{pair.layer.name} has no {name} for {key}")
            elif tuple(weights[name].shape) != source.shapes[key]:
                problems.append(
                    f"{weights[name].path} {list(weights[name].shape)} vs {key} {list(source.shapes[key])}"
                )
            else:
                values[key] = keras.ops.convert_to_numpy(weights[name]).astype(values[key].dtype)
    if problems:
        raise ModelError(
            f"{len(problems)} weights do not match the template {source.path}: {listing(problems)}. "
            "It was written for another architecture or number of classes."
        )
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tf.raw_ops.SaveV2(
        prefix=str(out),
        tensor_names=list(values),
        shape_and_slices=[""] * len(values),
        tensors=[tf.constant(value) for value in values.values()],
    )
    report = load_reference_checkpoint(model, out, source_format)  # our own values: no change
    if report.not_loaded:
        raise ModelError(
            f"{len(report.not_loaded)} weights of the model have no place in the template {source.path}: "
            f"{listing(report.not_loaded)}."
        )
    return out
