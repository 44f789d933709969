"""TF Model Garden's RetinaNet / SpineNet checkpoints (TF2, object-based) -> our layers.

Model Garden's trainer saves `tf.train.Checkpoint(global_step, model, optimizer,
backbone=, decoder=, head=)`, so a variable's key is its object path: `backbone/
layer_with_weights-N/...` (N counts the functional model's layers in Keras' depth order,
not in build order) and `head/_cls_convs/i/...`. The rule:

- Backbone: each variable's own name (kept in the checkpoint's object graph) names its
  Keras layer, and Keras numbers layers of one kind in creation order: `conv2d`,
  `conv2d_1`, ... and `batch_normalization[_k]` are paired in that order with our units
  of `layout.spinenet_layout` (stem, resamplings, endpoints); `bottleneck_block[_k]` and
  `residual_block[_k]` with our blocks of that type, and inside a block `_shortcut`/
  `_norm0`, `_convI`/`_normI` with our shortcut and conv I.
- Head: `_cls_convs/i` is our `class_net_conv{i+1}`, `_cls_norms/l/i` our
  `class_net_bn{i+1}_P{min_level+l}`, `_classifier` our `class_net_predict`; the same
  for `_box_convs`, `_box_norms`, `_box_regressor`.
"""

import collections

from spinenet_tf.classification.image_classifier import ImageClassifier
from spinenet_tf.errors import ModelError
from spinenet_tf.pretrained.layout import spinenet_layout
from spinenet_tf.pretrained.mapping import Pair, pair_in_order, pair_numbered_layers
from spinenet_tf.pretrained.source import WEIGHT_NAMES, numbered

BACKBONE_PREFIXES = ("backbone/", "model/_backbone/")
HEAD_PREFIXES = ("head/", "model/_head/")
VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
BLOCK_KINDS = {"bottleneck_block": "bottleneck", "residual_block": "residual"}
BLOCK_ATTRIBUTES = {
    "shortcut": ("_shortcut", "_norm0"),
    "1": ("_conv1", "_norm1"),
    "2": ("_conv2", "_norm2"),
    "3": ("_conv3", "_norm3"),
}
HEAD_NETS = {
    "class_net": ("_cls_convs", "_cls_norms", "_classifier"),
    "box_net": ("_box_convs", "_box_norms", "_box_regressor"),
}


def _prefix(keys, prefixes, what):
    for prefix in prefixes:
        if any(key.startswith(prefix) for key in keys):
            return prefix
    raise ModelError(f"the checkpoint has no {what} (no variable under {' or '.join(prefixes)}).")


def _weights(keys):
    """{sub-path: {weight name: key}} for keys "<sub-path>/<weight>/.ATTRIBUTES/VARIABLE_VALUE"."""
    grouped = collections.defaultdict(dict)
    for key in keys:
        path, _, weight = key[: -len(VALUE_SUFFIX)].rpartition("/")
        grouped[path][weight] = key
    return grouped


def backbone_pairs(backbone, source, names):
    keys = [key for key in source.shapes if is_weight(key)]  # not the optimizer slots under them
    prefix = _prefix(keys, BACKBONE_PREFIXES, "backbone")
    layout = spinenet_layout(backbone)
    top, blocks = {}, collections.defaultdict(dict)
    for path, weights in _weights(k for k in keys if k.startswith(prefix)).items():
        parts = path[len(prefix) :].split("/")
        if not all(names.get(key) for key in weights.values()):
            raise ModelError(f"{source.path}: the object graph does not name the variables under {path}.")
        full_name = names[next(iter(weights.values()))].split("/")
        if len(parts) == 1:  # a top-level conv or norm: full name ".../<layer>/<weight>"
            top[full_name[-2]] = weights
        elif len(parts) == 2:  # inside a block: ".../<block>/<inner layer>/<weight>"
            blocks[full_name[-3]][parts[1]] = weights
        else:
            raise ModelError(f"{source.path}: unexpected backbone variable path {path}.")
    unknown = sorted({numbered(n)[0] for n in blocks} - set(BLOCK_KINDS))
    if unknown:
        raise ModelError(
            f"{source.path}: backbone blocks of kinds {unknown}: not a Model Garden SpineNet checkpoint."
        )
    pairs = pair_numbered_layers(backbone, layout.conv_norms(), top, prefix.rstrip("/"))
    ours = collections.defaultdict(list)
    for group in layout.block_groups():
        for block in group.blocks:
            ours[block.block_type].append(block)
    for kind, block_type in BLOCK_KINDS.items():
        theirs = sorted((n for n in blocks if numbered(n)[0] == kind), key=lambda n: numbered(n)[1])
        for block, name in pair_in_order(f"backbone {block_type} blocks", ours[block_type], theirs):
            if set(blocks[name]) != {a for role in block.units for a in BLOCK_ATTRIBUTES[role]}:
                raise ModelError(
                    f"{name} has layers {sorted(blocks[name])}; our block has units {sorted(block.units)}."
                )
            for role, unit in block.units.items():
                conv, norm = BLOCK_ATTRIBUTES[role]
                pairs.append(Pair(backbone.get_layer(unit.conv), blocks[name][conv], f"{name}/{conv}"))
                pairs.append(Pair(backbone.get_layer(unit.norm), blocks[name][norm], f"{name}/{norm}"))
    return pairs, [key for key in keys if key.startswith(prefix)]


def head_pairs(model, source):
    keys = [key for key in source.shapes if is_weight(key)]  # not the optimizer slots under them
    prefix = _prefix(keys, HEAD_PREFIXES, "RetinaNet head")
    head_keys = [key for key in keys if key.startswith(prefix)]
    weights = _weights(head_keys)
    pairs = []
    for net, (convs, norms, predictor) in HEAD_NETS.items():
        for path, keys_by_weight in weights.items():
            parts = path[len(prefix) :].split("/")
            if parts[0] == convs:
                name = f"{net}_conv{int(parts[1]) + 1}"
            elif parts[0] == norms:
                name = f"{net}_bn{int(parts[2]) + 1}_P{model.min_level + int(parts[1])}"
            elif parts[0] == predictor:
                name = f"{net}_predict"
            else:
                continue
            try:
                layer = model.get_layer(name)
            except ValueError:
                raise ModelError(
                    f"{path} has no counterpart {name} in this model (another num_convs or levels?)."
                ) from None
            pairs.append(Pair(layer, keys_by_weight, path))
    return pairs, head_keys


def model_garden_pairs(model, backbone, source, modules):
    """(pairs, checkpoint keys those parts own) for `modules` "backbone" or "all"."""
    names = source.variable_names() if source.object_based else {}
    if not names:
        raise ModelError(
            f"{source.path}: a name-based (TF1) checkpoint; use --from tpu for tensorflow/tpu's."
        )
    pairs, owned = backbone_pairs(backbone, source, names)
    if modules == "all":
        if isinstance(model, ImageClassifier):
            raise ModelError(
                "Model Garden classifier heads are not mapped (the published SpineNet classifiers are "
                "tensorflow/tpu's: --from tpu); load the backbone alone (modules='backbone')."
            )
        more, head_keys = head_pairs(model, source)
        pairs, owned = pairs + more, owned + head_keys
    return pairs, owned


def is_weight(key):
    """A model weight's key; not a step, an optimizer slot (".OPTIMIZER_SLOT/optimizer/momentum/...")."""
    return key.endswith(VALUE_SUFFIX) and key[: -len(VALUE_SUFFIX)].rpartition("/")[2] in WEIGHT_NAMES
