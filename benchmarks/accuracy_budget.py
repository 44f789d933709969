"""Accuracy from scratch on the same budget: SpineNet-49S vs R50-FPN RetinaNet, only the backbone differs.

Usage: python -m benchmarks.accuracy_budget [--models SpineNet-49S R50-FPN] [--steps 300] [--size 256]
           [--batch 8] [--pyramid-filters 64]
           [--images DIR --annotations FILE --val-images DIR --val-annotations FILE]
           [--work-dir runs/accuracy_budget] [--out BENCHMARKS.md] [--results benchmarks/results]

Both detectors are trained by the trainer (`spinenet_tf/training/trainer.py`) with the
config of `spinenet_tf/experiments/retinanet/synthetic.yaml` (its head, AdamW schedule, augmentation,
batch) at the same input size and number of steps; only `model.backbone` changes. The
pyramid feeding the head has the same width for both (SpineNet's endpoints, R50's FPN).
Without --images the synthetic dataset is used (written to a cache directory on first use);
with them, any small COCO-format dataset.
"""

import argparse
import json
import os
import shutil

import keras

from benchmarks.report import BENCHMARKS_FILE, write_section
from benchmarks.results import RESULTS_DIR, save_results
from benchmarks.timing import timed
from benchmarks.training_throughput import SYNTHETIC_EXPERIMENT
from spinenet_tf import profile
from spinenet_tf.training.config import load_config
from spinenet_tf.training.trainer import build_model, train

BACKBONES = {
    "SpineNet-49S": {"type": "spinenet", "model_id": "49S"},
    "R50-FPN": {"type": "resnet50"},
}


def _yaml(value):
    return json.dumps(value)  # JSON is YAML: an override value that load_config parses back


def overrides(args, backbone):
    """synthetic.yaml -> this benchmark's experiment: the budget, the backbone and the dataset."""
    backbone = dict(backbone)
    if backbone["type"] == "spinenet":
        backbone["endpoints_num_filters"] = args.pyramid_filters
    warmup = min(50, args.steps // 10)
    result = [
        f"model.backbone={_yaml(backbone)}",
        f"model.detector.fpn_num_filters={args.pyramid_filters}",
        f"data.image_size={args.size}",
        f"train.batch_size={args.batch}",
        f"train.total_steps={args.steps}",
        f"train.checkpoint_interval={args.steps}",
        f"train.optimizer.warmup_steps={warmup}",
        "train.optimizer.decay_steps=[0.85]",  # a fraction of the run, as synthetic.yaml's 600 of 700
    ]
    if args.images:
        with open(args.annotations) as f:
            largest_id = max(category["id"] for category in json.load(f)["categories"])
        result += [
            "data.synthetic=null",
            f"data.train={_yaml({'images': args.images, 'annotations': args.annotations})}",
            f"data.val={_yaml({'images': args.val_images, 'annotations': args.val_annotations})}",
            f"model.num_classes={largest_id + 1}",
        ]
    return result


def run(name, args):
    """Trains one detector from scratch in work_dir/name; its result row."""
    config = load_config(SYNTHETIC_EXPERIMENT, overrides(args, BACKBONES[name]))
    model_dir = os.path.join(args.work_dir, name)
    shutil.rmtree(model_dir, ignore_errors=True)  # from scratch: the trainer would resume
    metrics, seconds = timed(lambda: train(config, model_dir, verbose=2))
    keras.backend.clear_session()
    model_profile = profile(build_model(config), (args.size, args.size, 3))
    keras.backend.clear_session()
    return {
        "model": name,
        "AP": metrics["AP"],
        "AP50": metrics["AP50"],
        "AP75": metrics["AP75"],
        "gmacs": model_profile.gmacs,
        "trainable_params": model_profile.trainable_params,
        "wall_seconds": seconds,
    }


def write_report(rows, args):
    """Prints the table and writes the section of the benchmarks file."""
    table = [
        "| model | AP | AP50 | AP75 | GMACs/image | trainable params | wall time |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        table.append(
            f"| {row['model']} | {row['AP']:.3f} | {row['AP50']:.3f} | {row['AP75']:.3f} | "
            f"{row['gmacs']:.2f} | {row['trainable_params']:,} | {row['wall_seconds'] / 60:.1f} min |"
        )
    print("\n".join(table))
    dataset = (
        f"`{args.annotations}` (val: `{args.val_annotations}`)"
        if args.images
        else "the synthetic shapes set of `make train` (1,000 train / 100 val images, 6 classes)"
    )
    notes = f"""\
Budget, the same for both: {args.steps} steps of batch {args.batch} at {args.size}x{args.size} px,
from random initialisation, on {dataset}. Everything but `model.backbone` comes from
`spinenet_tf/experiments/retinanet/synthetic.yaml`: head of 2 convs x 64 filters, AdamW (learning rate
0.016 per 64 images, decoupled weight decay 1e-4), warm-up {min(50, args.steps // 10)} steps,
x0.1 at 85% of the steps, scale jitter 0.8-1.25 and flips. Scaled down to fit a CPU: the
pyramid under the head has {args.pyramid_filters} channels for both (SpineNet-49S's endpoint
convs; R50's FPN), otherwise each backbone is at its published width (49S at filter scale
0.65; R50 is keras.applications' ResNet-50). AP is COCO AP@[.5:.95] on the val split after
the last step, one run per model (seed 0); GMACs per image at {args.size} px; wall time
includes tracing and evaluation.
Raw JSON: `benchmarks/results/accuracy_budget.json`; plot: `docs/benchmarks.png`."""
    title = "Accuracy from scratch on the same budget"
    write_section("accuracy-budget", title, "\n".join(table) + "\n\n" + notes, args.out)
    print(f"wrote section 'accuracy-budget' of {args.out}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--pyramid-filters", type=int, default=64, help="SpineNet endpoints = R50's FPN width"
    )
    parser.add_argument("--images", help="train images of a COCO-format dataset (default: synthetic)")
    parser.add_argument("--annotations", help="its COCO annotations JSON")
    parser.add_argument("--val-images")
    parser.add_argument("--val-annotations")
    parser.add_argument("--work-dir", default="runs/accuracy_budget", help="model dirs (deleted first)")
    parser.add_argument("--out", default=str(BENCHMARKS_FILE))
    parser.add_argument("--results", default=str(RESULTS_DIR), help="directory of the JSON results")
    args = parser.parse_args(argv)
    dataset_flags = (args.images, args.annotations, args.val_images, args.val_annotations)
    if any(dataset_flags) and not all(dataset_flags):
        parser.error("a dataset needs all of --images, --annotations, --val-images and --val-annotations")

    rows = [run(name, args) for name in args.models]
    settings = {key: getattr(args, key) for key in ("models", "steps", "size", "batch", "pyramid_filters")}
    settings["dataset"] = args.annotations or f"synthetic ({SYNTHETIC_EXPERIMENT})"
    save_results("accuracy_budget", settings, rows, args.results)
    write_report(rows, args)


if __name__ == "__main__":
    main()
