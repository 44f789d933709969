"""The `spinenet` console script."""

import argparse
import sys

import yaml

from spinenet_tf import specs


def _load_block_specs(path):
    """A YAML list of [level, block_type, [offset0, offset1], is_output] rows."""
    if path is None:
        return specs.SPINENET_BLOCK_SPECS
    with open(path) as f:
        rows = yaml.safe_load(f)
    if isinstance(rows, dict) and "block_specs" in rows:
        rows = rows["block_specs"]
    if not isinstance(rows, list):
        raise SystemExit(f"{path}: expected a list of block rows (or a mapping with key 'block_specs').")
    return rows


def arch(args):
    from spinenet_tf.block_graph import resolve_block_graph
    from spinenet_tf.viz.architecture import draw_block_graph

    scaling = specs.SCALING[args.model]
    block_specs = _load_block_specs(args.block_specs)
    try:
        graph = resolve_block_graph(block_specs, args.min_level, args.max_level)
    except ValueError as error:
        raise SystemExit(f"Invalid architecture: {error}") from error
    title = (
        f"SpineNet-{args.model}  (filter scale {scaling.filter_size_scale}, alpha {scaling.resample_alpha}, "
        f"repeats {scaling.block_repeats}, outputs P{args.min_level}-P{args.max_level})"
    )
    size = draw_block_graph(graph.block_specs, args.min_level, args.max_level, title, args.out)
    print(f"{'block':<8} {'level':>5} {'type':<10} {'parents':<16} output")
    for node in graph.nodes:
        previous = "stem" if node.index == 0 else graph.nodes[node.index - 1].name
        parents = ",".join(graph.nodes[p].name for p in node.parents) or previous
        output = next((f"P{lv}" for lv, i in graph.outputs.items() if i == node.index), "")
        unused = "" if node.index in graph.used else "  (not built: no used output needs it)"
        print(f"{node.name:<8} {node.level:>5} {node.block_type:<10} {parents:<16} {output}{unused}")
    print(f"wrote {args.out} ({size[0]}x{size[1]} px)")


def build_parser():
    parser = argparse.ArgumentParser(prog="spinenet", description="SpineNet models in Keras 3.")
    commands = parser.add_subparsers(dest="command", required=True)
    draw = commands.add_parser("arch", help="draw a SpineNet block graph as in the paper's figures")
    draw.add_argument(
        "--model", default="49", choices=specs.MODEL_IDS, help="model id (scaling in the title)"
    )
    draw.add_argument("--out", default="spinenet.png", help="PNG file to write")
    draw.add_argument("--min-level", type=int, default=3)
    draw.add_argument("--max-level", type=int, default=7)
    draw.add_argument("--block-specs", help="YAML file with a custom block table (default: SpineNet-49's)")
    draw.set_defaults(run=arch)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
