"""RetinaNet throughput and model-FLOP utilisation on an accelerator (GPU or TPU), under JAX.

Usage: KERAS_BACKEND=jax python -m benchmarks.accelerator_throughput [--models 49 49S] [--size 640]
           [--batch 16] [--steps 10] [--precisions float32 mixed_bfloat16] [--max-boxes 100]
           [--filter-size-scale S] [--matmul-size 8192] [--allow-cpu] [--out BENCHMARKS.md]

float32 and mixed_bfloat16 inference and training images/s, and their model-FLOP
utilisation against a measured bf16 matmul peak. Without a device it writes a "not
measured yet" section; --allow-cpu measures on the CPU instead (a smoke test).
"""

import argparse

import keras

from benchmarks.report import BENCHMARKS_FILE, write_section
from benchmarks.timing import median_seconds
from benchmarks.training_step import random_batch, training_images_per_second
from spinenet_tf import build_detector, profile
from spinenet_tf.published import detector_config

PRECISIONS = ("float32", "mixed_bfloat16")
ACCELERATOR_COMMAND = "KERAS_BACKEND=jax python -m benchmarks.accelerator_throughput"
TITLE = "RetinaNet throughput and MFU on an accelerator (JAX)"


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
    """FLOP/s of a size x size x size bf16 matmul on the default JAX device: the peak for MFU."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((size, size), jnp.bfloat16)
    multiply = jax.jit(lambda a, b: a @ b)
    return 2 * size**3 / median_seconds(lambda: multiply(a, a).block_until_ready(), repeats)


def inference_images_per_second(model, images, steps):
    """Raw outputs (no post-processing) of one jitted stateless forward pass."""
    import jax

    forward = jax.jit(
        lambda trainable, fixed, x: model.stateless_call(trainable, fixed, x, training=False)[0]
    )
    trainable = [v.value for v in model.trainable_variables]
    fixed = [v.value for v in model.non_trainable_variables]
    images = jax.device_put(images)
    seconds = median_seconds(lambda: jax.block_until_ready(forward(trainable, fixed, images)), steps)
    return len(images) / seconds


def measured_rows(args, peak):
    rows = []
    for name in args.models:
        for precision in args.precisions:
            keras.config.set_dtype_policy(precision)
            config = detector_config(name)
            if args.filter_size_scale:
                config["backbone"]["filter_size_scale"] = args.filter_size_scale
            model = build_detector(config, args.size)
            model.compile()
            macs = profile(model, (args.size, args.size, 3)).macs
            images, labels = random_batch(args.batch, args.size, args.max_boxes, 91)
            inference = inference_images_per_second(model, images, args.steps)
            training = training_images_per_second(model, images, labels, args.steps)
            rows.append(
                f"| {name} | {precision} | {args.size} | {args.batch} | {macs / 1e9:.1f} | {inference:.1f} | "
                f"{100 * 2 * macs * inference / peak:.1f}% | {training:.1f} | "
                f"{100 * 6 * macs * training / peak:.1f}% |"
            )
            print(rows[-1], flush=True)
            keras.config.set_dtype_policy("float32")
            keras.backend.clear_session()
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["49", "49S"])
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="timed steps, after warm-up")
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--max-boxes", type=int, default=100)
    parser.add_argument("--filter-size-scale", type=float, default=None, help="a narrower model")
    parser.add_argument("--matmul-size", type=int, default=8192)
    parser.add_argument("--allow-cpu", action="store_true", help="measure on the CPU (a smoke test)")
    parser.add_argument("--out", default=str(BENCHMARKS_FILE))
    args = parser.parse_args(argv)

    device = accelerator()
    if device is None and not args.allow_cpu:
        body = f"""\
not measured yet: no device (no GPU or TPU visible on the machine above).

On a machine with one: `{ACCELERATOR_COMMAND}` (SpineNet-49 and 49S RetinaNet at 640 px,
float32 and mixed_bfloat16, inference and training images/s, and model-FLOP utilisation
against the measured bf16 matmul peak)."""
        write_section("accelerator-throughput", TITLE, body, args.out)
        print(f"no accelerator visible; wrote the 'not measured yet' section of {args.out}")
        return
    if keras.backend.backend() != "jax":
        raise SystemExit(f"this benchmark runs on the JAX backend: {ACCELERATOR_COMMAND}")
    import jax

    device = device or f"CPU ({jax.devices()[0].device_kind})"
    peak = matmul_peak_flops(args.matmul_size)
    print(f"{device}: bf16 matmul peak {peak / 1e12:.2f} TFLOP/s", flush=True)
    rows = [
        "| model | precision | input | batch | GMACs/image | inference images/s | inference MFU | "
        "training images/s | training MFU |",
        "|---|---|---|---|---|---|---|---|---|",
        *measured_rows(args, peak),
    ]
    notes = f"""\
Device: {device}. Peak: {peak / 1e12:.2f} TFLOP/s, measured as the median of a jitted
{args.matmul_size}x{args.matmul_size} bf16 matmul (2 n^3 FLOPs). RetinaNet with 91 classes, head
4x256 (49S: 4x128), random images and boxes ({args.max_boxes} per image), median of {args.steps}
steps after warm-up. Inference: one jitted `stateless_call` (raw outputs, no NMS), MFU = 2 x
MACs x images/s / peak. Training: `train_on_batch` (XLA-compiled step, SGD, built-in loss),
MFU = 6 x MACs x images/s / peak (backward ~ 2 x forward). MACs are convolution and dense
multiply-adds from `spinenet_tf.profile`; mixed_bfloat16 keeps variables in float32."""
    write_section("accelerator-throughput", TITLE, "\n".join(rows) + "\n\n" + notes, args.out)
    print(f"wrote section 'accelerator-throughput' of {args.out}")


if __name__ == "__main__":
    main()
