"""Decoders: backbone features -> the pyramid a detection head reads, chosen by name.

"identity" passes a scale-permuted backbone's own P{min}..P{max} (SpineNet needs no
FPN); "fpn" builds a Feature Pyramid Network on a scale-decreased backbone; "auto" picks
identity when the backbone has every wanted level. New decoders (NAS-FPN) join here.
"""

from spinenet_tf.detection.fpn import fpn_decoder
from spinenet_tf.errors import ModelError

DECODERS = ("auto", "identity", "fpn")


def check_decoder(decoder):
    if decoder not in DECODERS:
        raise ModelError(f"Unknown decoder {decoder!r}; use one of {DECODERS}.")


def decode_pyramid(features, decoder, min_level, max_level, fpn_num_filters, settings):
    """(the decoder used, {"P{min_level}": ..., "P{max_level}": ...})."""
    check_decoder(decoder)
    wanted = [f"P{level}" for level in range(min_level, max_level + 1)]
    if decoder == "auto":
        decoder = "identity" if set(wanted) <= set(features) else "fpn"
    if decoder == "identity":
        missing = sorted(set(wanted) - set(features))
        if missing:
            raise ModelError(f"Identity decoder: the backbone has no {missing}; use decoder='fpn'.")
        return decoder, {name: features[name] for name in wanted}
    return decoder, fpn_decoder(features, min_level, max_level, fpn_num_filters, settings)
