"""Training throughput of RetinaNet (images/s of a full step) on CPU, and accelerator figures under JAX.

Usage: python benchmarks/training_throughput.py [--runs synthetic 49S-640] [--steps 5] [--out BENCHMARKS.md]
       KERAS_BACKEND=jax python benchmarks/training_throughput.py --accelerator [--models 49 49S]
           [--size 640] [--batch 16] [--steps 10] [--matmul-size 8192]

Without --accelerator: a full training step (forward, backward, optimizer update, with
the RetinaNet's built-in loss and in-graph anchor labelling) on random images and boxes,
on the CPU, with the model and optimizer the trainer builds from an experiment config.
With --accelerator (JAX backend, on a GPU or TPU): float32 and mixed_bfloat16 inference
and training images/s and model-FLOP utilisation against a measured bf16 matmul peak.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.reference import detector_config  # noqa: E402
from benchmarks.report import BENCHMARKS_FILE, write_section  # noqa: E402
from benchmarks.target_assignment import random_labels  # noqa: E402
from benchmarks.timing import median_seconds  # noqa: E402
from spinenet_tf import build_detector, profile  # noqa: E402

SYNTHETIC_CONFIG = os.path.join(
    os.path.dirname(BENCHMARKS_FILE), "experiments", "retinanet", "synthetic.yaml"
)
# CPU runs: overrides of synthetic.yaml (the trainer builds model and optimizer from them).
CPU_RUNS = {
    "synthetic": [],
    "49S-640": [
        'model.backbone={type: spinenet, model_id: "49S"}',
        "model.detector={num_filters: 128}",
        "model.num_classes=91",
        "data.image_size=640",
        "train.batch_size=2",
    ],
}
PRECISIONS = ("float32", "mixed_bfloat16")
WARMUP_STEPS = 2  # the first traces and compiles the step
ACCELERATOR_COMMAND = "KERAS_BACKEND=jax python benchmarks/training_throughput.py --accelerator"
ACCELERATOR_TITLE = "RetinaNet throughput and MFU on an accelerator (JAX)"


def accelerator():
    """The kind of GPU/TPU the Keras backend would run on, or None on a CPU-only machine."""
    if keras.backend.backend() == "jax":
        import jax

        device = jax.devices()[0]
        return None if device.platform == "cpu" else device.device_kind
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return gpus[0].name if gpus else None


def on_cpu():
    """A context that places the backend's computation on the CPU even when a GPU is visible."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.default_device(jax.devices("cpu")[0])
    import tensorflow as tf

    return tf.device("/CPU:0")


def random_batch(batch, size, max_boxes, num_classes, seed=0):
    """Images in [0, 255] and padded labels with classes in 1..num_classes-1."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    boxes, classes = random_labels(rng, batch, max_boxes, size)
    return images, {"boxes": boxes, "classes": classes % (num_classes - 1) + 1}


def training_images_per_second(model, images, labels, steps):
    seconds = median_seconds(lambda: model.train_on_batch(images, labels), steps, WARMUP_STEPS)
    return len(images) / seconds


def backbone_name(backbone):
    """The table's name of a backbone config: "SpineNet-49, filter scale 0.25" or "R50-FPN"."""
    if backbone.get("type") == "resnet50":
        return "R50-FPN"
    width = f", filter scale {backbone['filter_size_scale']}" if "filter_size_scale" in backbone else ""
    return f"SpineNet-{backbone['model_id']}{width}"


def cpu_row(name, overrides, steps):
    """The table row of one CPU run: the trainer's model and optimizer for the config."""
    from spinenet_tf.training.config import load_config
    from spinenet_tf.training.trainer import build_model, make_optimizer

    config = load_config(SYNTHETIC_CONFIG, overrides)
    size, batch = config.data.image_size, config.train.batch_size
    with on_cpu():
        model = build_model(config)
        model.compile(optimizer=make_optimizer(config), jit_compile=config.runtime.jit_compile)
        images, labels = random_batch(batch, size, config.data.max_boxes, config.model.num_classes)
        rate = training_images_per_second(model, images, labels, steps)
    optimizer = config.train.optimizer.type
    gmacs = profile(model, (size, size, 3)).gmacs
    keras.backend.clear_session()
    return (
        f"| {name} | {backbone_name(config.model.backbone)} | {size} | {batch} | {gmacs:.2f} | "
        f"{optimizer} | {rate:.2f} |"
    )


def cpu_section(args):
    rows = [
        "| run | backbone | input | batch | GMACs/image | optimizer | images/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in args.runs:
        overrides = CPU_RUNS[name] + [f"data.image_size={args.size}"] * bool(args.size)
        overrides += [f"train.batch_size={args.batch}"] * bool(args.batch)
        rows.append(cpu_row(name, overrides, args.steps))
        print(rows[-1], flush=True)
    device = accelerator()
    gpu = "not measured yet: no device" if device is None else f"{device}: see the next section"
    rows.append(f"| GPU | - | - | - | - | - | {gpu} |")
    notes = f"""\
images/s of `train_on_batch` (forward, backward and optimizer update; RetinaNet's built-in
focal + Huber loss with in-graph anchor labelling) on random images and random boxes
(`data.max_boxes` per image), median of {args.steps} steps after {WARMUP_STEPS} warm-up steps,
on this machine's CPU. Each run is `experiments/retinanet/synthetic.yaml` with the trainer's
`build_model` and `make_optimizer` (so the same model, optimizer and schedule as `make
train`): "synthetic" as it is (SpineNet-49 table at filter scale 0.25, 64-filter endpoints
and head of 2 convs, 7 classes); "49S-640" swaps in SpineNet-49S (head 4x128, 91 classes)
at 640 px, batch 2. The input pipeline is not included (see "Training input pipeline
throughput"). GPU figures come from `{ACCELERATOR_COMMAND}`."""
    title = "RetinaNet training throughput on CPU"
    write_section("training-throughput", title, "\n".join(rows) + "\n\n" + notes, args.out)
    print(f"wrote section 'training-throughput' of {args.out}")


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


def accelerator_rows(args, peak):
    rows = []
    for name in args.models:
        for precision in args.precisions:
            keras.config.set_dtype_policy(precision)
            config = detector_config(name)
            config["backbone"]["image_shape"] = [args.size, args.size, 3]
            if args.filter_size_scale:
                config["backbone"]["filter_size_scale"] = args.filter_size_scale
            model = build_detector(config)
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


def accelerator_section(args):
    device = accelerator()
    if device is None and not args.allow_cpu:
        body = f"""\
not measured yet: no device (no GPU or TPU visible on the machine above).

On a machine with one: `{ACCELERATOR_COMMAND}` (SpineNet-49 and 49S RetinaNet at 640 px,
float32 and mixed_bfloat16, inference and training images/s, and model-FLOP utilisation
against the measured bf16 matmul peak)."""
        write_section("accelerator-throughput", ACCELERATOR_TITLE, body, args.out)
        print(f"no accelerator visible; wrote the 'not measured yet' section of {args.out}")
        return
    if keras.backend.backend() != "jax":
        raise SystemExit(f"--accelerator runs on the JAX backend: {ACCELERATOR_COMMAND}")
    import jax

    device = device or f"CPU ({jax.devices()[0].device_kind})"
    peak = matmul_peak_flops(args.matmul_size)
    print(f"{device}: bf16 matmul peak {peak / 1e12:.2f} TFLOP/s", flush=True)
    rows = [
        "| model | precision | input | batch | GMACs/image | inference images/s | inference MFU | "
        "training images/s | training MFU |",
        "|---|---|---|---|---|---|---|---|---|",
        *accelerator_rows(args, peak),
    ]
    notes = f"""\
Device: {device}. Peak: {peak / 1e12:.2f} TFLOP/s, measured as the median of a jitted
{args.matmul_size}x{args.matmul_size} bf16 matmul (2 n^3 FLOPs). RetinaNet with 91 classes, head
4x256 (49S: 4x128), random images and boxes ({args.max_boxes} per image), median of {args.steps}
steps after warm-up. Inference: one jitted `stateless_call` (raw outputs, no NMS), MFU = 2 x
MACs x images/s / peak. Training: `train_on_batch` (XLA-compiled step, SGD, built-in loss),
MFU = 6 x MACs x images/s / peak (backward ~ 2 x forward). MACs are convolution and dense
multiply-adds from `spinenet_tf.profile`; mixed_bfloat16 keeps variables in float32."""
    write_section("accelerator-throughput", ACCELERATOR_TITLE, "\n".join(rows) + "\n\n" + notes, args.out)
    print(f"wrote section 'accelerator-throughput' of {args.out}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=list(CPU_RUNS), choices=list(CPU_RUNS))
    parser.add_argument("--steps", type=int, default=5, help="timed steps, after warm-up")
    parser.add_argument("--size", type=int, default=None, help="input size for every run (default: per run)")
    parser.add_argument("--batch", type=int, default=None, help="batch size for every run (default: per run)")
    parser.add_argument("--accelerator", action="store_true", help="the GPU/TPU figures (JAX backend)")
    parser.add_argument("--models", nargs="+", default=["49", "49S"], help="with --accelerator")
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--max-boxes", type=int, default=100, help="with --accelerator")
    parser.add_argument("--filter-size-scale", type=float, default=None, help="with --accelerator: smaller")
    parser.add_argument("--matmul-size", type=int, default=8192)
    parser.add_argument(
        "--allow-cpu", action="store_true", help="run --accelerator on the CPU (a smoke test)"
    )
    parser.add_argument("--out", default=str(BENCHMARKS_FILE))
    args = parser.parse_args(argv)
    if args.accelerator:
        args.size, args.batch = args.size or 640, args.batch or 16
        accelerator_section(args)
    else:
        cpu_section(args)


if __name__ == "__main__":
    main()
