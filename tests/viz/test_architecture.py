import numpy as np
import pytest
from PIL import Image

from spinenet_tf import cli
from spinenet_tf.block_graph import resolve_block_graph
from spinenet_tf.specs import SPINENET_BLOCK_SPECS
from spinenet_tf.viz.architecture import COLOURS, edges, layout


def test_layout_places_blocks_by_order_and_level():
    graph = resolve_block_graph(SPINENET_BLOCK_SPECS, 3, 7)
    placed = {block.name: block for block in layout(graph)}
    assert placed["stem"].column == 0
    assert [placed[f"block{n}"].column for n in range(1, 17)] == list(range(3, 19))
    assert [placed[f"block{n}"].level for n in range(1, 17)] == [spec.level for spec in SPINENET_BLOCK_SPECS]
    assert {name for name, block in placed.items() if block.is_output and block.used} == {
        "block11",
        "block12",
        "block13",
        "block14",
        "block15",
    }
    assert not placed["block16"].used
    connections = edges(graph)
    assert ("block10", "block13", True) in connections
    assert sum(is_merge for *_, is_merge in connections) == 1
    assert len(connections) == 2 + 2 * 16 + 1  # stem chain, two parents per block, one merge


def test_arch_command_writes_the_figure(tmp_path, capsys):
    out = tmp_path / "spine.png"
    assert cli.main(["arch", "--model", "96", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "block13" in text and "block6,block11,block10" in text and "P5" in text
    pixels = np.asarray(Image.open(out).convert("RGB"))
    assert pixels.shape[1] > pixels.shape[0] > 300
    red = np.all(pixels == COLOURS["output"], axis=-1).sum()
    green = np.all(pixels == COLOURS["residual"], axis=-1).sum()
    assert red > 1000 and green > 5000  # five thick output borders; four residual blocks


def test_arch_command_reads_custom_block_specs_and_reports_errors(tmp_path):
    table = tmp_path / "specs.yaml"
    table.write_text("block_specs:\n  - [3, bottleneck, [0, 1], true]\n  - [4, residual, [0, 5], true]\n")
    with pytest.raises(SystemExit, match="Invalid architecture: Block 2 .*offset 5 points forward"):
        cli.main(["arch", "--block-specs", str(table), "--max-level", "4", "--out", str(tmp_path / "a.png")])
    table.write_text("block_specs:\n  - [3, bottleneck, [0, 1], true]\n  - [4, residual, [0, 2], true]\n")
    cli.main(["arch", "--block-specs", str(table), "--max-level", "4", "--out", str(tmp_path / "b.png")])
    assert (tmp_path / "b.png").stat().st_size > 1000
