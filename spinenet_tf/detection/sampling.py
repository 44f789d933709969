"""Balanced random sampling of training examples, in fixed shapes (keras.ops, every backend).

The RPN trains on 256 anchors per image, half of them positive where there are enough;
the Fast R-CNN head on 512 RoIs, a quarter positive (Ren et al. 2015; TF Model Garden's
defaults). Where positives run short, negatives fill the sample; where both do, the
sample is padded with entries marked invalid.
"""

import keras
from keras import ops


def _top_k_padded(keys, k):
    """ops.top_k that also takes k > N: the extra entries get key -1 and index 0."""
    length = keys.shape[1]
    if k > length:
        keys = ops.pad(keys, [[0, 0], [0, k - length]], constant_values=-1.0)
    values, index = ops.top_k(keys, k)
    return values, ops.where(values >= 0.0, index, 0)


def sample_balanced(positive, negative, num_samples, positive_fraction, seed):
    """Picks at most num_samples * positive_fraction positives at random, then negatives.

    Args:
        positive, negative: bool [B, N] candidates (disjoint).
        seed: a keras.random.SeedGenerator (or int).

    Returns (index int32 [B, num_samples], is_positive bool, valid bool): positives come
    first, then negatives, then invalid padding.
    """
    randomness = keras.random.uniform(ops.shape(positive), seed=seed)
    max_positives = int(num_samples * positive_fraction)
    positive_keys, positive_index = _top_k_padded(ops.where(positive, randomness, -1.0), max_positives)
    negative_keys, negative_index = _top_k_padded(ops.where(negative, randomness, -1.0), num_samples)
    candidates = ops.concatenate([positive_index, negative_index], axis=1)
    # Priority 2 for chosen positives, 1 for negatives, 0 for padding; ties keep their order.
    rank = ops.concatenate(
        [ops.cast(positive_keys >= 0.0, "float32") * 2.0, ops.cast(negative_keys >= 0.0, "float32")], axis=1
    )
    order_bias = ops.arange(max_positives + num_samples, dtype="float32") / (
        4.0 * (max_positives + num_samples)
    )
    _, order = ops.top_k(rank - order_bias, num_samples)
    chosen_rank = ops.take_along_axis(rank, order, axis=1)
    index = ops.take_along_axis(candidates, order, axis=1)
    return index, chosen_rank > 1.5, chosen_rank > 0.5
