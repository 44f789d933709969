"""CPU inference latency of Mask R-CNN and Faster R-CNN (SpineNet-49), ours against TF Model Garden's.

Usage: python -m benchmarks.two_stage_inference [--models maskrcnn-49 fasterrcnn-49] [--size 640]
           [--batch 1] [--modes tf.function XLA] [--repeats 10] [--threads 2] [--no-model-garden]
           [--out BENCHMARKS.md] [--results benchmarks/results]

Ours is `build_detector(two_stage_config(name))`; Model Garden's is its
`maskrcnn_spinenet_coco` model, run in its own virtualenv (see `benchmarks.model_garden`)
by `benchmarks.model_garden_two_stage`. Both run the forward pass to final detections (and
masks) on the same normalised images with the same number of TensorFlow threads, their
timed calls alternating one by one so that both see the same load.
"""

import argparse
import functools
import os

import keras
import numpy as np
import tensorflow as tf

from benchmarks.cpu_inference import ms_per_image
from benchmarks.model_garden import MODES, Server, model_garden_python
from benchmarks.report import BENCHMARKS_FILE, write_section
from benchmarks.results import RESULTS_DIR, save_results
from benchmarks.timing import timed
from spinenet_tf import build_detector, profile
from spinenet_tf.layers.image_converter import normalise_image
from spinenet_tf.published import TWO_STAGE_REFERENCE, two_stage_config

MODELS = ("maskrcnn-49", "fasterrcnn-49")
SIDES = ("ours", "model_garden")


def limit_threads(threads):
    """TensorFlow's intra- and inter-op thread pools, as Model Garden's server sets them (before
    TensorFlow runs its first op)."""
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def our_timer(model, images, jit, counts):
    """A timer (see `alternating_medians`) of `model(images)`, eager (jit None) or in a
    tf.function, to final detections fetched as NumPy; appends each call's detections per
    image to `counts`."""
    function = functools.partial(model, training=False)
    if jit is not None:
        function = tf.function(function, jit_compile=jit)

    def timer():
        outputs, seconds = timed(lambda: keras.tree.map_structure(np.asarray, function(images)))
        counts.append(float(np.mean(outputs["num_detections"])))
        return seconds

    return timer


def model_garden_timer(server, batch, mode, counts):
    """The same timer of Model Garden's model, one request to its server per call."""

    def timer():
        answer = server.ask(f"{batch} {mode}")
        if "error" in answer:
            raise RuntimeError(answer["error"])
        counts.append(answer["num_detections"])
        return answer["seconds"]

    return timer


def time_model(name, args, python):
    """(rows, model) of one model: a row per mode, {"model", "mode", "ours", "model_garden"},
    each side {"ms_per_image", "detections"} or {"error"} ("model_garden" absent without its
    virtualenv); model {"model", "gmacs", "params": {side: trainable params}} (Model Garden's
    None where it did not run)."""
    model = build_detector(two_stage_config(name), args.size)
    server = (
        Server(
            python,
            "benchmarks.model_garden_two_stage",
            "--model",
            name,
            "--size",
            args.size,
            "--threads",
            args.threads,
        )
        if python
        else None
    )
    model_profile = profile(model, (args.size, args.size, 3))
    params = {"ours": model_profile.trainable_params, "model_garden": None}
    photos = np.random.default_rng(0).integers(0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8)
    images = normalise_image(photos)
    rows = []
    for mode in args.modes:
        counts = {side: [] for side in SIDES}
        timers = [our_timer(model, images, MODES[mode], counts["ours"])]
        if server:
            timers.append(model_garden_timer(server, args.batch, mode, counts["model_garden"]))
        results = ms_per_image(timers, args.batch, args.repeats)
        row = {"model": name, "mode": mode}
        for side, result in zip(SIDES, results):
            row[side] = (
                {**result, "detections": float(np.mean(counts[side]))} if "ms_per_image" in result else result
            )
        rows.append(row)
        print(row, flush=True)
    if server:
        try:
            params["model_garden"] = server.ask("params")["trainable_params"]
        except RuntimeError as error:
            print(error, flush=True)
        server.close()
    return rows, {"model": name, "gmacs": model_profile.gmacs, "params": params}


def _cell(result):
    if "ms_per_image" in result:
        return f"{result['ms_per_image']:.0f}"
    return f"skipped: {result['skipped']}" if "skipped" in result else f"failed ({result['error']})"


def latency_table(rows):
    """Ours against Model Garden per model and mode."""
    lines = [
        "| model | mode | ours ms/image | Model Garden ms/image | ours / Model Garden | "
        "detections/image, ours / Model Garden |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        ours, theirs = row["ours"], row["model_garden"]
        both = "ms_per_image" in ours and "ms_per_image" in theirs
        ratio = f"{ours['ms_per_image'] / theirs['ms_per_image']:.2f}" if both else "n/a"
        detections = " / ".join(
            f"{side['detections']:.1f}" if "detections" in side else "-" for side in (ours, theirs)
        )
        lines.append(
            f"| {row['model']} | {row['mode']} | {_cell(ours)} | {_cell(theirs)} | {ratio} | {detections} |"
        )
    return lines


def params_table(models):
    """Trainable parameters of both sides against the published reference, and our GMACs."""
    lines = [
        "| model | GMACs | trainable params, ours | Model Garden | reference | ours - Model Garden |",
        "|---|---|---|---|---|---|",
    ]
    for model in models:
        ours, theirs = model["params"]["ours"], model["params"]["model_garden"]
        reference = TWO_STAGE_REFERENCE[model["model"]]["params"]
        theirs_cell, difference = ("n/a", "n/a") if theirs is None else (f"{theirs:,}", f"{ours - theirs:+,}")
        lines.append(
            f"| {model['model']} | {model['gmacs']:.1f} | {ours:,} | {theirs_cell} | {reference:,} | "
            f"{difference} |"
        )
    return lines


def write_report(rows, models, load, args):
    """Prints the tables and writes the section of the benchmarks file."""
    tables = "\n".join(latency_table(rows)) + "\n\n" + "\n".join(params_table(models))
    print(tables)
    notes = f"""\
Median milliseconds per image over {args.repeats} timed runs of each side after one warm-up run
(which traces and compiles), batch {args.batch}, {args.size}x{args.size} random photos normalised
with ImageNet's mean and standard deviation, both sides limited to {args.threads} TensorFlow
intra-op and {args.threads} inter-op threads, on this machine's CPU. Timed: the forward pass
in inference mode to final detections, masks included (Mask R-CNN), outputs fetched as
NumPy; no resizing or letterboxing. Ours: `build_detector(two_stage_config(name))(images,
training=False)`: backbone, RPN, proposals (per-level top-1000 and NMS, 1000 kept), box head
on every proposal, per-class NMS to 100 detections, mask head on those. Model Garden's
(tf-models-official, TensorFlow 2.20 + tf_keras, in its own virtualenv made under
`.bench-venvs/`; `benchmarks.model_garden_two_stage`): `factory.build_maskrcnn` of the
`maskrcnn_spinenet_coco` experiment's model with `use_sync_bn` off (`include_mask` off for
`fasterrcnn`), called with the images, image shape and anchors as its `DetectionModule.serve`
calls it after preprocessing. "tf.function" traces each side into a graph,
"XLA" is `tf.function(jit_compile=True)`. The two sides' timed calls alternate one by one, so
a load that comes and goes hits both alike; the ratio holds up better than the absolute
times. Load average (1 min) at the start and end of the run: {load[0]:.1f} / {load[1]:.1f}
on {os.cpu_count()} cores. Both models have random weights: their class scores stay under
the 0.05 score threshold, so few or no boxes reach the final NMS (the detections column);
with trained weights on real photos that step has more boxes to work through on both sides. GMACs from
`spinenet_tf.profile` (1000 proposals through the box head, 100 detections through the mask
head). Raw JSON: `benchmarks/results/two_stage_inference.json`."""
    write_section(
        "two_stage_inference",
        "Two-stage detectors: inference latency on CPU against Model Garden",
        tables + "\n\n" + notes,
        args.out,
    )
    print(f"wrote section 'two_stage_inference' of {args.out}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--modes", nargs="+", default=["tf.function", "XLA"], choices=list(MODES))
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per cell, after one warm-up")
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow intra- and inter-op threads")
    parser.add_argument("--no-model-garden", action="store_true", help="skip the Model Garden comparison")
    parser.add_argument("--out", default=str(BENCHMARKS_FILE))
    parser.add_argument("--results", default=str(RESULTS_DIR), help="directory of the JSON results")
    args = parser.parse_args(argv)
    limit_threads(args.threads)

    python, skip_reason = (None, "--no-model-garden") if args.no_model_garden else model_garden_python()
    if python is None:
        print(f"Model Garden comparison skipped: {skip_reason}", flush=True)
    start_load = os.getloadavg()[0]
    rows, models = [], []
    for name in args.models:
        model_rows, model = time_model(name, args, python)
        rows += [
            {**row, "model_garden": row.get("model_garden", {"skipped": skip_reason})} for row in model_rows
        ]
        models.append(model)
        keras.backend.clear_session()
    load = (start_load, os.getloadavg()[0])

    settings = {key: getattr(args, key) for key in ("models", "size", "batch", "modes", "repeats", "threads")}
    save_results(
        "two_stage_inference",
        {**settings, "load_average": load},
        {"latency": rows, "models": models},
        args.results,
    )
    write_report(rows, models, load, args)


if __name__ == "__main__":
    main()
