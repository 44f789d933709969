"""RetinaNet throughput and model-FLOP utilisation on an accelerator (GPU or TPU), under JAX.

Usage: KERAS_BACKEND=jax python -m benchmarks.accelerator_throughput [--models 49 49S] [--size 640]
           [--batch 16] [--inference-batches 1 8] [--steps 10] [--precisions float32 mixed_bfloat16]
           [--max-boxes 100] [--filter-size-scale S] [--matmul-size 8192] [--allow-cpu]
           [--out BENCHMARKS.md] [--results benchmarks/results]

Training images/s and model-FLOP utilisation (MFU) against a measured bf16 matmul peak,
and inference milliseconds per image at each inference batch, in float32 and
mixed_bfloat16. Without a device it writes a "not measured yet" section; --allow-cpu
measures on the CPU instead (a smoke test). It imports no TensorFlow (nor pycocotools)
on the JAX backend: the accelerator machines have JAX only (`benchmarks/gpu_run.sh`).
"""

import argparse

import keras

from benchmarks.report import BENCHMARKS_FILE, write_section
from benchmarks.results import RESULTS_DIR, save_results
from benchmarks.timing import median_seconds, seconds
from benchmarks.training_step import random_batch, training_images_per_second
from spinenet_tf import build_detector, profile
from spinenet_tf.published import detector_config

PRECISIONS = ("float32", "mixed_bfloat16")
ACCELERATOR_COMMAND = "KERAS_BACKEND=jax python -m benchmarks.accelerator_throughput"
TITLE = "RetinaNet throughput and MFU on an accelerator (JAX)"
SECTION = "accelerator-throughput"


def accelerator():
    """The kind of GPU/TPU the Keras backend would run on, or None on a CPU-only machine."""
    if keras.backend.backend() == "jax":
        import jax

        device = jax.devices()[0]
        return None if device.platform == "cpu" else device.device_kind
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return gpus[0].name if gpus else None


def matmul_peak_flops(size, repeats=10):
    """FLOP/s of a size x size x size bf16 matmul of random data on the default JAX device: the
    peak for MFU."""
    import jax

    a, b = (jax.random.normal(jax.random.key(seed), (size, size), "bfloat16") for seed in (0, 1))
    multiply = jax.jit(lambda a, b: a @ b)
    return 2 * size**3 / median_seconds(lambda: multiply(a, b).block_until_ready(), repeats)


def inference_seconds(model, images, steps):
    """Median seconds of one jitted stateless forward pass (raw outputs, no post-processing)."""
    import jax

    forward = jax.jit(
        lambda trainable, fixed, x: model.stateless_call(trainable, fixed, x, training=False)[0]
    )
    trainable = [v.value for v in model.trainable_variables]
    fixed = [v.value for v in model.non_trainable_variables]
    images = jax.device_put(images)
    return median_seconds(lambda: jax.block_until_ready(forward(trainable, fixed, images)), steps)


def measure(name, precision, args, peak):
    """One model in one precision: its inference and training figures (a dict for the JSON)."""
    keras.config.set_dtype_policy(precision)
    try:
        config = detector_config(name)
        if args.filter_size_scale:
            config["backbone"]["filter_size_scale"] = args.filter_size_scale
        model = build_detector(config, args.size)
        model.compile()
        macs = profile(model, (args.size, args.size, 3)).macs
        images, labels = random_batch(args.batch, args.size, args.max_boxes, 91)
        row = {"model": name, "precision": precision, "gmacs": macs / 1e9, "inference_ms_per_image": {}}
        for batch in args.inference_batches:
            inputs = random_batch(batch, args.size, 1, 91)[0]
            row["inference_ms_per_image"][batch] = 1000 * inference_seconds(model, inputs, args.steps) / batch
        images_per_s = 1000 / row["inference_ms_per_image"][max(args.inference_batches)]
        row["inference_mfu"] = 2 * macs * images_per_s / peak
        # Its trace and compile: what a run on a machine lent for minutes must budget for.
        row["first_training_step_s"] = seconds(lambda: model.train_on_batch(images, labels))
        row["training_images_per_s"] = training_images_per_second(model, images, labels, args.steps)
        row["training_mfu"] = 6 * macs * row["training_images_per_s"] / peak
        return row
    except Exception as error:  # out of memory, a missing kernel: a row that says so, then the next
        return {"model": name, "precision": precision, "error": f"{type(error).__name__}: {error}"[:300]}
    finally:
        keras.config.set_dtype_policy("float32")
        keras.backend.clear_session()


def table_row(row, args):
    if "error" in row:
        cells = ["failed: " + row["error"].splitlines()[0][:120]] + ["-"] * (4 + len(args.inference_batches))
        return f"| {row['model']} | {row['precision']} | " + " | ".join(cells) + " |"
    inference = [f"{row['inference_ms_per_image'][batch]:.2f}" for batch in args.inference_batches]
    cells = [
        f"{row['gmacs']:.1f}",
        f"{row['training_images_per_s']:.1f}",
        f"{100 * row['training_mfu']:.1f}%",
    ]
    cells += inference + [f"{100 * row['inference_mfu']:.1f}%", f"{row['first_training_step_s']:.0f}"]
    return f"| {row['model']} | {row['precision']} | " + " | ".join(cells) + " |"


def write_results(rows, device, peak, args):
    """The section (and JSON) of the rows measured so far: a run cut short keeps its rows."""
    inference = [f"inference ms/image, batch {batch}" for batch in args.inference_batches]
    header = ["model", "precision", "GMACs/image", f"training images/s (batch {args.batch})", "training MFU"]
    header += inference + [f"inference MFU, batch {max(args.inference_batches)}", "first training step s"]
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table += [table_row(row, args) for row in rows]
    total = len(args.models) * len(args.precisions)
    missing = f"\n\nOnly {len(rows)} of {total} rows measured: the run stopped." if len(rows) < total else ""
    notes = f"""\
Device: {device}. Peak: {peak / 1e12:.2f} TFLOP/s, measured as the median of a jitted
{args.matmul_size}x{args.matmul_size} bf16 matmul of random data (2 n^3 FLOPs). RetinaNet at {args.size} px
with 91 classes, head 4x256 (49S: 4x128), random images and boxes ({args.max_boxes} per image), medians of
{args.steps} steps after warm-up. Training: `train_on_batch` (XLA-compiled step, SGD with momentum,
built-in focal + Huber loss with in-graph anchor labelling), MFU = 6 x MACs x images/s / peak
(backward ~ 2 x forward); "first training step" is its trace and compile. Inference: one jitted
`stateless_call` (raw outputs, no NMS), MFU = 2 x MACs x images/s / peak. MACs are convolution
and dense multiply-adds from `spinenet_tf.profile`; mixed_bfloat16 keeps variables in float32.
Raw JSON: `benchmarks/results/accelerator_throughput.json`.{missing}"""
    write_section(SECTION, TITLE, "\n".join(table) + "\n\n" + notes, args.out)
    settings = {key: value for key, value in vars(args).items() if key not in ("out", "results")}
    save_results(
        "accelerator_throughput", {**settings, "device": device, "peak_flops": peak}, rows, args.results
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["49", "49S"])
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--batch", type=int, default=16, help="training batch")
    parser.add_argument("--inference-batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--steps", type=int, default=10, help="timed steps, after warm-up")
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--max-boxes", type=int, default=100)
    parser.add_argument("--filter-size-scale", type=float, default=None, help="a narrower model")
    parser.add_argument("--matmul-size", type=int, default=8192)
    parser.add_argument("--allow-cpu", action="store_true", help="measure on the CPU (a smoke test)")
    parser.add_argument("--out", default=str(BENCHMARKS_FILE))
    parser.add_argument("--results", default=str(RESULTS_DIR), help="directory of the raw JSON")
    args = parser.parse_args(argv)

    device = accelerator()
    if device is None and not args.allow_cpu:
        body = f"""\
not measured yet: no device (no GPU or TPU visible on the machine above).

On a machine with one: `{ACCELERATOR_COMMAND}` (SpineNet-49 and 49S RetinaNet at 640 px,
float32 and mixed_bfloat16: training images/s and model-FLOP utilisation against the
measured bf16 matmul peak, inference ms/image at batch 1 and 8); `benchmarks/gpu_run.sh`
runs it on a machine with JAX and no TensorFlow."""
        write_section(SECTION, TITLE, body, args.out)
        print(f"no accelerator visible; wrote the 'not measured yet' section of {args.out}")
        return
    if keras.backend.backend() != "jax":
        raise SystemExit(f"this benchmark runs on the JAX backend: {ACCELERATOR_COMMAND}")
    import jax

    device = device or f"CPU ({jax.devices()[0].device_kind})"
    peak = matmul_peak_flops(args.matmul_size)
    print(f"{device}: bf16 matmul peak {peak / 1e12:.2f} TFLOP/s", flush=True)
    rows = []
    for name in args.models:
        for precision in args.precisions:
            rows.append(measure(name, precision, args, peak))
            print(table_row(rows[-1], args), flush=True)
            write_results(rows, device, peak, args)
    print(f"wrote section '{SECTION}' of {args.out}")


if __name__ == "__main__":
    main()
