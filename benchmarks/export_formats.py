"""Exported model formats side by side: artifact size, CPU latency and COCO AP of each.

Exports a training run (default: the `make train` run) as a SavedModel and as TFLite
none/fp16/dynamic/int8, then runs every artifact on the run's val split.

Usage: python -m benchmarks.export_formats [--model-dir runs/synthetic] [--val-images N]
                                           [--repeats 20] [--threads 2] [--out BENCHMARKS.md]
"""

import argparse
import os
import tempfile

from benchmarks.report import BENCHMARKS_FILE, write_section
from benchmarks.timing import median_seconds
from spinenet_tf.data.pipeline import decode, make_source
from spinenet_tf.export import coco_metrics, export_run, load_predictor
from spinenet_tf.training.config import load_config

FORMATS = [
    ("SavedModel", "saved_model", "none"),
    ("TFLite fp32", "tflite", "none"),
    ("TFLite fp16", "tflite", "fp16"),
    ("TFLite dynamic range", "tflite", "dynamic"),
    ("TFLite int8", "tflite", "int8"),
]
MAX_INT8_AP_DROP = 3.0  # points of AP and of AP50, the bar of the export issue


def artifact_bytes(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(
        os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names
    )


class Subset:
    """The first `count` images of a source (all when count is None)."""

    def __init__(self, source, count):
        self.source, self.count = source, count

    def dataset(self):
        dataset = self.source.dataset()
        return dataset if self.count is None else dataset.take(self.count)


def scored_export(model_dir, work, export_format, quantize, val, calibration_images, threads):
    """(path, checkpoint, predictor, COCO metrics on `val`) of the run in `model_dir` exported
    under `work` in one format."""
    path, checkpoint = export_run(
        model_dir,
        os.path.join(work, "export"),
        export_format,
        quantize,
        calibration_images=calibration_images,
    )
    predictor = load_predictor(path, threads)
    config = load_config(os.path.join(model_dir, "config.yaml"))
    return path, checkpoint, predictor, coco_metrics(predictor, val, config.data.val.annotations)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="runs/synthetic", help="a training run (make train)")
    parser.add_argument("--val-images", type=int, help="evaluate on the first N val images (default all)")
    parser.add_argument("--calibration-images", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per format after warm-up")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="TFLite interpreter threads")
    parser.add_argument(
        "--formats",
        nargs="+",
        choices=[name for name, _, _ in FORMATS],
        default=[name for name, _, _ in FORMATS],
    )
    parser.add_argument("--out", default=str(BENCHMARKS_FILE))
    args = parser.parse_args(argv)
    if not os.path.exists(os.path.join(args.model_dir, "config.yaml")):
        raise SystemExit(f"{args.model_dir} is not a training run; run `make train` first.")

    config = load_config(os.path.join(args.model_dir, "config.yaml"))
    val = Subset(make_source(config.data.val), args.val_images)
    sample = next(iter(val.dataset().map(decode)))["image"].numpy()
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as work:
        for name, export_format, quantize in [entry for entry in FORMATS if entry[0] in args.formats]:
            path, checkpoint, predictor, metrics = scored_export(
                args.model_dir, work, export_format, quantize, val, args.calibration_images, args.threads
            )
            seconds = median_seconds(lambda p=predictor: p(sample), args.repeats, warmup=2)
            results[name] = metrics
            rows.append((name, artifact_bytes(path), seconds, metrics["AP"], metrics["AP50"]))
            print(
                f"{name}: {rows[-1][1] / 1e6:.2f} MB, {seconds * 1e3:.1f} ms/image, "
                f"AP {metrics['AP']:.3f}, AP50 {metrics['AP50']:.3f}",
                flush=True,
            )
    reference = "TFLite fp32" if "TFLite fp32" in results else next(iter(results))
    reference_ap, reference_ap50 = results[reference]["AP"], results[reference]["AP50"]
    table = [
        f"| format | artifact MB | CPU ms/image | AP | AP50 | AP / AP50 vs {reference} (points) |",
        "|---|---|---|---|---|---|",
    ]
    for name, size, seconds, ap, ap50 in rows:
        difference = f"{100 * (ap - reference_ap):+.1f} / {100 * (ap50 - reference_ap50):+.1f}"
        table.append(
            f"| {name} | {size / 1e6:.2f} | {seconds * 1e3:.1f} | {ap:.3f} | {ap50:.3f} | {difference} |"
        )
    int8 = ""
    if "TFLite int8" in results:
        drop = 100 * max(
            reference_ap - results["TFLite int8"]["AP"], reference_ap50 - results["TFLite int8"]["AP50"]
        )
        verdict = "within" if drop <= MAX_INT8_AP_DROP else "NOT within"
        int8 = (
            " int8 (dynamic range in the head's prediction convs, float post-processing) calibrates on"
            f" {args.calibration_images} training images; its larger drop of AP and AP50 under"
            f" {reference} is {drop:.1f} points,"
            f" {verdict} the {MAX_INT8_AP_DROP:.0f}-point bar."
        )
    height, width = sample.shape[:2]
    notes = f"""\
Model: the run in `{args.model_dir}` ({os.path.basename(checkpoint)}; {config.data.image_size} px input,
backbone {config.model.backbone}). AP on {"all" if args.val_images is None else args.val_images}
images of its val split (`{config.data.val.annotations}`), through each artifact end to end:
the SavedModel's `serving_default` (resize and padding in the graph), the .tflite through
`load_predictor` (LiteRT, {args.threads} threads, XNNPACK) with the same letterboxing on
the host. Latency: median of {args.repeats} calls on one {height}x{width} image after 2 warm-up
calls, post-processing (decode, per-class NMS over 1000 candidates; in the .tflite LiteRT's
greedy NMS kernel) included.{int8}
Sizes: the SavedModel directory, the .tflite file."""
    body = "\n".join(table) + "\n\n" + notes
    write_section("export-formats", "Exported formats: size, CPU latency, accuracy", body, args.out)
    print(f"wrote section 'export-formats' of {args.out}")
    return results


if __name__ == "__main__":
    main()
