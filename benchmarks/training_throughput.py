"""Training throughput of RetinaNet on CPU: images/s of a full training step.

Usage: python -m benchmarks.training_throughput [--runs synthetic 49S-640] [--steps 5]
           [--size N] [--batch N] [--out BENCHMARKS.md]

A full training step (forward, backward, optimizer update, with the RetinaNet's built-in
loss and in-graph anchor labelling) on random images and boxes, on the CPU, with the
model and optimizer the trainer builds from an experiment config. The accelerator
figures come from `benchmarks.accelerator_throughput`.
"""

import argparse

import keras

from benchmarks.accelerator_throughput import ACCELERATOR_COMMAND, accelerator
from benchmarks.report import BENCHMARKS_FILE, write_section
from benchmarks.training_step import WARMUP_STEPS, random_batch, training_images_per_second
from spinenet_tf import profile
from spinenet_tf.training.config import load_config
from spinenet_tf.training.trainer import build_model, make_optimizer

# The shipped experiment of `make train` (spinenet_tf/experiments/retinanet/synthetic.yaml).
SYNTHETIC_EXPERIMENT = "retinanet/synthetic"
# CPU runs: overrides of that experiment (the trainer builds model and optimizer from them).
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


def on_cpu():
    """A context that places the backend's computation on the CPU even when a GPU is visible."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.default_device(jax.devices("cpu")[0])
    import tensorflow as tf

    return tf.device("/CPU:0")


def backbone_name(backbone):
    """The table's name of a backbone config: "SpineNet-49, filter scale 0.25" or "R50-FPN"."""
    if backbone.get("type") == "resnet50":
        return "R50-FPN"
    width = f", filter scale {backbone['filter_size_scale']}" if "filter_size_scale" in backbone else ""
    return f"SpineNet-{backbone['model_id']}{width}"


def cpu_row(name, overrides, steps):
    """The table row of one CPU run: the trainer's model and optimizer for the config."""
    config = load_config(SYNTHETIC_EXPERIMENT, overrides)
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=list(CPU_RUNS), choices=list(CPU_RUNS))
    parser.add_argument("--steps", type=int, default=5, help="timed steps, after warm-up")
    parser.add_argument("--size", type=int, default=None, help="input size for every run (default: per run)")
    parser.add_argument("--batch", type=int, default=None, help="batch size for every run (default: per run)")
    parser.add_argument("--out", default=str(BENCHMARKS_FILE))
    args = parser.parse_args(argv)

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
on this machine's CPU. Each run is `spinenet_tf/experiments/retinanet/synthetic.yaml` with the trainer's
`build_model` and `make_optimizer` (so the same model, optimizer and schedule as `make
train`): "synthetic" as it is (SpineNet-49 table at filter scale 0.25, 64-filter endpoints
and head of 2 convs, 7 classes); "49S-640" swaps in SpineNet-49S (head 4x128, 91 classes)
at 640 px, batch 2. The input pipeline is not included (see "Training input pipeline
throughput"). GPU figures come from `{ACCELERATOR_COMMAND}`."""
    title = "RetinaNet training throughput on CPU"
    write_section("training-throughput", title, "\n".join(rows) + "\n\n" + notes, args.out)
    print(f"wrote section 'training-throughput' of {args.out}")


if __name__ == "__main__":
    main()
