import pytest

from spinenet_tf.backbones.spinenet import SpineNet
from spinenet_tf.builders import build_detector, input_size_multiple
from spinenet_tf.errors import ModelError
from spinenet_tf.layers.resample import ResizeToLevel

# Outputs L3..L5 from blocks of levels 3..5 only: inputs need a multiple of 2**5.
LEVEL_5_TABLE = [
    [3, "bottleneck", [0, 1], True],
    [4, "bottleneck", [0, 1], True],
    [5, "bottleneck", [0, 1], True],
]


@pytest.mark.parametrize(
    "backbone,multiple",
    [
        ({"type": "resnet50"}, 32),
        ({"model_id": "49S"}, 128),
        ({"model_id": "49", "max_level": 5}, 128),  # the published table has level-7 blocks
        ({"block_specs": LEVEL_5_TABLE, "max_level": 5}, 32),
    ],
)
def test_input_size_multiple_is_the_backbones_own_rule(backbone, multiple):
    assert input_size_multiple(backbone) == multiple


def test_the_size_rule_is_the_one_spinenet_applies():
    """At multiples SpineNet is the plain network; elsewhere it resizes between levels."""
    arguments = dict(filter_size_scale=0.25, endpoints_num_filters=8)
    multiple = input_size_multiple(arguments)
    plain = SpineNet("49", image_shape=(multiple, 2 * multiple, 3), **arguments)
    assert plain.size_multiple == multiple
    resized = SpineNet("49", image_shape=(multiple + multiple // 2, multiple, 3), **arguments)
    assert not any(isinstance(layer, ResizeToLevel) for layer in plain.layers)
    assert any(isinstance(layer, ResizeToLevel) for layer in resized.layers)


def test_unknown_keys_are_named_by_their_dotted_key():
    with pytest.raises(
        ModelError, match=r"backbone.model: unknown key; allowed keys here are \[.*'model_id'"
    ):
        build_detector({"backbone": {"model": "49S"}, "num_classes": 5})
    with pytest.raises(ModelError, match=r"detector.num_filter: unknown key; allowed keys here are \["):
        build_detector({"backbone": {"model_id": "49S"}, "num_classes": 5, "num_filter": 16})
    with pytest.raises(ModelError, match=r"backbone.type: 'vgg' is not one of the allowed values"):
        build_detector({"backbone": {"type": "vgg"}, "num_classes": 5})
