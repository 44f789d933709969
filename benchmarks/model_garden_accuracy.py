"""The AP that Model Garden's own exports keep, for the `make train` model.

There is no Model Garden model trained on the synthetic set, so ours goes over: Model
Garden builds its RetinaNet of the run's architecture and writes its checkpoint (a
template of its layout), our weights are written into that layout
(`pretrained.export_reference`), Model Garden restores them as its users restore a
checkpoint and exports the model with its own tools (`benchmarks.model_garden_export`:
SavedModel with image_tensor input, TFLite fp32 and its `int8_fallback` mode calibrated on
CALIBRATION_IMAGES training images, every setting a user would not change at Model Garden's
default). Each artifact then runs on every val image end to end, its detections scored by
our COCO evaluator. Class ids need no mapping: Model Garden's SavedModel drops background
class 0 and adds 1 back, its TFLite post-processing op takes all the classes, background
included (label offset 0), so both answer in our ids.

Two checks make a wrong transfer fail loudly: Model Garden's float model computes our raw
outputs on the same normalised input (MAX_RAW_ERROR), and, on the whole val split (a few
images' AP is too noisy), its SavedModel's AP is our Keras model's within MAX_AP_GAP. They
differ by Model Garden's preprocessing: it pads the letterboxed image after normalising
(mean colour), where ours and our training pads black; on the whole split that has cost its
SavedModel up to a point of AP (0.452 against 0.464 for one `make train` model, 0.458 against
0.458 for another), and fed our letterboxed image it scored ours to 0.001 on 30 images (its
pre-NMS top 5000 against our 1000 changes nothing more). Its TFLite exports lose more by their
default post-processing (class-agnostic, scores above 0.1 where the SavedModel keeps those
above 0.05): 0.354 and 0.368 in fp32 for those two models (BENCHMARKS.md, "Deployable
artifacts", and its git history).

Usage: python -m benchmarks.model_garden_accuracy [--model-dir runs/synthetic] [--threads 2]
           [--val-images N]
"""

import argparse
import json
import pathlib
import subprocess
import tempfile
import time

import numpy as np

from benchmarks.export_formats import Subset
from benchmarks.model_garden import REPO, Server, model_garden_python
from spinenet_tf.data.pipeline import decode, make_source
from spinenet_tf.errors import ModelError
from spinenet_tf.export.predictor import KerasPredictor, coco_metrics
from spinenet_tf.export.serving import letterbox_uint8
from spinenet_tf.layers.image_converter import normalise_image
from spinenet_tf.pretrained.export_reference import write_reference_checkpoint
from spinenet_tf.training.trainer import load_trained_model

SERVER = "benchmarks.model_garden_export"
ARTIFACTS = {
    "Model Garden SavedModel": "saved_model",
    "Model Garden TFLite fp32": "tflite_fp32",
    "Model Garden TFLite int8": "tflite_int8",
}
CALIBRATION_IMAGES = 100  # as our int8 export's AP (`export_formats.scored_export`)
MAX_RAW_ERROR = 1e-4  # max |ours - theirs| / max |theirs|: float32 rounding of the same convs
MAX_AP_GAP = 0.03  # see the module docstring: its padding costs 0.009
TEMPLATE_TIMEOUT_S = 600
# Our RetinaNet's settings Model Garden's `norm_activation` holds once for backbone and head.
SHARED = ("activation", "norm_momentum", "norm_epsilon", "min_level", "max_level")


def model_garden_architecture(model):
    """The `--arch` JSON of `model_garden_export` for our SpineNet RetinaNet `model`."""
    backbone, task = model.backbone.get_config(), model.task_config()
    if task["decoder"] != "identity" or "block_specs" not in backbone:
        raise ModelError(
            "Model Garden's exports are compared for SpineNet RetinaNets (identity decoder) only."
        )
    different = [key for key in SHARED if backbone[key] != task[key]]
    if different:
        raise ModelError(
            f"Model Garden's RetinaNet has one {different} for backbone and head; this model has two."
        )
    keys = ("endpoints_num_filters", "filter_size_scale", "resample_alpha", "block_repeats")
    return {
        **{key: backbone[key] for key in keys},
        **{key: task[key] for key in SHARED},
        **{
            key: task[key] for key in ("num_classes", "num_convs", "num_filters", "num_scales", "anchor_size")
        },
        "aspect_ratios": list(task["aspect_ratios"]),
    }


def relative_error(ours, theirs):
    ours, theirs = np.asarray(ours, "float64"), np.asarray(theirs, "float64")
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def save_images(source, directory, count):
    """The first `count` images of a data source as uint8 .npy files in `directory`."""
    directory.mkdir(parents=True)
    for index, example in enumerate(Subset(source, count).dataset().map(decode)):
        np.save(directory / f"{index:05d}.npy", example["image"].numpy())
    return directory


class ServerPredictor:
    """A predictor (see `export.predictor`) of one Model Garden artifact: photo -> detections."""

    def __init__(self, server, artifact, work):
        self.server, self.artifact, self.path = server, artifact, work / "photo.npy"

    def __call__(self, image):
        np.save(self.path, image)
        self.server.ask(f"load {self.path}")
        answer = self.server.ask(f"detect {self.artifact}")
        return {
            "boxes": np.asarray(answer["boxes"], "float32").reshape(-1, 4),
            "scores": np.asarray(answer["scores"], "float32"),
            "classes": np.asarray(answer["classes"], "int64"),
        }


def raw_output_errors(model, server, photo, work):
    """{output: relative error} of Model Garden's float model against ours on one photo,
    letterboxed and normalised as our model takes it."""
    size = model.backbone.input.shape[1]
    image = np.asarray(normalise_image(letterbox_uint8(photo, size)[0][None]))
    np.save(work / "raw_in.npy", image)
    server.ask(f"raw {work / 'raw_in.npy'} {work / 'raw_out.npz'}")
    ours = model(image, training=False)
    with np.load(work / "raw_out.npz") as theirs:
        return {key: relative_error(ours[key], theirs[key]) for key in ("class_logits", "box_deltas")}


def model_garden_accuracy(model_dir, threads, mg_python, val_images=None):
    """{artifact of ARTIFACTS: COCO metrics on the run's val split (its first `val_images`), or
    {"error": reason} when Model Garden could not make it} for the run in `model_dir`.

    Raises RuntimeError when the transferred model does not compute ours (`MAX_RAW_ERROR`;
    `MAX_AP_GAP` on the whole split)."""
    model, config, _ = load_trained_model(model_dir)
    size = config.data.image_size
    val = Subset(make_source(config.data.val), val_images)
    annotations = config.data.val.annotations
    with tempfile.TemporaryDirectory() as directory:
        work = pathlib.Path(directory)
        arch = work / "arch.json"
        arch.write_text(json.dumps(model_garden_architecture(model)))
        build = ["--arch", arch, "--size", size]
        result = subprocess.run(
            [str(mg_python), "-m", SERVER, *map(str, build), "--template", str(work / "template" / "ckpt")],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=TEMPLATE_TIMEOUT_S,
        )
        if result.returncode:
            raise RuntimeError(
                f"{SERVER} --template failed: {(result.stderr.strip() or 'no output').splitlines()[-1]}"
            )
        checkpoint = write_reference_checkpoint(
            model, work / "template" / "ckpt", work / "ours" / "ckpt", "model-garden"
        )
        calibration = save_images(make_source(config.data.train), work / "calibration", CALIBRATION_IMAGES)
        server = Server(
            mg_python, SERVER, *build, "--checkpoint", checkpoint, "--work", work / "model_garden",
            "--threads", threads, "--calibration", calibration, "--calibration-images", CALIBRATION_IMAGES,
        )  # fmt: skip
        try:
            photo = next(iter(val.dataset().map(decode)))["image"].numpy()
            errors = raw_output_errors(model, server, photo, work)
            print(f"Model Garden's float model vs ours, raw outputs: {errors}", flush=True)
            if max(errors.values()) > MAX_RAW_ERROR:
                raise RuntimeError(
                    f"Model Garden's model with our weights computes other raw outputs than ours "
                    f"(relative errors {errors}, bar {MAX_RAW_ERROR}): the weight transfer is wrong."
                )
            artifacts = server.ask("artifacts")
            metrics = {}
            for name, artifact in ARTIFACTS.items():
                if artifacts[artifact]["error"]:
                    metrics[name] = {"error": artifacts[artifact]["error"]}
                    continue
                start = time.perf_counter()
                metrics[name] = coco_metrics(ServerPredictor(server, artifact, work), val, annotations)
                print(
                    f"{name}: AP {metrics[name]['AP']:.3f}, AP50 {metrics[name]['AP50']:.3f} "
                    f"({time.perf_counter() - start:.0f} s)",
                    flush=True,
                )
        finally:
            server.close()
    if val_images is None:
        check_saved_model_ap(metrics["Model Garden SavedModel"], model, val, annotations)
    return metrics


def check_saved_model_ap(saved_model, model, val, annotations):
    """RuntimeError unless Model Garden's SavedModel (its metrics; none when it failed to
    export) scores our Keras model's AP."""
    if "error" in saved_model:
        return
    keras_ap = coco_metrics(KerasPredictor(model, {}), val, annotations)["AP"]
    print(f"our Keras model: AP {keras_ap:.3f}", flush=True)
    if abs(saved_model["AP"] - keras_ap) > MAX_AP_GAP:
        raise RuntimeError(
            f"Model Garden's SavedModel of our weights scores AP {saved_model['AP']:.3f}, our Keras "
            f"model {keras_ap:.3f} (bar {MAX_AP_GAP}): its detections are read wrong (classes, boxes)."
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="runs/synthetic", help="the `make train` run")
    parser.add_argument("--threads", type=int, default=2, help="TFLite interpreter threads")
    parser.add_argument("--val-images", type=int, help="score the first N val images (default all)")
    args = parser.parse_args(argv)
    mg_python, reason = model_garden_python()
    if mg_python is None:
        raise SystemExit(f"no Model Garden virtualenv: {reason}")
    start = time.perf_counter()
    metrics = model_garden_accuracy(args.model_dir, args.threads, mg_python, args.val_images)
    for name, values in metrics.items():
        print(name, values if "error" in values else f"AP {values['AP']:.3f}, AP50 {values['AP50']:.3f}")
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
