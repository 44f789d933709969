"""tensorflow/tpu detection and classification checkpoints (TF1, name-based) -> our layers.

That code builds with `tf.layers` inside variable scopes, and `tf.layers` numbers the
layers of a kind within a scope in creation order: `conv2d`, `conv2d_1`, ... and
`batch_normalization[_k]`. The rule pairs each scope's convs and norms in that order
with our units (`layout.spinenet_layout`):

- `spinenet/`: the stem, the stem block groups (per block: shortcut, conv 1, 2, 3), then
  the endpoints;
- `spinenet/sub_policy{i}/resample_with_alpha_resample_{i}_{p}/`: the resampling of
  table row i's parent p;
- `spinenet/sub_policy{i}/scale_permuted_block_{n}/`: that row's block group, n counting
  the stem blocks;
- `retinanet/class_net/class-{k}`, `class-{k}-{level}` (its BN at that level) and
  `class-predict`: our `class_net_conv{k+1}`, `class_net_bn{k+1}_P{level}`,
  `class_net_predict`; the same for `box_net/box-...`;
- `classification_head/dense`: an `ImageClassifier`'s `logits`, and the head's optional
  1x1 embedding `conv2d` + `batch_normalization`: its `embedding_conv`, `embedding_bn`.
"""

import collections

from spinenet_tf.classification.image_classifier import ImageClassifier
from spinenet_tf.errors import ModelError
from spinenet_tf.pretrained.layout import ConvNorm, spinenet_layout
from spinenet_tf.pretrained.mapping import Pair, pair_numbered_layers
from spinenet_tf.pretrained.source import WEIGHT_NAMES

HEAD_SCOPES = {"class_net": "retinanet/class_net", "box_net": "retinanet/box_net"}
CLASSIFIER_SCOPE = "classification_head"


def is_weight(key):
    return key.rpartition("/")[2] in WEIGHT_NAMES


def _layers_by_scope(keys):
    """{scope: {layer: {weight: key}}} for keys "<scope>/<layer>/<weight>"."""
    scopes = collections.defaultdict(lambda: collections.defaultdict(dict))
    for key in keys:
        path, _, weight = key.rpartition("/")
        scope, _, layer = path.rpartition("/")
        scopes[scope][layer][weight] = key
    return scopes


def _block_units(group):
    return [unit for block in group.blocks for unit in block.units.values()]


def _scope_pairs(backbone, scope, units, layers):
    if layers is None:
        raise ModelError(f"the checkpoint has no scope {scope}/ (another block table or min/max_level?).")
    return pair_numbered_layers(backbone, units, layers, scope)


def tpu_pairs(model, backbone, source, modules):
    """(pairs, checkpoint keys those parts own) for `modules` "backbone" or "all"."""
    if source.object_based:
        raise ModelError(
            f"{source.path}: an object-based (TF2) checkpoint; use --from model-garden for those."
        )
    keys = [key for key in source.shapes if is_weight(key)]
    scopes = _layers_by_scope(keys)
    layout = spinenet_layout(backbone)
    stem_units = [layout.stem] + [u for group in layout.stem_groups for u in _block_units(group)]
    pairs = _scope_pairs(backbone, "spinenet", stem_units + list(layout.endpoints), scopes.get("spinenet"))
    for first, second, group in layout.table:
        policy = f"spinenet/sub_policy{group.spec_index}"
        for resampling in (first, second):
            scope = f"{policy}/resample_with_alpha_resample_{group.spec_index}_{resampling.slot}"
            pairs += _scope_pairs(backbone, scope, resampling.units, scopes.get(scope))
        scope = f"{policy}/scale_permuted_block_{group.node_index}"
        pairs += _scope_pairs(backbone, scope, _block_units(group), scopes.get(scope))
    owned = [key for key in keys if key.startswith("spinenet/")]
    if modules == "all":
        head = _classifier_head_pairs if isinstance(model, ImageClassifier) else _retinanet_head_pairs
        more, head_scopes = head(model, scopes)
        pairs += more
        owned += [key for key in keys if key.startswith(tuple(scope + "/" for scope in head_scopes))]
    return pairs, owned


def _retinanet_head_pairs(model, scopes):
    pairs = []
    for net, scope in HEAD_SCOPES.items():
        layers = scopes.get(scope)
        if not layers:
            raise ModelError(f"the checkpoint has no RetinaNet head ({scope}/).")
        for layer, weights in layers.items():
            parts = layer.split("-")
            if parts[1:] == ["predict"]:
                name = f"{net}_predict"
            elif len(parts) == 2:
                name = f"{net}_conv{int(parts[1]) + 1}"
            else:
                name = f"{net}_bn{int(parts[1]) + 1}_P{parts[2]}"
            try:
                pairs.append(Pair(model.get_layer(name), weights, f"{scope}/{layer}"))
            except ValueError:
                raise ModelError(f"{scope}/{layer} has no counterpart {name} in this model.") from None
    return pairs, tuple(HEAD_SCOPES.values())


def _classifier_head_pairs(model, scopes):
    layers = dict(scopes.get(CLASSIFIER_SCOPE, {}))
    dense = layers.pop("dense", None)
    if dense is None:
        raise ModelError(f"the checkpoint has no classification head ({CLASSIFIER_SCOPE}/dense/).")
    if bool(layers) != bool(model.embedding_filters):
        raise ModelError(
            f"{CLASSIFIER_SCOPE}/: the checkpoint's head has {'an' if layers else 'no'} embedding conv, "
            f"this model's embedding_filters is {model.embedding_filters}."
        )
    units = [ConvNorm.named("embedding")] if layers else []
    pairs = pair_numbered_layers(model, units, layers, CLASSIFIER_SCOPE)
    return [*pairs, Pair(model.get_layer("logits"), dense, f"{CLASSIFIER_SCOPE}/dense")], (CLASSIFIER_SCOPE,)
