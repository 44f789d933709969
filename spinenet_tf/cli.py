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


def data_synthetic(args):
    from spinenet_tf.data.synthetic import write_synthetic_coco

    try:
        summary = write_synthetic_coco(
            args.out, num_train=args.num_train, num_val=args.num_val, seed=args.seed
        )
    except ValueError as error:
        raise SystemExit(f"spinenet data synthetic: {error}") from error
    for split, info in summary.items():
        print(
            f"{split}: {info['images']} images, {info['annotations']} objects -> {info['annotations_file']}"
        )


def data_coco_to_tfrecord(args):
    from spinenet_tf.data.tfrecord import coco_to_tfrecord

    try:
        summary = coco_to_tfrecord(args.images, args.annotations, args.out, args.shards, not args.no_masks)
    except (OSError, ValueError) as error:
        raise SystemExit(f"spinenet data coco-to-tfrecord: {error}") from error
    print(summary["report"].summary())
    print(
        f"wrote {summary['images']} images to {len(summary['shards'])} shard(s): "
        f"{args.out}-*-of-{args.shards:05d}.tfrecord"
    )


def _experiment(args):
    from spinenet_tf.training.config import ConfigError, load_config

    overrides = list(args.set) + ([f"runtime.strategy={args.strategy}"] if args.strategy else [])
    try:
        return load_config(args.config, overrides)
    except ConfigError as error:
        raise SystemExit(f"Invalid config: {error}") from error


def train_command(args):
    from spinenet_tf.training.config import ConfigError
    from spinenet_tf.training.trainer import TrainingDiverged, train

    config = _experiment(args)
    try:
        train(config, args.model_dir, verbose=args.verbose)
    except (ConfigError, TrainingDiverged) as error:
        raise SystemExit(f"spinenet train: {error}") from error


def eval_command(args):
    from spinenet_tf.training.trainer import evaluate

    evaluate(_experiment(args), args.model_dir)


def export_command(args):
    from spinenet_tf.export.from_run import export_run

    try:
        path, checkpoint = export_run(
            args.model_dir, args.out, args.format, args.quantize, args.config, args.version,
            args.calibration_images,
        )  # fmt: skip
    except (OSError, ValueError) as error:
        raise SystemExit(f"spinenet export: {error}") from error
    print(f"exported {checkpoint} -> {path}")


def _read_image(path):
    import numpy as np
    import tensorflow as tf

    try:
        data = tf.io.read_file(path)
        return np.asarray(tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False))
    except (tf.errors.OpError, ValueError) as error:
        message = getattr(error, "message", str(error)).strip().splitlines()[0]
        raise ValueError(f"{path}: cannot read it as an image ({message})") from error


def predict_command(args):
    import json
    import os

    from spinenet_tf.export.predictor import load_predictor
    from spinenet_tf.viz.detections import draw_detections

    try:
        predictor = load_predictor(args.model)
    except (OSError, ValueError) as error:
        raise SystemExit(f"spinenet predict: {error}") from error
    os.makedirs(args.out, exist_ok=True)
    results, failures = [], 0
    for path in args.images:
        try:
            image = _read_image(path)
        except ValueError as error:
            print(f"skipped {error}", file=sys.stderr)
            failures += 1
            continue
        detections = predictor(image)
        stem = os.path.splitext(os.path.basename(path))[0]
        picture = draw_detections(image, detections, predictor.labels, args.min_score)
        picture.save(os.path.join(args.out, f"{stem}.png"))
        found = [
            {"box_yxyx": [round(float(v), 2) for v in box], "score": round(float(score), 4),
             "class_id": int(class_id), "label": predictor.labels.get(int(class_id), str(int(class_id)))}
            for box, score, class_id in zip(detections["boxes"], detections["scores"], detections["classes"])
            if score >= args.min_score
        ]  # fmt: skip
        results.append(
            {"image": path, "height": image.shape[0], "width": image.shape[1], "detections": found}
        )
        print(f"{path}: {len(found)} detections -> {os.path.join(args.out, stem + '.png')}")
    with open(os.path.join(args.out, "detections.json"), "w") as f:
        json.dump({"model": args.model, "images": results}, f, indent=1)
    if failures:
        raise SystemExit(f"spinenet predict: {failures} of {len(args.images)} images could not be read.")


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

    for name, run, help_text in [
        ("train", train_command, "train an experiment (resumes from --model-dir)"),
        ("eval", eval_command, "COCO-evaluate the latest checkpoint of --model-dir"),
    ]:
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--config", help="experiment YAML (experiments/retinanet/*.yaml)")
        command.add_argument("--model-dir", required=True, help="checkpoints, logs and metrics.json go here")
        command.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config value, e.g. --set train.total_steps=100",
        )
        command.add_argument("--strategy", help="shorthand for --set runtime.strategy=...")
        command.add_argument(
            "--verbose", type=int, default=1, help="Keras progress bar: 0 off, 1 bar, 2 line"
        )
        command.set_defaults(run=run)

    export = commands.add_parser("export", help="export a training run: SavedModel (TF Serving) or TFLite")
    export.add_argument("--model-dir", required=True, help="a training run (config.yaml and checkpoints/)")
    export.add_argument("--out", required=True, help="export/<name>: SavedModel versions or .tflite files")
    export.add_argument("--format", choices=["saved_model", "tflite"], default="saved_model")
    export.add_argument("--quantize", choices=["none", "fp16", "dynamic", "int8"], default="none",
                        help="TFLite quantisation (int8 calibrates on the training images)")  # fmt: skip
    export.add_argument("--config", help="experiment YAML (default: the run's config.yaml)")
    export.add_argument("--version", type=int, help="SavedModel version (default: the next free one)")
    export.add_argument("--calibration-images", type=int, default=100, help="int8 calibration images")
    export.set_defaults(run=export_command)

    predict = commands.add_parser("predict", help="run an exported model on images; PNGs and JSON out")
    predict.add_argument("--model", required=True, help="a SavedModel directory or a .tflite file")
    predict.add_argument("images", nargs="+", help="image files (JPEG, PNG, GIF, BMP)")
    predict.add_argument("--out", required=True, help="directory for the drawn PNGs and detections.json")
    predict.add_argument("--min-score", type=float, default=0.3, help="detections below it are left out")
    predict.set_defaults(run=predict_command)

    data = commands.add_parser("data", help="datasets: the embedded synthetic set, COCO -> TFRecord")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    synthetic = data_commands.add_parser(
        "synthetic", help="write the synthetic detection dataset in COCO format"
    )
    synthetic.add_argument("--out", required=True, help="dataset directory")
    synthetic.add_argument("--num-train", type=int, default=1000)
    synthetic.add_argument("--num-val", type=int, default=200)
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.set_defaults(run=data_synthetic)
    convert = data_commands.add_parser("coco-to-tfrecord", help="convert a COCO split to TFRecord shards")
    convert.add_argument("--images", required=True, help="directory the file_names are relative to")
    convert.add_argument("--annotations", required=True, help="COCO instances JSON")
    convert.add_argument("--out", required=True, help="output prefix: PREFIX-00000-of-0000N.tfrecord")
    convert.add_argument("--shards", type=int, default=1)
    convert.add_argument("--no-masks", action="store_true", help="leave instance masks out")
    convert.set_defaults(run=data_coco_to_tfrecord)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
