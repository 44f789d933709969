"""CPU inference latency of RetinaNet detectors: eager, tf.function and XLA, raw and post-processed.

Usage: python benchmarks/cpu_inference.py [--models 49S 49 R50-FPN] [--size 640] [--batches 1 8]
                                         [--repeats 3] [--no-model-garden] [--out BENCHMARKS.md]
                                         [--results benchmarks/results]

With Model Garden enabled (the default), TF Model Garden's RetinaNet of each model is
timed too, in its own virtualenv (.bench-venvs/model-garden, made on first use:
tf-models-official pins TensorFlow 2.20 and tf_keras) by `model_garden_inference.py`,
its calls alternating with ours so that both see the same load.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.reference import detector_config  # noqa: E402
from benchmarks.report import BENCHMARKS_FILE, write_section  # noqa: E402
from benchmarks.results import RESULTS_DIR, save_results  # noqa: E402
from benchmarks.timing import alternating_medians, seconds  # noqa: E402
from spinenet_tf import build_detector, profile  # noqa: E402

MODELS = ("49S", "49", "R50-FPN")
MODES = {"eager": None, "tf.function": False, "XLA": True}  # mode -> tf.function jit_compile
OUTPUTS = ("raw", "post-processed")
MODEL_GARDEN_VENV = REPO / ".bench-venvs" / "model-garden"
MODEL_GARDEN_SCRIPT = REPO / "benchmarks" / "model_garden_inference.py"
INSTALL_TIMEOUT_S = 1800


def build(name, size):
    """The RetinaNet of a DETECTOR_REFERENCE row (91 classes) for size x size input."""
    config = detector_config(name)
    config["backbone"]["image_shape"] = [size, size, 3]
    return build_detector(config)


def inference_function(model, output, size, jit):
    if output == "raw":
        function = lambda x: model(x, training=False)  # noqa: E731
    else:
        function = lambda x: model.decode_predictions(model(x, training=False), (size, size))  # noqa: E731
    return function if jit is None else tf.function(function, jit_compile=jit)


def timer(function, images):
    """A timer (see `alternating_medians`) of one call whose outputs are fetched as NumPy."""
    return lambda: seconds(lambda: keras.tree.map_structure(np.asarray, function(images)))


class ModelGarden:
    """Model Garden's RetinaNet of one model, served call by call by model_garden_inference.py."""

    def __init__(self, python, name, size):
        self.log = tempfile.TemporaryFile("w+")  # its stderr: TensorFlow's logs, and the error if it fails
        command = [str(python), str(MODEL_GARDEN_SCRIPT), "--model", name, "--size", str(size)]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True
        )

    def ask(self, line):
        try:
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()
            answer = self.process.stdout.readline()
        except BrokenPipeError:
            answer = ""
        if not answer:
            self.log.seek(0)
            reason = (self.log.read().strip() or "no output").splitlines()[-1][:200]
            raise RuntimeError(f"model_garden_inference.py failed: {reason}")
        return json.loads(answer)

    def timer(self, batch, mode):
        return lambda: self.ask(f"{batch} {mode}")["seconds"]

    def close(self):
        """Its trainable parameter count (None if it failed); stops it."""
        try:
            params = self.ask("params")["trainable_params"]
        except RuntimeError:
            params = None
        self.process.stdin.close()
        self.process.wait()
        self.log.close()
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
    model = build(name, size)
    rival = ModelGarden(model_garden_python, name, size) if model_garden_python else None
    model_profile = profile(model, (size, size, 3))
    model_row = {
        "model": name,
        "gmacs": model_profile.gmacs,
        "trainable_params": model_profile.trainable_params,
    }
    ours, theirs = [], []
    for batch in batches:
        images = tf.constant(np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)), tf.float32)
        for output in OUTPUTS:
            for mode, jit in MODES.items():
                function = inference_function(model, output, size, jit)
                timers = [timer(function, images)]
                if rival and output == "raw":
                    timers.append(rival.timer(batch, mode))
                results = ms_per_image(timers, batch, repeats)
                ours.append({**model_row, "batch": batch, "output": output, "mode": mode, **results[0]})
                theirs += [{"model": name, "batch": batch, "mode": mode, **result} for result in results[1:]]
                print(ours[-1], *theirs[-1:] if len(results) > 1 else [], flush=True)
    params = rival.close() if rival else None
    return ours, [{**row, "trainable_params": params} for row in theirs]


def _run(command, timeout=None):
    """(stdout, None) of a command that succeeded, or (None, a one-line reason for the table)."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout} s"
    if result.returncode:
        return None, (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1][:200]
    return result.stdout, None


def model_garden_python(venv=MODEL_GARDEN_VENV):
    """(python, None) of a virtualenv with tf-models-official, made on first use, or (None, reason)."""
    python = pathlib.Path(venv) / "bin" / "python"
    if not python.exists():
        print(f"making {venv} and installing tf-models-official (large download) ...", flush=True)
        _, reason = _run([sys.executable, "-m", "venv", str(venv)], 300)
        if reason:
            return None, f"could not make a virtualenv at {venv}: {reason}"
    _, reason = _run([str(python), "-c", "import official.vision.modeling.factory"], 300)
    if reason:
        _, reason = _run([str(python), "-m", "pip", "install", "-q", "tf-models-official"], INSTALL_TIMEOUT_S)
        if reason:
            return None, f"pip install tf-models-official failed: {reason}"
    return python, None


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
"raw" is `model(x)` (class logits and box deltas over all anchors); "post-processed" adds
`model.decode_predictions` (decode, score threshold, top-1000, per-class NMS, top-100), what
`predict_on_batch` returns. "eager" calls the model directly, "tf.function" traces it into
a graph, "XLA" is `tf.function(jit_compile=True)`. Post-processing adds, per image (mean over
the rows above): {post_processing_cost(ours)}.
The Model Garden table times TF Model Garden's RetinaNet of the same configuration
(tf-models-official, TensorFlow 2.20 + tf_keras, in its own virtualenv made by this script
under `.bench-venvs/`; `model_garden_inference.py`), raw outputs (backbone, decoder and head
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
