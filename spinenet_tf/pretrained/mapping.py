"""Pairing our layers with a checkpoint's, checking every pair, assigning, and reporting.

A reference's rule (model_garden.py, tpu.py) produces `Pair`s: one of our Keras layers
and the checkpoint keys of its weights by weight name. Nothing is assigned until every
pair is checked, so a wrong mapping fails before it can load anything.
"""

import dataclasses

from spinenet_tf.errors import ModelError
from spinenet_tf.pretrained.source import numbered

MAX_LISTED = 8
CONV_KINDS = ("conv2d",)
NORM_KINDS = ("batch_normalization", "sync_batch_normalization")


@dataclasses.dataclass(frozen=True)
class Pair:
    layer: object  # a Keras layer of our model
    keys: dict  # weight name ("kernel", "gamma", ...) -> checkpoint key
    source: str  # the reference's name for it, for messages


def pair_in_order(what, ours, theirs):
    """Zips two equally long lists that follow one creation order; different lengths are an error."""
    if len(ours) != len(theirs):
        raise ModelError(
            f"{what}: the checkpoint has {len(theirs)}, this model {len(ours)}; it was written for another "
            "architecture (check model_id, block_repeats, filter_size_scale, min/max_level, block table)."
        )
    return list(zip(ours, theirs))


def pair_numbered_layers(backbone, units, layers, where):
    """Our conv+norm `units` paired with a checkpoint's numbered layers {name: {weight: key}}
    ("conv2d", "conv2d_1", ... and "batch_normalization[_k]", in creation order) found `where`."""
    unknown = sorted({numbered(name)[0] for name in layers} - set(CONV_KINDS + NORM_KINDS))
    if unknown:
        raise ModelError(f"{where}: layers of kinds {unknown}: not a SpineNet checkpoint of this format.")
    pairs = []
    for kinds, attribute in ((CONV_KINDS, "conv"), (NORM_KINDS, "norm")):
        theirs = sorted((n for n in layers if numbered(n)[0] in kinds), key=lambda n: numbered(n)[1])
        ours = [getattr(unit, attribute) for unit in units]
        for name, layer in pair_in_order(f"{where}: {kinds[0]} layers", ours, theirs):
            pairs.append(Pair(backbone.get_layer(name), layers[layer], f"{where}/{layer}"))
    return pairs


def listing(items):
    items = list(items)
    shown = ", ".join(map(str, items[:MAX_LISTED]))
    return shown + (f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


@dataclasses.dataclass
class LoadReport:
    """What a load did: our weights loaded and left as initialised, checkpoint variables not used."""

    checkpoint: str
    source_format: str
    modules: str
    loaded: list
    not_loaded: list
    unused: dict  # reason -> checkpoint keys

    def summary(self):
        lines = [
            f"{self.source_format} checkpoint {self.checkpoint} ({self.modules}): "
            f"{len(self.loaded)} weights loaded, {len(self.not_loaded)} left as initialised"
            + (f" ({listing(self.not_loaded)})" if self.not_loaded else "")
        ]
        lines += [
            f"  not used, {reason}: {len(keys)} variables" for reason, keys in self.unused.items() if keys
        ]
        return "\n".join(lines)


def assign(model, pairs, source, source_format, modules, unused):
    """Checks every pair (weights present, shapes equal), then assigns; returns the `LoadReport`."""
    problems, values, used = [], [], set()
    for pair in pairs:
        weights = {weight.name: weight for weight in pair.layer.weights}
        if set(weights) != set(pair.keys):
            problems.append(
                f"{pair.layer.name} has weights {sorted(weights)}, {pair.source} {sorted(pair.keys)}"
            )
            continue
        for name, key in pair.keys.items():
            ours, theirs = tuple(weights[name].shape), source.shapes[key]
            if ours != theirs:
                problems.append(f"{weights[name].path} {list(ours)} vs {key} {list(theirs)}")
            values.append((weights[name], key))
            used.add(key)
    if problems:
        raise ModelError(
            f"{len(problems)} weights do not match the checkpoint {source.path}: {listing(problems)}. "
            "It was written for another architecture or number of classes."
        )
    for weight, key in values:
        weight.assign(source.value(key))
    loaded = {id(weight) for weight, _ in values}
    return LoadReport(
        checkpoint=source.path,
        source_format=source_format,
        modules=modules,
        loaded=[weight.path for weight, _ in values],
        not_loaded=[weight.path for weight in model.weights if id(weight) not in loaded],
        unused={reason: keys for reason, keys in unused.items()},
    )
