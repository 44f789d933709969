"""A SpineNet's conv + BN units in the order the reference implementations create them.

Both references build SpineNet the same way, and name or number their layers in that
order: the stem conv, the stem block groups, then for each block of the table the
resampling of its first and second parent (reduce 1x1, the stride-2 3x3 when going
down, match 1x1) followed by its block group, and last the 1x1 endpoint per level.
Inside a block: the projection shortcut (when the width changes), then convs 1, 2 (, 3).
The names are this package's (`backbones/spinenet.py`); `check_layout` verifies that
each exists in the model, so a renamed layer fails loudly here.
"""

import dataclasses

from spinenet_tf import specs
from spinenet_tf.block_graph import resolve_block_graph
from spinenet_tf.errors import ModelError

BLOCK_UNITS = {"bottleneck": ("1", "2", "3"), "residual": ("1", "2")}


@dataclasses.dataclass(frozen=True)
class ConvNorm:
    """One conv and the batch norm after it, by layer name."""

    conv: str
    norm: str

    @classmethod
    def named(cls, prefix):
        return cls(f"{prefix}_conv", f"{prefix}_bn")


@dataclasses.dataclass(frozen=True)
class Block:
    """One residual block: its units by role ("shortcut", "1", "2", "3")."""

    block_type: str
    units: dict


@dataclasses.dataclass(frozen=True)
class Resampling:
    """A parent's resampling for a block: `spec_index` its 0-based row, `slot` 0 or 1."""

    spec_index: int
    slot: int
    units: tuple


@dataclasses.dataclass(frozen=True)
class BlockGroup:
    """A stem or table block's group of `block_repeats` blocks; `node_index` counts stem blocks."""

    node_index: int
    spec_index: int | None  # None for stem blocks
    blocks: tuple


@dataclasses.dataclass(frozen=True)
class SpineNetLayout:
    stem: ConvNorm
    stem_groups: tuple  # BlockGroup per stem block
    table: tuple  # per used table block: (Resampling, Resampling, BlockGroup)
    endpoints: tuple  # ConvNorm per level, min_level first

    def conv_norms(self):
        """Every unit outside blocks, in creation order."""
        units = [self.stem]
        for first, second, _ in self.table:
            units += [*first.units, *second.units]
        return units + list(self.endpoints)

    def block_groups(self):
        return [*self.stem_groups, *(group for _, _, group in self.table)]


def _block_group(node, filters, in_channels, repeats, spec_index):
    blocks = []
    out_channels = specs.block_output_channels(node.block_type, filters)
    for repeat in range(1, repeats + 1):
        name = f"{node.name}_r{repeat}"
        units = {}
        if repeat == 1 and in_channels != out_channels:
            units["shortcut"] = ConvNorm.named(f"{name}_proj")
        units.update({role: ConvNorm.named(f"{name}_{role}") for role in BLOCK_UNITS[node.block_type]})
        blocks.append(Block(node.block_type, units))
    return BlockGroup(node.index, spec_index, tuple(blocks))


def spinenet_layout(backbone):
    """The layout of a built `SpineNet` (only the blocks it uses, as the references save)."""
    graph = resolve_block_graph(backbone.block_specs, backbone.min_level, backbone.max_level)
    channels = {}
    stem_groups, table = [], []
    previous = specs.STEM_CONV_FILTERS
    for node in graph.used_nodes():
        filters = specs.block_filters(node.level, backbone.filter_size_scale)
        channels[node.index] = specs.block_output_channels(node.block_type, filters)
        if node.is_stem:
            stem_groups.append(_block_group(node, filters, previous, backbone.block_repeats, None))
            previous = channels[node.index]
            continue
        spec_index = node.spec_number - 1
        resamplings = []
        for slot, parent in enumerate(node.parents[:2]):
            prefix = f"{node.name}_from_{graph.nodes[parent].name}"
            steps = (
                ["reduce", "down", "match"] if node.level > graph.nodes[parent].level else ["reduce", "match"]
            )
            resamplings.append(
                Resampling(spec_index, slot, tuple(ConvNorm.named(f"{prefix}_{s}") for s in steps))
            )
        group = _block_group(node, filters, channels[node.index], backbone.block_repeats, spec_index)
        table.append((*resamplings, group))
    endpoints = tuple(ConvNorm.named(f"P{level}") for level in graph.outputs)
    layout = SpineNetLayout(ConvNorm.named("stem"), tuple(stem_groups), tuple(table), endpoints)
    check_layout(backbone, layout)
    return layout


def check_layout(backbone, layout):
    names = {layer.name for layer in backbone.layers}
    units = layout.conv_norms() + [
        unit for group in layout.block_groups() for block in group.blocks for unit in block.units.values()
    ]
    missing = [name for unit in units for name in (unit.conv, unit.norm) if name not in names]
    if missing:
        raise ModelError(f"{backbone.name} has no layers {missing[:5]}: not a SpineNet built by spinenet_tf?")
