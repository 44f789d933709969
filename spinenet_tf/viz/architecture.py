"""Draws a SpineNet block graph the way the paper's figures do.

Blocks are placed by build order (x) and level (y, coarse levels on top); arrows are
cross-scale connections, dashed arrows the unconsumed blocks an output block absorbs.
Output blocks carry a thick border and their pyramid name. Blocks that no used output
depends on (e.g. the level-2 output when min_level=3) are drawn faded.
"""

import dataclasses

from PIL import Image, ImageDraw, ImageFont

from spinenet_tf import specs
from spinenet_tf.block_graph import resolve_block_graph

COLUMN_WIDTH = 92
ROW_HEIGHT = 86
BOX_WIDTH = 70
BOX_HEIGHT = 42
MARGIN_LEFT = 90
MARGIN_TOP = 70
MARGIN_BOTTOM = 70
MARGIN_RIGHT = 40

COLOURS = {
    "bottleneck": (173, 206, 240),
    "residual": (184, 226, 176),
    "stem": (215, 215, 215),
    "output": (200, 40, 40),
    "edge": (70, 70, 70),
    "merge": (200, 40, 40),
    "text": (20, 20, 20),
    "faded": (235, 235, 235),
}


@dataclasses.dataclass(frozen=True)
class PlacedBlock:
    name: str
    label: str
    column: int
    level: int
    block_type: str
    is_output: bool
    used: bool


def layout(graph):
    """Places the stem (column 0) and every block (column = build order, row = level)."""
    placed = [PlacedBlock("stem", "stem\nconv+pool", 0, specs.STEM_LEVEL, "stem", False, True)]
    for node in graph.nodes:
        label = node.name if node.is_stem else f"{node.spec_number}"
        output = next((level for level, i in graph.outputs.items() if i == node.index), None)
        if output is not None:
            label += f"\nP{output}"
        placed.append(
            PlacedBlock(
                node.name,
                label,
                node.index + 1,
                node.level,
                node.block_type,
                output is not None,
                node.index in graph.used,
            )
        )
    return placed


def edges(graph):
    """(parent, child, is_merge) name triples; the stem feeds the first stem block."""
    pairs = [("stem", graph.nodes[0].name, False)]
    pairs += [(graph.nodes[i - 1].name, graph.nodes[i].name, False) for i in range(1, specs.NUM_STEM_BLOCKS)]
    for node in graph.nodes:
        pairs += [(graph.nodes[p].name, node.name, k >= 2) for k, p in enumerate(node.parents)]
    return pairs


def _font(size):
    return ImageFont.load_default(size=size)


def draw_block_graph(block_specs, min_level, max_level, title, path):
    """Renders the graph of `block_specs` to a PNG at `path`; returns the image size."""
    graph = resolve_block_graph(block_specs, min_level, max_level)
    placed = {block.name: block for block in layout(graph)}
    levels = sorted({block.level for block in placed.values()})
    top, bottom = max(levels), min(levels)
    columns = max(block.column for block in placed.values()) + 1
    width = MARGIN_LEFT + columns * COLUMN_WIDTH + MARGIN_RIGHT
    height = MARGIN_TOP + (top - bottom + 1) * ROW_HEIGHT + MARGIN_BOTTOM
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)

    def centre(block):
        x = MARGIN_LEFT + block.column * COLUMN_WIDTH + COLUMN_WIDTH / 2
        y = MARGIN_TOP + (top - block.level) * ROW_HEIGHT + ROW_HEIGHT / 2
        return x, y

    draw.text((MARGIN_LEFT, 20), title, fill=COLOURS["text"], font=_font(20))
    for level in range(bottom, top + 1):
        y = MARGIN_TOP + (top - level) * ROW_HEIGHT + ROW_HEIGHT / 2
        draw.line([(MARGIN_LEFT - 10, y), (width - MARGIN_RIGHT, y)], fill=(240, 240, 240), width=1)
        draw.text((12, y - 9), f"L{level}  /{2**level}", fill=COLOURS["text"], font=_font(15))

    for parent, child, is_merge in edges(graph):
        start, end = placed[parent], placed[child]
        (x0, y0), (x1, y1) = centre(start), centre(end)
        x0, x1 = x0 + BOX_WIDTH / 2, x1 - BOX_WIDTH / 2
        colour = COLOURS["merge"] if is_merge else COLOURS["edge"]
        if not (start.used and end.used):
            colour = COLOURS["faded"]
        _arrow(draw, (x0, y0), (x1, y1), colour, dashed=is_merge)

    for block in placed.values():
        x, y = centre(block)
        box = [x - BOX_WIDTH / 2, y - BOX_HEIGHT / 2, x + BOX_WIDTH / 2, y + BOX_HEIGHT / 2]
        fill = COLOURS[block.block_type] if block.used else COLOURS["faded"]
        outline, thickness = (
            (COLOURS["output"], 4) if block.is_output and block.used else (COLOURS["edge"], 1)
        )
        draw.rounded_rectangle(box, radius=8, fill=fill, outline=outline, width=thickness)
        draw.multiline_text(
            (x, y), block.label, fill=COLOURS["text"], font=_font(13), anchor="mm", align="center"
        )

    legend_y = height - MARGIN_BOTTOM + 25
    x = MARGIN_LEFT
    for text, kind in [
        ("bottleneck", "bottleneck"),
        ("residual", "residual"),
        ("output block", "output"),
        ("unconsumed block absorbed by an output block", "merge"),
    ]:
        if kind == "merge":
            _arrow(draw, (x, legend_y + 9), (x + 30, legend_y + 9), COLOURS["merge"], dashed=True)
        elif kind == "output":
            draw.rectangle([x, legend_y, x + 30, legend_y + 18], outline=COLOURS["output"], width=4)
        else:
            draw.rectangle([x, legend_y, x + 30, legend_y + 18], fill=COLOURS[kind], outline=COLOURS["edge"])
        draw.text((x + 38, legend_y), text, fill=COLOURS["text"], font=_font(14))
        x += 60 + int(draw.textlength(text, font=_font(14)))
    image.save(path)
    return image.size


def _arrow(draw, start, end, colour, dashed):
    """A straight arrow; dashed lines are drawn as segments (Pillow has no dash style)."""
    (x0, y0), (x1, y1) = start, end
    length = max(((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5, 1e-6)
    if dashed:
        steps = int(length // 8)
        for i in range(0, steps, 2):
            a, b = i / steps, min((i + 1) / steps, 1.0)
            draw.line(
                [(x0 + a * (x1 - x0), y0 + a * (y1 - y0)), (x0 + b * (x1 - x0), y0 + b * (y1 - y0))],
                fill=colour,
                width=2,
            )
    else:
        draw.line([start, end], fill=colour, width=2)
    ux, uy = (x1 - x0) / length, (y1 - y0) / length
    head = [
        (x1, y1),
        (x1 - 10 * ux + 5 * uy, y1 - 10 * uy - 5 * ux),
        (x1 - 10 * ux - 5 * uy, y1 - 10 * uy + 5 * ux),
    ]
    draw.polygon(head, fill=colour)
