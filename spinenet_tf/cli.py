"""The `spinenet` console script: train, eval, export, predict, convert, presets, data, arch.

Each command imports what it needs inside its function, so `spinenet --help` and
`spinenet arch` answer without loading TensorFlow, and TensorFlow's C++ start-up logs can
be silenced before it is loaded. A user error (a bad config, a missing file, data that
cannot be used) is one line on stderr and exit status 2, never a traceback.
"""

import argparse
import os
import sys

from spinenet_tf import specs
from spinenet_tf.errors import ConfigError, ModelError, SpineNetError

USER_ERRORS = (SpineNetError, OSError)


def _load_block_specs(path):
    """A YAML list of [level, block_type, [offset0, offset1], is_output] rows."""
    import yaml

    if path is None:
        return specs.SPINENET_BLOCK_SPECS
    with open(path) as f:
        try:
            rows = yaml.safe_load(f)
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if isinstance(rows, dict) and "block_specs" in rows:
        rows = rows["block_specs"]
    if not isinstance(rows, list):
        raise ConfigError(f"{path}: expected a list of block rows (or a mapping with key 'block_specs').")
    return rows


def arch(args):
    from spinenet_tf.block_graph import resolve_block_graph
    from spinenet_tf.viz.architecture import draw_block_graph

    scaling = specs.SCALING[args.model]
    block_specs = _load_block_specs(args.block_specs)
    try:
        graph = resolve_block_graph(block_specs, args.min_level, args.max_level)
    except ValueError as error:
        raise ModelError(f"Invalid architecture: {error}") from None
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

    summary = write_synthetic_coco(args.out, num_train=args.num_train, num_val=args.num_val, seed=args.seed)
    for split, info in summary.items():
        print(
            f"{split}: {info['images']} images, {info['annotations']} objects -> {info['annotations_file']}"
        )


def data_synthetic_classification(args):
    from spinenet_tf.data.synthetic_classification import write_synthetic_classification

    summary = write_synthetic_classification(
        args.out, num_train=args.num_train, num_val=args.num_val, image_size=args.image_size, seed=args.seed
    )
    for split in ("train", "val"):
        images, classes, folder = summary[split]["images"], len(summary["classes"]), summary[split]["dir"]
        print(f"{split}: {images} images in {classes} class folders -> {folder}")


def data_folder_to_tfrecord(args):
    from spinenet_tf.data.classification import folder_to_tfrecord

    summary = folder_to_tfrecord(args.root, args.out, args.shards)
    print(summary["report"].summary())
    print(
        f"wrote {summary['images']} images of {len(summary['classes'])} classes to {len(summary['shards'])} "
        f"shard(s): {args.out}-*-of-{args.shards:05d}.tfrecord"
    )


def data_coco_to_tfrecord(args):
    from spinenet_tf.data.tfrecord import coco_to_tfrecord

    summary = coco_to_tfrecord(args.images, args.annotations, args.out, args.shards, not args.no_masks)
    print(summary["report"].summary())
    print(
        f"wrote {summary['images']} images to {len(summary['shards'])} shard(s): "
        f"{args.out}-*-of-{args.shards:05d}.tfrecord"
    )


def _experiment(args):
    """The config of a train or eval command: --config (a shipped experiment's name or a YAML
    file), else the run's own config.yaml, else (train only) the embedded default."""
    from spinenet_tf.training.config import DEFAULT_EXPERIMENT, load_config
    from spinenet_tf.training.trainer import run_config_path

    name = args.config
    if name is None:
        new_run = not os.path.exists(os.path.join(args.model_dir, "config.yaml"))
        name = DEFAULT_EXPERIMENT if new_run and args.command == "train" else run_config_path(args.model_dir)
    print(f"config: {name}", flush=True)
    overrides = list(args.set) + ([f"runtime.strategy={args.strategy}"] if args.strategy else [])
    return load_config(name, overrides)


PROGRESS = {"off": 0, "bar": 1, "lines": 2}


def train_command(args):
    from spinenet_tf.training.trainer import train

    train(_experiment(args), args.model_dir, verbose=PROGRESS[args.progress])


def eval_command(args):
    from spinenet_tf.training.trainer import evaluate

    evaluate(_experiment(args), args.model_dir)


def export_command(args):
    from spinenet_tf.export.from_run import export_preset, export_run

    if args.preset:
        if args.config:
            raise ModelError("--config describes a training run; a --preset carries its own architecture.")
        path = export_preset(args.preset, args.out, args.format, args.quantize, args.version, args.checkpoint)
        print(f"exported preset {args.preset} -> {path}")
        return
    if args.checkpoint:
        raise ModelError("--checkpoint is the local copy of a --preset's checkpoint; give --preset too.")
    path, checkpoint = export_run(
        args.model_dir,
        args.out,
        args.format,
        args.quantize,
        args.config,
        args.version,
        args.calibration_images,
    )
    print(f"exported {checkpoint} -> {path}")


def _read_image(path):
    import numpy as np
    import tensorflow as tf

    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    try:
        data = tf.io.read_file(path)
        return np.asarray(tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False))
    except (tf.errors.OpError, ValueError) as error:
        message = getattr(error, "message", str(error)).strip().splitlines()[0]
        raise ValueError(f"{path}: cannot read it as an image ({message})") from error


def _segmentations(detections, keep, height, width):
    """COCO compressed RLEs ({"size": [H, W], "counts"}, as in COCO results files) of the kept
    detections' masks, pasted on the photo as the picture and COCO evaluation paste them."""
    from spinenet_tf.masks import paste_and_encode

    encoded = paste_and_encode(detections["masks"][keep], detections["boxes"][keep], height, width)
    return [{"size": rle["size"], "counts": rle["counts"].decode("ascii")} for rle in encoded]


def _detections_entry(args, path, image, detections, labels):
    """A photo's detections above --min-score for detections.json; draws them to OUT/<stem>.png."""
    import numpy as np

    from spinenet_tf.viz.detections import draw_detections

    stem = os.path.splitext(os.path.basename(path))[0]
    picture = draw_detections(image, detections, labels, args.min_score)
    picture.save(os.path.join(args.out, f"{stem}.png"))
    keep = np.asarray(detections["scores"]) >= args.min_score
    found = [
        {
            "box_yxyx": [round(float(v), 2) for v in box],
            "score": round(float(score), 4),
            "class_id": int(class_id),
            "label": labels.get(int(class_id), str(int(class_id))),
        }
        for box, score, class_id in zip(
            detections["boxes"][keep], detections["scores"][keep], detections["classes"][keep]
        )
    ]
    if "masks" in detections:
        for entry, segmentation in zip(found, _segmentations(detections, keep, *image.shape[:2])):
            entry["segmentation"] = segmentation
    print(f"{path}: {len(found)} detections -> {os.path.join(args.out, stem + '.png')}")
    return {"detections": found}


def _classes_entry(path, answer, labels):
    """A photo's top-k classes, best first, for predictions.json; printed on one line."""
    classes = [
        {
            "class_id": int(class_id),
            "label": labels.get(int(class_id), str(int(class_id))),
            "score": round(float(score), 4),
        }
        for class_id, score in zip(answer["classes"], answer["scores"])
    ]
    print(f"{path}: " + ", ".join(f"{entry['label']} {entry['score']:.3f}" for entry in classes))
    return {"classes": classes}


def predict_command(args):
    import json

    from spinenet_tf.export.predictor import load_predictor, preset_predictor

    if args.checkpoint and not args.preset:
        raise ModelError("--checkpoint is the local copy of a --preset's checkpoint; give --preset too.")
    predictor = preset_predictor(args.preset, args.checkpoint) if args.preset else load_predictor(args.model)
    os.makedirs(args.out, exist_ok=True)
    results, failures = [], 0
    for path in args.images:
        try:
            image = _read_image(path)
        except ValueError as error:
            print(f"skipped {error}", file=sys.stderr)
            failures += 1
            continue
        answer = predictor(image)
        if predictor.is_classifier:
            entry = _classes_entry(path, answer, predictor.labels)
        else:
            entry = _detections_entry(args, path, image, answer, predictor.labels)
        results.append({"image": path, "height": image.shape[0], "width": image.shape[1], **entry})
    name = "predictions.json" if predictor.is_classifier else "detections.json"
    with open(os.path.join(args.out, name), "w") as f:
        source = {"preset": args.preset} if args.preset else {"model": args.model}
        json.dump({**source, "images": results}, f, indent=1)
    if failures:
        raise SystemExit(f"spinenet predict: {failures} of {len(args.images)} images could not be read.")


def convert_command(args):
    from spinenet_tf.pretrained.convert import convert_checkpoint

    _, report = convert_checkpoint(
        args.checkpoint, args.source_format, args.config, args.out, args.modules, args.set
    )
    print(report.summary())
    print(f"wrote {args.out}")


def presets_command(args):
    from spinenet_tf.pretrained.presets import PRESETS, TASKS

    rows = [("preset", "source", "input", "published", "params", "available")]
    for preset in PRESETS:
        rows.append(
            (
                preset.name,
                preset.source_format,
                str(preset.image_size),
                f"{preset.published_ap} {preset.metric}",
                f"{preset.params_m} M",
                "yes" if preset.available else f"backbone only (needs {TASKS[preset.task][1]})",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def build_parser():
    # --tf-logs is accepted before or after the command name: `spinenet --tf-logs train ...`
    # or `spinenet train --tf-logs ...`.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--tf-logs",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show TensorFlow's C++ logs (oneDNN, CUDA, XLA), hidden by default",
    )
    parser = argparse.ArgumentParser(
        prog="spinenet", description="SpineNet models in Keras 3.", parents=[common]
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def add_command(name, run, help_text, tensorflow=True, under=commands):
        command = under.add_parser(name, help=help_text, parents=[common])
        command.set_defaults(run=run, tensorflow=tensorflow, prog=command.prog)
        return command

    draw = add_command(
        "arch", arch, "draw a SpineNet block graph as in the paper's figures", tensorflow=False
    )
    draw.add_argument(
        "--model", default="49", choices=specs.MODEL_IDS, help="model id (scaling in the title)"
    )
    draw.add_argument("--out", default="spinenet.png", help="PNG file to write")
    draw.add_argument("--min-level", type=int, default=3)
    draw.add_argument("--max-level", type=int, default=7)
    draw.add_argument("--block-specs", help="YAML file with a custom block table (default: SpineNet-49's)")

    for name, run, help_text in [
        ("train", train_command, "train an experiment (resumes from --model-dir)"),
        ("eval", eval_command, "COCO-evaluate the latest checkpoint of --model-dir"),
    ]:
        command = add_command(name, run, help_text)
        command.add_argument(
            "--config",
            help="a shipped experiment's name (synthetic, retinanet/spinenet49_coco, custom_small, ...) or a "
            "YAML file; default: the run's config.yaml in --model-dir, else (train) the synthetic default",
        )
        command.add_argument("--model-dir", required=True, help="checkpoints, logs and metrics.json go here")
        command.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config value, e.g. --set train.total_steps=100",
        )
        command.add_argument("--strategy", help="shorthand for --set runtime.strategy=...")
        if name == "train":
            command.add_argument(
                "--progress",
                choices=sorted(PROGRESS),
                default="bar",
                help="training progress: a bar updated in place, one line per checkpoint, or nothing",
            )

    export = add_command(
        "export", export_command, "export a training run or a preset: SavedModel (TF Serving) or TFLite"
    )
    source = export.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-dir", help="a training run (config.yaml and checkpoints/)")
    source.add_argument(
        "--preset", help="a published checkpoint (see `spinenet presets`); detectors get COCO's labels"
    )
    export.add_argument("--checkpoint", help="with --preset: a local copy of its archive or checkpoint")
    export.add_argument("--out", required=True, help="export/<name>: SavedModel versions or .tflite files")
    export.add_argument("--format", choices=["saved_model", "tflite"], default="saved_model")
    export.add_argument(
        "--quantize",
        choices=["none", "fp16", "dynamic", "int8", "bf16"],
        default="none",
        help="TFLite: fp16, dynamic or int8 (calibrated on the training images); SavedModel: bf16 "
        "(bfloat16 compute, float32 weights)",
    )
    export.add_argument("--config", help="experiment name or YAML (default: the run's config.yaml)")
    export.add_argument("--version", type=int, help="SavedModel version (default: the next free one)")
    export.add_argument("--calibration-images", type=int, default=100, help="int8 calibration images")

    predict = add_command(
        "predict",
        predict_command,
        "run an exported model or a preset on images: detections drawn to PNGs and listed in JSON, or a "
        "classifier's top 5 classes in JSON",
    )
    model = predict.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", help="a SavedModel directory or a .tflite file")
    model.add_argument(
        "--preset", help="a published checkpoint (see `spinenet presets`), downloaded and converted once"
    )
    predict.add_argument(
        "--checkpoint", help="with --preset: a local copy of its archive or checkpoint (no download)"
    )
    predict.add_argument("images", nargs="+", help="image files (JPEG, PNG, GIF, BMP)")
    predict.add_argument(
        "--out",
        required=True,
        help="directory for the drawn PNGs and detections.json (classifiers: predictions.json)",
    )
    predict.add_argument(
        "--min-score", type=float, default=0.3, help="detections below it are left out (classifiers: unused)"
    )

    convert = add_command(
        "convert", convert_command, "convert a published Model Garden or tensorflow/tpu checkpoint to .keras"
    )
    convert.add_argument(
        "--from",
        dest="source_format",
        required=True,
        metavar="{model-garden,tpu}",
        help="the code base that wrote the checkpoint: TF Model Garden (TF2) or tensorflow/tpu (TF1)",
    )
    convert.add_argument("checkpoint", help="checkpoint prefix, its .index file, or a directory holding it")
    convert.add_argument(
        "--config",
        required=True,
        help="the experiment (name or YAML) of the checkpoint's architecture, e.g. retinanet/spinenet49_coco",
    )
    convert.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value"
    )
    convert.add_argument(
        "--modules",
        metavar="{all,backbone}",
        default="all",
        help="load the whole detector, or the backbone only (the head keeps its initialisation)",
    )
    convert.add_argument("--out", required=True, help="the .keras file to write")

    add_command(
        "presets", presets_command, "list the published checkpoints that --preset and from_preset load", False
    )

    data = commands.add_parser(
        "data",
        help="datasets: the embedded synthetic sets, COCO or class folders -> TFRecord",
        parents=[common],
    )
    data_commands = data.add_subparsers(dest="data_command", required=True)
    synthetic = add_command(
        "synthetic", data_synthetic, "write the synthetic dataset in COCO format", False, data_commands
    )
    synthetic.add_argument("--out", required=True, help="dataset directory")
    synthetic.add_argument("--num-train", type=int, default=1000)
    synthetic.add_argument("--num-val", type=int, default=200)
    synthetic.add_argument("--seed", type=int, default=0)
    to_tfrecord = add_command(
        "coco-to-tfrecord",
        data_coco_to_tfrecord,
        "convert a COCO split to TFRecord shards",
        True,
        data_commands,
    )
    to_tfrecord.add_argument("--images", required=True, help="directory the file_names are relative to")
    to_tfrecord.add_argument("--annotations", required=True, help="COCO instances JSON")
    to_tfrecord.add_argument("--out", required=True, help="output prefix: PREFIX-00000-of-0000N.tfrecord")
    to_tfrecord.add_argument("--shards", type=int, default=1)
    to_tfrecord.add_argument("--no-masks", action="store_true", help="leave instance masks out")
    shapes = add_command(
        "synthetic-classification",
        data_synthetic_classification,
        "write the synthetic classification set (class folders of PNGs)",
        False,
        data_commands,
    )
    shapes.add_argument("--out", required=True, help="dataset directory")
    shapes.add_argument("--num-train", type=int, default=800)
    shapes.add_argument("--num-val", type=int, default=200)
    shapes.add_argument("--image-size", type=int, default=96)
    shapes.add_argument("--seed", type=int, default=0)
    folders = add_command(
        "folder-to-tfrecord",
        data_folder_to_tfrecord,
        "convert a folder of class folders to classification TFRecord shards",
        True,
        data_commands,
    )
    folders.add_argument("--root", required=True, help="a folder of class folders (ROOT/<class>/<images>)")
    folders.add_argument("--out", required=True, help="output prefix: PREFIX-00000-of-0000N.tfrecord")
    folders.add_argument("--shards", type=int, default=1)
    return parser


def load_tensorflow(show_logs):
    """Imports TensorFlow with its C++ logs hidden, unless `show_logs`.

    TF_CPP_MIN_LOG_LEVEL must be set before TensorFlow is imported, and even then the
    messages TensorFlow's libraries print while they load (oneDNN, CUDA stubs, "All log
    messages before absl::InitializeLog()") ignore it: stderr is sent to /dev/null for
    the import itself.
    """
    if show_logs:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        import tensorflow  # noqa: F401

        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.tensorflow:
        load_tensorflow(getattr(args, "tf_logs", False))
    try:
        args.run(args)
    except USER_ERRORS as error:
        line = f"{args.prog}: {' '.join(str(error).split())}"
        print(line, file=sys.stderr)
        stop = SystemExit(line)  # the line for callers of main(), exit status 2 for the shell
        stop.code = 2
        raise stop from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
