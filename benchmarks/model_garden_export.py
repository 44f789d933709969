"""TF Model Garden's RetinaNet exported as a user would (SavedModel, TFLite fp32 and int8), its
artifacts timed and run on request, to set beside our own exports.

A `model_garden.Server`: runs inside the Model Garden virtualenv (tf-models-official,
TensorFlow 2.20, tf_keras), not the project's. It builds the model of
`model_garden_inference` (49, 49S) or `model_garden_mobile` (49-Mobile, 49S-Mobile), randomly
initialised, or (`--arch`) the SpineNet RetinaNet of an architecture given as JSON (`ARCH_KEYS`,
what `model_garden_accuracy` sends for a trained model of ours); `--template PATH` writes that
model's checkpoint as Model Garden's trainer lays it out and exits, `--checkpoint PATH` restores
one (ours, written in that layout) as a Model Garden user does (`RetinaNetTask.initialize`).
It exports the model with Model Garden's own tools: `DetectionModule` through
`export_saved_model_lib.export_inference_graph` (uint8 images of any size in; resize, pad,
model and its default `v2` NMS inside), and the `tflite` input type through
`export_tflite_lib.convert_tflite_model` (a normalised, resized, padded float image in; its
NMS as TFLite's `TFLite_Detection_PostProcess` op, what `nms_version="tflite"` is for). A
conversion that fails is answered with its reason. Then it answers one JSON line per line
read: "load IMAGE.npy" (a uint8 [H, W, 3] image), "time FORMAT" (seconds of one call on it,
host-side preprocessing included), "detect FORMAT" (its detections in the image's pixels),
"artifacts" (sizes and errors), "params" (trainable parameters) and "raw IN.npy OUT.npz" (the
float model's raw outputs on a normalised [1, size, size, 3] input, written as "class_logits"
[1, N, classes] and "box_deltas" [1, N, 4], anchors level by level, row-major, then per
location); FORMAT is one of saved_model, tflite_fp32, tflite_int8. int8 calibrates on the
first `--calibration-images` .npy images of `--calibration` (default: random images).

Usage (from the repository root): printf 'artifacts\nload image.npy\ntime saved_model\n' |
    .bench-venvs/model-garden/bin/python -m benchmarks.model_garden_export --model 49S --work /tmp/mgx
"""

import argparse
import functools
import json
import pathlib
import sys
import time

import numpy as np
import tensorflow as tf
import tf_keras
from official.core import config_definitions
from official.vision.configs import backbones, common, decoders
from official.vision.configs import retinanet as retinanet_config
from official.vision.modeling import factory, retinanet_model
from official.vision.modeling.backbones import spinenet
from official.vision.modeling.layers import detection_generator
from official.vision.ops import preprocess_ops
from official.vision.serving import detection, export_saved_model_lib, export_tflite_lib
from official.vision.tasks import retinanet as retinanet_task

from benchmarks import model_garden_inference, model_garden_mobile
from benchmarks.timing import seconds

MODELS = ("49", "49S", "49-Mobile", "49S-Mobile")
# Artifact -> Model Garden's quantization type (None: float, no quantization).
QUANT_TYPES = {"tflite_fp32": None, "tflite_int8": "int8_fallback"}
CALIBRATION_IMAGES = 4
# The --arch JSON: SpineNet's scaling (Model Garden takes it from its SCALING_MAP, under
# ARCH_MODEL_ID here), then the detector's; one activation and batch norm for both, as
# Model Garden's `norm_activation`.
SCALING_KEYS = ("endpoints_num_filters", "filter_size_scale", "resample_alpha", "block_repeats")
ARCH_KEYS = SCALING_KEYS + (
    "num_classes", "min_level", "max_level", "num_convs", "num_filters", "num_scales",
    "aspect_ratios", "anchor_size", "activation", "norm_momentum", "norm_epsilon",
)  # fmt: skip
ARCH_MODEL_ID = "from_arch"


def from_architecture(arch, size):
    """Model Garden's SpineNet RetinaNet (identity decoder) of `arch` ({ARCH_KEYS}), its other
    settings Model Garden's defaults (detection generator, TFLite post-processing)."""
    spinenet.SCALING_MAP[ARCH_MODEL_ID] = {key: arch[key] for key in SCALING_KEYS}
    levels = {"min_level": arch["min_level"], "max_level": arch["max_level"]}
    config = retinanet_config.RetinaNet(
        num_classes=arch["num_classes"],
        input_size=[size, size, 3],
        backbone=backbones.Backbone(
            type="spinenet", spinenet=backbones.SpineNet(model_id=ARCH_MODEL_ID, **levels)
        ),
        decoder=decoders.Decoder(type="identity", identity=decoders.Identity()),
        anchor=retinanet_config.Anchor(
            num_scales=arch["num_scales"],
            aspect_ratios=arch["aspect_ratios"],
            anchor_size=arch["anchor_size"],
        ),
        head=retinanet_config.RetinaNetHead(num_convs=arch["num_convs"], num_filters=arch["num_filters"]),
        norm_activation=common.NormActivation(
            activation=arch["activation"],
            use_sync_bn=False,
            norm_momentum=arch["norm_momentum"],
            norm_epsilon=arch["norm_epsilon"],
        ),
        **levels,
    )
    return factory.build_retinanet(tf_keras.layers.InputSpec(shape=[None, size, size, 3]), config)


def build(name, size, arch=None):
    """The model of `arch` (`from_architecture`), else of `model_garden_inference` (49, 49S)
    or `model_garden_mobile` (the Mobile ones), its weights made (randomly, seed 0)."""
    tf_keras.utils.set_random_seed(0)
    if arch is not None:
        model = from_architecture(arch, size)
    elif name.endswith("-Mobile"):
        model_id = name.removesuffix("-Mobile")
        model = model_garden_mobile.build(model_id, size, model_garden_mobile.ROWS[model_id][1])
    else:
        model = model_garden_inference.build(name, size)
    raw_outputs(model, tf.zeros([1, size, size, 3]))  # the head makes its weights when called
    return model


def raw_outputs(model, images):
    """(class logits, box deltas) of the float model, each {level: [1, H, W, anchors * K]}:
    backbone -> decoder -> head, as RetinaNetModel.call before decoding."""
    features = model.backbone(images, training=False)
    if model.decoder:
        features = model.decoder(features, training=False)
    return model.head(features, training=False)[:2]


def flat_raw_outputs(model, images):
    """`raw_outputs` as [1, N, K] arrays, levels in increasing order (our models' layout)."""

    def flat(per_level, k):
        return np.concatenate(
            [np.asarray(per_level[key]).reshape(1, -1, k) for key in sorted(per_level, key=int)], 1
        )

    class_logits, box_deltas = raw_outputs(model, images)
    return flat(class_logits, model.head.get_config()["num_classes"]), flat(box_deltas, 4)


def restore(model, size, checkpoint):
    """Restores `checkpoint` into `model` as Model Garden's RetinaNet task initialises a model
    from `init_checkpoint` (all modules; every object of the model matched)."""
    params = experiment(model, size).task
    params.init_checkpoint = str(checkpoint)
    retinanet_task.RetinaNetTask(params).initialize(model)


def with_nms(model, nms_version):
    """`model` (the same layers and weights) with its detection generator set to `nms_version`."""
    generator = detection_generator.MultilevelDetectionGenerator(
        **dict(model.detection_generator.get_config(), nms_version=nms_version)
    )
    return retinanet_model.RetinaNetModel.from_config(dict(model.get_config(), detection_generator=generator))


def experiment(model, size):
    """The experiment config `DetectionModule` reads: `model`'s classes, levels, anchors and
    detection generator, and the default parser (keep the aspect ratio, pad)."""
    config, generator = model.get_config(), model.detection_generator.get_config()
    model_config = retinanet_config.RetinaNet(
        num_classes=model.head.get_config()["num_classes"],
        input_size=[size, size, 3],
        min_level=config["min_level"],
        max_level=config["max_level"],
        anchor=retinanet_config.Anchor(
            num_scales=config["num_scales"],
            aspect_ratios=list(config["aspect_ratios"]),
            anchor_size=config["anchor_size"],
        ),
        detection_generator=retinanet_config.DetectionGenerator(nms_version=generator["nms_version"]),
    )
    return config_definitions.ExperimentConfig(task=retinanet_config.RetinaNetTask(model=model_config))


def export(model, size, input_type, directory):
    """Model Garden's export of `model` for `input_type` (image_tensor or tflite), batch 1."""
    params = experiment(model, size)
    module = detection.DetectionModule(
        params, batch_size=1, input_image_size=[size, size], input_type=input_type, model=model
    )
    export_saved_model_lib.export_inference_graph(
        input_type, 1, [size, size], params, None, str(directory), export_module=module
    )
    return params


def tflite_input(image, size):
    """(the float [1, size, size, 3] input of the tflite export, the resize scale [y, x]): the
    preprocessing Model Garden's serving module runs for the other input types."""
    image = preprocess_ops.normalize_image(
        tf.cast(image, tf.float32), offset=preprocess_ops.MEAN_RGB, scale=preprocess_ops.STDDEV_RGB
    )
    image, image_info = preprocess_ops.resize_and_crop_image(image, [size, size], [size, size])
    return image[None], image_info[2].numpy()


class CalibrationTask:
    """What `convert_tflite_model` asks of a task for int8 calibration: `build_inputs`, a
    dataset of (input, label) pairs; here the tflite inputs of a few images."""

    def __init__(self, images, size):
        self.inputs = [tflite_input(image, size)[0] for image in images]

    def build_inputs(self, params):
        return tf.data.Dataset.from_tensor_slices(tf.concat(self.inputs, 0)).map(lambda x: (x, 0)).batch(1)


def calibration_images(directory, count=CALIBRATION_IMAGES):
    """Up to `count` uint8 images: the first .npy files of `directory`, or random ones."""
    if directory:
        return [np.load(path) for path in sorted(pathlib.Path(directory).glob("*.npy"))[:count]]
    return list(np.random.default_rng(0).integers(0, 256, (count, 480, 640, 3), np.uint8))


def megabytes(path):
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def one_line(error):
    return f"{type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error).strip() else ''}"[
        :300
    ]


class SavedModelRunner:
    """The exported SavedModel's serving signature on a uint8 image, as Model Garden serves it."""

    def __init__(self, directory):
        self.function = tf.saved_model.load(str(directory)).signatures["serving_default"]

    def __call__(self, image):
        return tf.nest.map_structure(np.asarray, self.function(inputs=tf.constant(image[None])))

    def detect(self, image):
        outputs = self(image)
        return outputs, outputs["image_info"][0, 2]


class TFLiteRunner:
    """A .tflite of the tflite export on a uint8 image: host-side preprocessing, then the
    interpreter (default XNNPACK delegate)."""

    def __init__(self, path, size, threads):
        self.size = size
        self.runner = tf.lite.Interpreter(model_path=str(path), num_threads=threads).get_signature_runner()

    def __call__(self, image):
        return self.detect(image)[0]

    def detect(self, image):
        inputs, scale = tflite_input(image, self.size)
        return self.runner(inputs=inputs.numpy()), scale


def detections(runner, image):
    """The detections of `runner` on `image`, boxes [y0, x0, y1, x1] in the image's pixels,
    clipped to it (the SavedModel clips its boxes, TFLite's NMS op does not)."""
    outputs, scale = runner.detect(image)
    count = int(np.asarray(outputs["num_detections"]).reshape(-1)[0])
    boxes = outputs["detection_boxes"][0, :count] / np.tile(scale, 2)
    return {
        "boxes": np.clip(boxes, 0, np.tile(image.shape[:2], 2)).tolist(),
        "scores": outputs["detection_scores"][0, :count].tolist(),
        "classes": outputs["detection_classes"][0, :count].astype(int).tolist(),
    }


def nms_description(generator):
    """The NMS of each export, from the config of the model's detection generator."""
    lite = generator["tflite_post_processing_config"]
    kind = "per class" if lite["use_regular_nms"] else "class-agnostic"
    return (
        f"saved_model: Model Garden's {generator['nms_version']} NMS (per class, pre-NMS top "
        f"{generator['pre_nms_top_k']}, score > {generator['pre_nms_score_threshold']}, "
        f"IoU {generator['nms_iou_threshold']}, max {generator['max_num_detections']}); "
        f"tflite: TFLite_Detection_PostProcess ({kind}, score > {lite['nms_score_threshold']}, "
        f"IoU {lite['nms_iou_threshold']}, max {lite['max_detections']})"
    )


def make_artifacts(model, size, work, threads, calibration):
    """{artifact: {"mb", "error", ...}} and {artifact: runner} of the exports that worked."""
    artifacts, runners = {}, {}
    start = time.perf_counter()
    try:
        export(model, size, "image_tensor", work / "saved_model")
        artifacts["saved_model"] = {"mb": megabytes(work / "saved_model"), "error": None}
        runners["saved_model"] = SavedModelRunner(work / "saved_model")
    except Exception as error:  # noqa: BLE001 - a failed export is a result to report
        artifacts["saved_model"] = {"mb": None, "error": f"saved_model export: {one_line(error)}"}
    print(f"saved_model exported in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    try:
        params = export(with_nms(model, "tflite"), size, "tflite", work / "tflite_saved_model")
    except Exception as error:  # noqa: BLE001 - recorded as the TFLite artifacts' error
        params, reason = None, f"tflite export: {one_line(error)}"
    task = CalibrationTask(calibration, size)
    for name, quant_type in QUANT_TYPES.items():
        start, path = time.perf_counter(), work / f"{name}.tflite"
        artifacts[name] = {"quant_type": quant_type, "mb": None, "error": None if params else reason}
        if params is None:
            continue
        try:
            path.write_bytes(
                export_tflite_lib.convert_tflite_model(
                    saved_model_dir=str(work / "tflite_saved_model"),
                    quant_type=quant_type,
                    params=params,
                    task=task,
                    calibration_steps=len(task.inputs),
                )
            )
            runners[name] = TFLiteRunner(path, size, threads)
            artifacts[name]["mb"] = megabytes(path)
        except Exception as error:  # noqa: BLE001 - a failed conversion is a result to report
            artifacts[name]["error"] = one_line(error)
        print(f"{name}: {time.perf_counter() - start:.0f} s, {artifacts[name]}", file=sys.stderr, flush=True)
    artifacts["nms"] = nms_description(model.detection_generator.get_config())
    return artifacts, runners


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", choices=MODELS)
    which.add_argument("--arch", type=pathlib.Path, help="a JSON file of ARCH_KEYS: that architecture")
    parser.add_argument("--size", type=int, help="input size (default 384 for the Mobile ones, else 640)")
    parser.add_argument("--template", help="write the model's checkpoint to this prefix and exit")
    parser.add_argument("--checkpoint", help="restore this checkpoint (Model Garden's layout) first")
    parser.add_argument("--work", type=pathlib.Path, help="a directory for the artifacts")
    parser.add_argument("--threads", type=int, default=2, help="TFLite interpreter threads")
    parser.add_argument("--calibration", help="a directory of uint8 .npy images for int8 calibration")
    parser.add_argument("--calibration-images", type=int, default=CALIBRATION_IMAGES)
    args = parser.parse_args(argv)
    if args.work is None and args.template is None:
        parser.error("--work is required (unless --template)")
    size = args.size or (384 if (args.model or "").endswith("-Mobile") else 640)
    start = time.perf_counter()
    arch = json.loads(args.arch.read_text()) if args.arch else None
    if arch is not None and set(ARCH_KEYS) - set(arch):
        parser.error(f"--arch {args.arch}: no {sorted(set(ARCH_KEYS) - set(arch))}")
    model = build(args.model, size, arch)
    if args.template:
        tf.train.Checkpoint(**model.checkpoint_items).write(args.template)
        return
    if args.checkpoint:
        restore(model, size, args.checkpoint)
    args.work.mkdir(parents=True, exist_ok=True)
    calibration = calibration_images(args.calibration, args.calibration_images)
    artifacts, runners = make_artifacts(model, size, args.work, args.threads, calibration)
    print(f"artifacts built in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    image = None
    for line in sys.stdin:
        request, _, argument = line.strip().partition(" ")
        if request == "load":
            image = np.load(argument)
            answer = {"ok": True}
        elif request in ("time", "detect") and argument not in runners:
            answer = {"error": artifacts[argument]["error"]}
        elif request == "time":
            answer = {"seconds": seconds(functools.partial(runners[argument], image))}
        elif request == "detect":
            answer = detections(runners[argument], image)
        elif request == "artifacts":
            answer = artifacts
        elif request == "raw":
            source, out = argument.split()
            class_logits, box_deltas = flat_raw_outputs(model, tf.constant(np.load(source), tf.float32))
            np.savez(out, class_logits=class_logits, box_deltas=box_deltas)
            answer = {"ok": True}
        else:  # params
            answer = {"trainable_params": int(sum(np.prod(w.shape) for w in model.trainable_weights))}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
