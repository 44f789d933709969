"""CPU inference latency of RetinaNet detectors: eager, tf.function and XLA, raw and post-processed.

Usage: python -m benchmarks.cpu_inference [--models 49S 49 R50-FPN] [--size 640] [--batches 1 8]
           [--repeats 3] [--no-model-garden] [--out BENCHMARKS.md] [--results benchmarks/results]

With Model Garden enabled (the default), TF Model Garden's RetinaNet of each model is
timed too, in its own virtualenv (see `benchmarks.model_garden`), by
`benchmarks.model_garden_inference`, its calls alternating with ours so that both see
the same load.
"""

import argparse
import functools

import keras
import numpy as np
import tensorflow as tf

from benchmarks.model_garden import MODES, Server, model_garden_python
from benchmarks.report import BENCHMARKS_FILE, write_section
from benchmarks.results import RESULTS_DIR, save_results
from benchmarks.timing import alternating_medians, seconds
from spinenet_tf import build_detector, profile
from spinenet_tf.layers.image_converter import normalise_image
from spinenet_tf.published import detector_config

MODELS = ("49S", "49", "R50-FPN")
OUTPUTS = ("raw", "post-processed")


def raw_timer(model, images, jit):
    """A timer (see `alternating_medians`) of the network alone, `model(x)` on normalised
    model-sized input, eager (jit None) or in a tf.function, its outputs fetched as NumPy."""
    function = functools.partial(model, training=False)
    if jit is not None:
        function = tf.function(function, jit_compile=jit)
    return lambda: seconds(lambda: keras.tree.map_structure(np.asarray, function(images)))


def predict_timer(model, photos, jit):
    """A timer of what a user calls, `model.predict_on_batch(photos)`: letterbox and normalise,
    the network, decoding and NMS, boxes back in the photos' pixels, NumPy out. Compiled as
    Keras runs it: eagerly (jit None), as a tf.function, or with XLA."""
    model.compile(run_eagerly=jit is None, jit_compile=bool(jit))
    return lambda: seconds(lambda: model.predict_on_batch(photos))


class ModelGarden:
    """Model Garden's RetinaNet of one model, timed call by call in its virtualenv."""

    def __init__(self, python, name, size):
        self.server = Server(python, "benchmarks.model_garden_inference", "--model", name, "--size", size)

    def timer(self, batch, mode):
        return lambda: self.server.ask(f"{batch} {mode}")["seconds"]

    def close(self):
        """Its trainable parameter count (None if it failed); stops it."""
        try:
            params = self.server.ask("params")["trainable_params"]
        except RuntimeError:
            params = None
        self.server.close()
        return params


def _error(error):
    return f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"


def ms_per_image(timers, batch, repeats):
    """A result per timer: {"ms_per_image"} or, if its first (warm-up) call fails, {"error"}."""
    errors = []
    for timer in timers:
        try:
            timer()  # the warm-up: traces and compiles
            errors.append(None)
        except Exception as error:  # e.g. an op XLA cannot compile: reported in the table
            errors.append(_error(error))
    working = [timer for timer, error in zip(timers, errors) if error is None]
    medians = iter(alternating_medians(working, repeats, warmup=0))
    return [{"error": error} if error else {"ms_per_image": 1000 * next(medians) / batch} for error in errors]


def time_model(name, size, batches, repeats, model_garden_python=None):
    """(our rows, Model Garden's rows) of one model: every batch size, output and mode.

    Model Garden's are raw outputs only, each timed call alternating with ours.
    """
    model = build_detector(detector_config(name), size)
    rival = ModelGarden(model_garden_python, name, size) if model_garden_python else None
    model_profile = profile(model, (size, size, 3))
    model_row = {
        "model": name,
        "gmacs": model_profile.gmacs,
        "trainable_params": model_profile.trainable_params,
    }
    ours, theirs = [], []
    for batch in batches:
        photos = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
        images = normalise_image(photos)  # the network's input: what the training pipeline feeds it
        for output in OUTPUTS:
            for mode, jit in MODES.items():
                if output == "raw":
                    timers = [raw_timer(model, images, jit)]
                    if rival:  # Model Garden's raw outputs, its calls alternating with ours
                        timers.append(rival.timer(batch, mode))
                else:
                    timers = [predict_timer(model, photos, jit)]
                results = ms_per_image(timers, batch, repeats)
                ours.append({**model_row, "batch": batch, "output": output, "mode": mode, **results[0]})
                theirs += [{"model": name, "batch": batch, "mode": mode, **result} for result in results[1:]]
                print(ours[-1], *theirs[-1:] if len(results) > 1 else [], flush=True)
    params = rival.close() if rival else None
    return ours, [{**row, "trainable_params": params} for row in theirs]


def _cell(row):
    return f"{row['ms_per_image']:.0f}" if "ms_per_image" in row else f"failed ({row['error']})"


def latency_table(rows):
    lines = [
        "| model | GMACs | batch | output | eager | tf.function | XLA |",
        "|---|---|---|---|---|---|---|",
    ]
    for start in range(0, len(rows), len(MODES)):
        group = rows[start : start + len(MODES)]
        first = group[0]
        lines.append(
            f"| {first['model']} | {first['gmacs']:.1f} | {first['batch']} | {first['output']} | "
            + " | ".join(_cell(row) for row in group)
            + " |"
        )
    return lines


def comparison_table(ours, model_garden):
    """Ours vs Model Garden, raw outputs, per model, batch and mode."""
    lines = [
        "| model | batch | mode | ours ms/image | Model Garden ms/image | ours / Model Garden | "
        "params, ours - theirs |",
        "|---|---|---|---|---|---|---|",
    ]
    mine = {(r["model"], r["batch"], r["mode"]): r for r in ours if r["output"] == "raw"}
    for theirs in model_garden:
        if "batch" not in theirs:
            lines.append(f"| {theirs['model']} | - | - | - | skipped: {theirs['error']} | - | - |")
            continue
        row = mine[(theirs["model"], theirs["batch"], theirs["mode"])]
        ratio = (
            f"{row['ms_per_image'] / theirs['ms_per_image']:.2f}"
            if "ms_per_image" in row and "ms_per_image" in theirs
            else "n/a"
        )
        params = theirs["trainable_params"]
        params = "n/a" if params is None else f"{row['trainable_params'] - params:+,}"
        lines.append(
            f"| {theirs['model']} | {theirs['batch']} | {theirs['mode']} | {_cell(row)} | {_cell(theirs)} | "
            f"{ratio} | {params} |"
        )
    return lines


def post_processing_cost(rows):
    """Per mode: the mean over models and batches of post-processed minus raw ms/image."""
    raw = {(r["model"], r["batch"], r["mode"]): r for r in rows if r["output"] == "raw"}
    costs = {}
    for row in rows:
        pair = raw.get((row["model"], row["batch"], row["mode"]))
        if row["output"] != "raw" and "ms_per_image" in row and pair and "ms_per_image" in pair:
            costs.setdefault(row["mode"], []).append(row["ms_per_image"] - pair["ms_per_image"])
    return ", ".join(f"{mode} {np.mean(values):+.0f} ms" for mode, values in costs.items())


def write_report(ours, theirs, args):
    """Prints the tables and writes the section of the benchmarks file."""
    tables = "\n".join(latency_table(ours)) + "\n\n" + "\n".join(comparison_table(ours, theirs))
    print(tables)
    notes = f"""\
Median milliseconds per image over {args.repeats} timed runs after one warm-up run (which
traces and compiles), {args.size}x{args.size} random images, on this machine's CPU; RetinaNet
with 91 classes, head 4x256 (49S: 4x128), GMACs per image from `spinenet_tf.profile`.
"raw" is the network alone, `model(x)` on normalised input (class logits and box deltas
over all anchors): "eager" calls it directly, "tf.function" traces it into a graph, "XLA" is
`tf.function(jit_compile=True)`. "post-processed" is what a user calls,
`model.predict_on_batch(photos)` on uint8 photos of the same size: letterboxing and
normalisation, the network, decoding (score threshold, top-1000, per-class NMS, top-100) and
boxes back in the photos' pixels, NumPy out; its modes are `compile(run_eagerly=True)`,
`compile(jit_compile=False)` and `compile(jit_compile=True)`. Post-processed minus raw, per
image (mean over the rows above): {post_processing_cost(ours)}.
The Model Garden table times TF Model Garden's RetinaNet of the same configuration
(tf-models-official, TensorFlow 2.20 + tf_keras, in its own virtualenv made under
`.bench-venvs/`; `benchmarks.model_garden_inference`), raw outputs (backbone, decoder and head
called with training=False), with the same timing, its timed calls alternating with ours one
by one: on a shared machine the load then hits both alike, so the ratio holds up better than
the absolute times, which vary with the load from run to run. The last column
compares trainable parameters: SpineNet's are equal; our R50-FPN has 26,560 more, the
biases of keras.applications' ResNet-50 convs (Model Garden's have none).
Raw JSON: `benchmarks/results/cpu_inference.json`; plot: `docs/benchmarks.png`."""
    write_section("cpu-inference", "RetinaNet inference latency on CPU", tables + "\n\n" + notes, args.out)
    print(f"wrote section 'cpu-inference' of {args.out}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per cell, after one warm-up")
    parser.add_argument("--no-model-garden", action="store_true", help="skip the Model Garden comparison")
    parser.add_argument("--out", default=str(BENCHMARKS_FILE))
    parser.add_argument("--results", default=str(RESULTS_DIR), help="directory of the JSON results")
    args = parser.parse_args(argv)

    python, skip_reason = (None, "--no-model-garden") if args.no_model_garden else model_garden_python()
    ours, theirs = [], []
    for name in args.models:
        model_ours, model_theirs = time_model(name, args.size, args.batches, args.repeats, python)
        ours, theirs = ours + model_ours, theirs + model_theirs
        keras.backend.clear_session()
    if python is None:
        theirs = [{"model": "all", "error": skip_reason}]
        print(f"Model Garden comparison skipped: {skip_reason}", flush=True)

    settings = {key: getattr(args, key) for key in ("models", "size", "batches", "repeats")}
    save_results("cpu_inference", settings, {"ours": ours, "model_garden": theirs}, args.results)
    write_report(ours, theirs, args)


if __name__ == "__main__":
    main()
