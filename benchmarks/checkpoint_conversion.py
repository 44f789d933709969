"""Full-size published-format checkpoints, written by the reference code, converted by ours.

For each source format the reference code (Model Garden in its virtualenv; the
tensorflow/tpu detection code at a pinned commit, given with --tpu-repo) writes a full-size
SpineNet-49 RetinaNet checkpoint (640 px, 91 classes, random weights and BN statistics)
and its outputs on one input (tests/fixtures/pretrained/make_fixtures.py --full-size);
`spinenet_tf.pretrained.convert.convert_checkpoint` converts it with the shipped
`retinanet/spinenet49_coco` experiment. Reported: variables mapped, parameter counts, the
outputs' largest relative error against the reference's, and the conversion time.

Usage: python -m benchmarks.checkpoint_conversion [--tpu-repo PATH] [--out BENCHMARKS.md]
"""

import argparse
import os
import pathlib
import subprocess
import tempfile
import time

import numpy as np

from benchmarks.model_garden import REPO, model_garden_python
from benchmarks.report import BENCHMARKS_FILE, write_section

WRITER = REPO / "tests" / "fixtures" / "pretrained" / "make_fixtures.py"
OUTPUTS = ("P3", "P4", "P5", "P6", "P7", "class_logits", "box_deltas")
PARAMETER_NAMES = ("kernel", "bias", "gamma", "beta")


def write_reference(python, source_format, out, tpu_repo):
    command = [str(python), str(WRITER), source_format, "--full-size", str(out)]
    env = dict(os.environ)
    if source_format == "tpu":
        command += ["--tpu-repo", str(tpu_repo)]
        env["TF_USE_LEGACY_KERAS"] = "1"  # tf.compat.v1.layers needs Keras 2
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    if result.returncode:
        raise RuntimeError(result.stderr.strip().splitlines()[-1])


def checkpoint_parameters(source, keys):
    """Trainable parameters among the checkpoint's mapped variables (BN statistics excluded)."""
    return sum(
        int(np.prod(source.shapes[key]))
        for key in keys
        if key.replace("/.ATTRIBUTES/VARIABLE_VALUE", "").rpartition("/")[2] in PARAMETER_NAMES
    )


def measure(source_format, directory):
    from spinenet_tf.pretrained.convert import convert_checkpoint
    from spinenet_tf.pretrained.source import SourceCheckpoint

    start = time.perf_counter()
    model, report = convert_checkpoint(directory / "ckpt", source_format, "retinanet/spinenet49_coco")
    seconds = time.perf_counter() - start
    with np.load(directory / "io.npz") as arrays:
        expected = dict(arrays)
    outputs = dict(model.backbone(expected["image"], training=False))
    outputs.update(model(expected["image"], training=False))
    errors = [
        float(
            np.max(np.abs(np.asarray(outputs[key], "float64") - expected[key]))
            / np.max(np.abs(expected[key]))
        )
        for key in OUTPUTS
    ]
    source = SourceCheckpoint(directory / "ckpt")
    mapped = [key for key in source.shapes if key not in sum(report.unused.values(), [])]
    return {
        "variables": f"{len(report.loaded)} of {len(model.weights)}",
        "unmapped": len(report.not_loaded) + len(report.unused["other model parts"]),
        "ours": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
        "theirs": checkpoint_parameters(source, mapped),
        "error": max(errors),
        "seconds": seconds,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tpu-repo", type=pathlib.Path, help="tensorflow/tpu checkout at make_fixtures.TPU_COMMIT"
    )
    parser.add_argument("--out", default=str(BENCHMARKS_FILE))
    args = parser.parse_args(argv)
    python, reason = model_garden_python()
    rows = [
        "| source format | variables loaded | left unmapped | trainable params (ours) | (checkpoint) "
        "| max relative error, P3..P7 + raw head | conversion s |",
        "|---|---|---|---|---|---|---|",
    ]
    for source_format in ("model-garden", "tpu"):
        if python is None:
            rows.append(f"| {source_format} | not measured: {reason} | | | | | |")
            continue
        if source_format == "tpu" and not args.tpu_repo:
            rows.append("| tpu | not measured: give --tpu-repo (a tensorflow/tpu checkout) | | | | | |")
            continue
        with tempfile.TemporaryDirectory() as work:
            directory = pathlib.Path(work)
            write_reference(python, source_format, directory, args.tpu_repo)
            result = measure(source_format, directory)
        rows.append(
            f"| {source_format} | {result['variables']} | {result['unmapped']} | {result['ours']:,} | "
            f"{result['theirs']:,} | {result['error']:.1e} | {result['seconds']:.1f} |"
        )
        print(rows[-1], flush=True)
    notes = """\
SpineNet-49 RetinaNet, 640 px, 91 classes, swish, head 4x256, as `retinanet/spinenet49_coco`
(the published checkpoints' architecture). Each checkpoint is written by the reference code
itself with random weights and random BN statistics (Model Garden: tf-models-official 2.20,
saved as its trainer does, `tf.train.Checkpoint(global_step, model, optimizer, backbone=,
decoder=, head=)`; tensorflow/tpu: its detection code at the commit in
tests/fixtures/pretrained/make_fixtures.py, `tf.train.Saver`, run with TensorFlow 2.20 and
tf_keras), both with the step and the optimizer's momentum slots, which the converter reads
past. The error is the largest |ours - reference| / max |reference| over the five pyramid
levels and the raw class and box outputs on one random input. The reduced-width 49 and 143
versions of the same comparison run in `make test` (tests/pretrained/test_convert.py)."""
    write_section(
        "checkpoint-conversion",
        "Published checkpoint formats: full-size conversion",
        "\n".join(rows) + "\n\n" + notes,
        args.out,
    )


if __name__ == "__main__":
    main()
