import pytest

from spinenet_tf.block_graph import resolve_block_graph
from spinenet_tf.specs import SPINENET_BLOCK_SPECS, BlockSpec


def graph_of(block_specs=SPINENET_BLOCK_SPECS, min_level=3, max_level=7):
    return resolve_block_graph(block_specs, min_level, max_level)


def test_spinenet49_graph_facts():
    graph = graph_of()
    assert len(graph.block_specs) == 16
    by_name = {node.name: node for node in graph.nodes}
    # Block 13 (level 5, output) absorbs block 10, a level-5 bottleneck nothing consumed.
    assert by_name["block13"].parents == (7, 12, by_name["block10"].index)
    # Only that one merge happens in SpineNet-49 at levels 3..7.
    extra = {node.name: node.parents[2:] for node in graph.nodes if len(node.parents) > 2}
    assert extra == {"block13": (by_name["block10"].index,)}
    assert {level: graph.nodes[i].name for level, i in graph.outputs.items()} == {
        3: "block12",
        4: "block11",
        5: "block13",
        6: "block15",
        7: "block14",
    }
    assert by_name["block16"].index not in graph.used
    assert by_name["block16"].index in graph_of(min_level=2).used
    assert all(node.parents == () for node in graph.nodes if node.is_stem)


def test_merge_requires_same_level_and_type():
    specs = [
        BlockSpec(3, "residual", (0, 1), False),  # index 2, level 3 residual, never consumed
        BlockSpec(3, "bottleneck", (0, 1), False),  # index 3, level 3 bottleneck, never consumed
        BlockSpec(3, "bottleneck", (0, 1), True),  # absorbs 3 only (2 has another width)
        BlockSpec(4, "bottleneck", (4, 2), True),
    ]
    graph = graph_of(specs, 3, 4)
    assert graph.nodes[4].parents == (0, 1, 3)
    assert graph.nodes[5].parents == (4, 2)


def bad(index, **changes):
    specs = [spec.as_list() for spec in SPINENET_BLOCK_SPECS]
    row = dict(zip(["level", "block_type", "input_offsets", "is_output"], specs[index - 1]))
    row.update(changes)
    specs[index - 1] = row
    return specs


@pytest.mark.parametrize(
    "block_specs,message",
    [
        (bad(3, input_offsets=[2, 4]), r"Block 3 .*input offset 4 points forward; it must be below 4"),
        (bad(5, input_offsets=[-1, 3]), r"Block 5 .*input offset -1 is out of range"),
        (bad(2, block_type="inverted"), r"Block 2 .*unknown block type 'inverted'"),
        (bad(7, level=8), r"Block 7 .*level 8 is outside 1..7"),
        (bad(7, level=0), r"Block 7 .*level 0 is outside 1..7"),
        (bad(12, is_output=False), r"no output block for level\(s\) \[3\]"),
        (bad(4, is_output=True), r"Block 11 .*a second output block for level 4 \(block 4 is the first\)"),
        (bad(1, is_output="yes"), r"Block 1 .*is_output must be true or false"),
        ([[2, "bottleneck", [0], False]], r"Block 1: input_offsets must be two block indices"),
        ([[2, "bottleneck", [0, 1]]], r"Block 1: expected \(level, block_type"),
        ([{"level": 2, "type": "bottleneck"}], r"Block 1: a mapping needs exactly the keys"),
        ([], "block_specs is empty"),
    ],
)
def test_invalid_block_specs_name_the_bad_block(block_specs, message):
    with pytest.raises(ValueError, match=message):
        graph_of(block_specs)
