"""Resolves a SpineNet block table into the graph that is built and drawn.

Pure Python, so that the model builder, the architecture drawing and the config
validation share one reading of the table. Every connection is decided by level and
block type, never by tensor shapes, so static and dynamic inputs give the same network.
"""

import dataclasses
from collections.abc import Mapping, Sequence

from spinenet_tf import specs

# SpineNet's stem blocks as (level, block type), the nodes its table's offsets 0 and 1 name.
SPINENET_STEM_BLOCKS = ((specs.STEM_LEVEL, specs.STEM_BLOCK_TYPE),) * specs.NUM_STEM_BLOCKS


@dataclasses.dataclass(frozen=True)
class BlockNode:
    """A block of the built network: a stem block or a scale-permuted block.

    `parents` are indices of earlier nodes: the two input offsets of the spec, then
    every earlier unconsumed block that an output block absorbs.
    """

    index: int
    name: str
    level: int
    block_type: str
    parents: tuple[int, ...]
    is_output: bool
    spec_number: int  # 1-based position in the block table; 0 for stem blocks.

    @property
    def is_stem(self):
        return self.spec_number == 0


@dataclasses.dataclass(frozen=True)
class BlockGraph:
    nodes: tuple[BlockNode, ...]
    outputs: Mapping[int, int]  # level -> node index, for min_level..max_level.
    used: frozenset[int]  # nodes on a path to a used output; the others are not built.
    block_specs: tuple[specs.BlockSpec, ...]

    def used_nodes(self):
        return [node for node in self.nodes if node.index in self.used]


def coerce_block_spec(raw, number):
    """Accepts a BlockSpec, a (level, type, (a, b), is_output) sequence or a mapping."""
    if isinstance(raw, specs.BlockSpec):
        return raw
    if isinstance(raw, Mapping):
        fields = {f.name for f in dataclasses.fields(specs.BlockSpec)}
        unknown = set(raw) - fields
        if unknown or set(raw) != fields:
            raise ValueError(
                f"Block {number}: a mapping needs exactly the keys {sorted(fields)}, got {sorted(raw)}."
            )
        raw = [raw["level"], raw["block_type"], raw["input_offsets"], raw["is_output"]]
    if not isinstance(raw, Sequence) or isinstance(raw, str) or len(raw) != 4:
        raise ValueError(
            f"Block {number}: expected (level, block_type, (offset0, offset1), is_output), got {raw!r}."
        )
    level, block_type, offsets, is_output = raw
    if not isinstance(offsets, Sequence) or len(offsets) != 2:
        raise ValueError(f"Block {number}: input_offsets must be two block indices, got {offsets!r}.")
    return specs.BlockSpec(level, block_type, tuple(offsets), is_output)


def _check_spec(spec, number, num_built, num_stem, block_types):
    where = f"Block {number} ({spec})"
    if isinstance(spec.level, bool) or not isinstance(spec.level, int):
        raise ValueError(f"{where}: level must be an integer, got {spec.level!r}.")
    if not specs.MIN_BLOCK_LEVEL <= spec.level <= specs.MAX_BLOCK_LEVEL:
        raise ValueError(
            f"{where}: level {spec.level} is outside {specs.MIN_BLOCK_LEVEL}..{specs.MAX_BLOCK_LEVEL}."
        )
    if spec.block_type not in block_types:
        raise ValueError(f"{where}: unknown block type {spec.block_type!r}; use one of {block_types}.")
    if not isinstance(spec.is_output, bool):
        raise ValueError(f"{where}: is_output must be true or false, got {spec.is_output!r}.")
    for offset in spec.input_offsets:
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise ValueError(f"{where}: input offset {offset!r} is not an integer.")
        if offset < 0:
            raise ValueError(f"{where}: input offset {offset} is out of range (negative).")
        if offset >= num_built:
            raise ValueError(
                f"{where}: input offset {offset} points forward; it must be below {num_built} "
                f"(the {num_stem} stem blocks and the {num_built - num_stem} "
                "blocks before it)."
            )


def resolve_block_graph(
    block_specs, min_level, max_level, stem_blocks=SPINENET_STEM_BLOCKS, block_types=specs.BLOCK_TYPES
):
    """Validates `block_specs` and returns the block graph for outputs min..max_level.

    `stem_blocks` are the (level, block type) of the blocks the table's offsets 0, 1, ...
    name, `block_types` those a table may use: SpineNet's by default, Mobile SpineNet's
    (`specs.MOBILE_STEM_BLOCKS`, `specs.MOBILE_BLOCK_TYPES`) for its MBConv table.
    """
    if not specs.MIN_BLOCK_LEVEL < min_level <= max_level <= specs.MAX_BLOCK_LEVEL:
        raise ValueError(
            f"min_level={min_level}, max_level={max_level}: need "
            f"{specs.MIN_BLOCK_LEVEL} < min_level <= max_level <= {specs.MAX_BLOCK_LEVEL}."
        )
    block_specs = [coerce_block_spec(raw, n) for n, raw in enumerate(block_specs, start=1)]
    if not block_specs:
        raise ValueError("block_specs is empty.")

    nodes = [
        BlockNode(i, f"stem{i + 1}", level, block_type, (), False, 0)
        for i, (level, block_type) in enumerate(stem_blocks)
    ]
    times_consumed = [0] * len(nodes)
    output_nodes = {}
    for number, spec in enumerate(block_specs, start=1):
        _check_spec(spec, number, len(nodes), len(stem_blocks), block_types)
        parents = list(spec.input_offsets)
        for parent in parents:
            times_consumed[parent] += 1
        if spec.is_output:
            # An output block also absorbs every earlier block of its own level and
            # type (hence width) that no block has consumed yet.
            for node in nodes:
                if (
                    times_consumed[node.index] == 0
                    and node.level == spec.level
                    and node.block_type == spec.block_type
                ):
                    parents.append(node.index)
                    times_consumed[node.index] += 1
            if spec.level in output_nodes:
                raise ValueError(
                    f"Block {number} ({spec}): a second output block for level {spec.level} "
                    f"(block {nodes[output_nodes[spec.level]].spec_number} is the first)."
                )
            output_nodes[spec.level] = len(nodes)
        nodes.append(
            BlockNode(
                len(nodes),
                f"block{number}",
                spec.level,
                spec.block_type,
                tuple(parents),
                spec.is_output,
                number,
            )
        )
        times_consumed.append(0)

    missing = [level for level in range(min_level, max_level + 1) if level not in output_nodes]
    if missing:
        raise ValueError(
            f"block_specs have no output block for level(s) {missing}; outputs exist for "
            f"levels {sorted(output_nodes)} but min_level..max_level is {min_level}..{max_level}."
        )
    outputs = {level: output_nodes[level] for level in range(min_level, max_level + 1)}

    used = set()
    pending = list(outputs.values())
    while pending:
        index = pending.pop()
        if index not in used:
            used.add(index)
            pending.extend(nodes[index].parents)
    return BlockGraph(tuple(nodes), outputs, frozenset(used), tuple(block_specs))
