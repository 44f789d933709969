"""TFLite (LiteRT) export with post-processing inside, and its runner.

The .tflite takes one model-sized uint8 image `images` [1, S, S, 3] (S the model size),
prepared on the host with the model's converter: for a detector `serving.letterbox_uint8`
(longest side resized to S, zero padding bottom/right), and it gives detections in those
S x S pixels plus the raw outputs; for a classifier `serving.center_crop_uint8` (the centred
square of a fraction of the shorter side, resized to S), and it gives `probabilities`, the
top-k `classes` and `scores`, and the `logits`. Signature `serving_default`. RetinaNet's NMS
is LiteRT's greedy kernel (`serving.greedy_suppression`): the same detections, in a fraction of
the time. Quantisation modes:

- `none`: float32.
- `fp16`: float16 weights, float32 compute on CPU.
- `dynamic`: int8 weights, activations quantised on the fly.
- `int8`: the float model quantised to int8 weights and activations, calibrated on
  representative images, by `ai_edge_quantizer` on the float .tflite, but for the layers the
  model names in `int8_float_layers` and the post-processing (box decoding and NMS, softmax
  and top-k), which stay float, and those in `int8_dynamic_layers`: int8 weights, activations
  quantised per call from their own range (dynamic range). RetinaNet's head prediction convs
  are dynamic: calibrated int8 there cost 2.9 COCO AP points on the synthetic benchmark (the
  class predictions most), dynamic nothing, and float took a third of SpineNet-49's time at
  640 px (the 91-class prediction conv is the model's largest); a quantised IoU division
  fails on empty boxes. An ImageClassifier keeps its dense logits float (a sliver of its compute).
  The TF converter's int8 mode cannot do this: it puts int8 quantize/dequantize pairs
  between ops it was told to leave float.
"""

import os
import re
import tempfile

import keras
import numpy as np
import tensorflow as tf

from spinenet_tf.detection.retinanet import RetinaNet
from spinenet_tf.errors import DataError, ModelError
from spinenet_tf.export.serving import (
    POSTPROCESS_SCOPE,
    detect_letterboxed,
    greedy_suppression,
    model_image_size,
    to_serving_outputs,
)
from spinenet_tf.inference import optimize_for_inference

QUANTIZATIONS = ("none", "fp16", "dynamic", "int8")
# LiteRT's default CPU delegate, XNNPACK, aborts the process ("double free or corruption") on
# an int8 tensor of a near-empty range (scale ~0): a ReLU that stays at 0, or at one value,
# on every calibration image, as the squeeze-excitation convs of SpineNet-Mobile's narrow
# blocks do, and most of a randomly initialised model's head. int8 export widens a calibrated
# range narrower than this (zero included) to this width: its op stays int8, and fast.
MIN_INT8_RANGE = 1e-3


def _write_float_saved_model(model, directory):
    size = model_image_size(model)
    suppress = greedy_suppression if isinstance(model, RetinaNet) else None

    def serve(images):
        raw, answers = detect_letterboxed(model, tf.cast(images, tf.float32), suppress)
        return {**to_serving_outputs(answers), **_raw_outputs(raw, answers)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve, [tf.TensorSpec([1, size, size, 3], tf.uint8, "images")])
    archive.write_out(directory, verbose=False)


def _raw_outputs(raw, answers):
    """The raw outputs where they are not the answers themselves: RetinaNet's class logits and
    box deltas over all anchors, a classifier's logits."""
    if not isinstance(raw, dict):
        return {"logits": raw}
    return {name: value for name, value in raw.items() if name not in answers}


def _scopes_regex(names):
    return "|".join(f"(?:^|;){re.escape(name)}(?:;|$)" for name in names)


def _float_scopes_regex(float_tflite, float_layers):
    """A regex matching the ops that int8 leaves in float, by their output tensor names (the
    op's "scope" for ai_edge_quantizer, several outputs joined by ';'): the post-processing
    scope, the head's layers and the ops giving the signature's outputs."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=float_tflite)
    names = {d["index"]: d["name"] for d in interpreter.get_tensor_details()}
    outputs = [
        names[index]
        for signature in interpreter._get_full_signature_list().values()
        for index in signature["outputs"].values()
    ]
    scopes = [f"(?:^|;){re.escape(POSTPROCESS_SCOPE)}/", _layers_regex(float_layers)]
    return "|".join([*scopes, _scopes_regex(outputs)])


def _layers_regex(layers):
    """A regex matching the ops of the named Keras layers (their tensors' "/name_" part)."""
    return rf"/(?:{'|'.join(layers)})_"


def export_tflite(model, path, quantize="none", representative_images=None):
    """Converts `model` (its `optimize_for_inference` copy) to a .tflite file at `path` and
    returns its size in bytes.

    `representative_images`: an iterable of model-sized uint8 [S, S, 3] arrays as the .tflite
    takes them (letterboxed, or centre-cropped for a classifier), needed for int8.
    """
    if quantize not in QUANTIZATIONS:
        raise ModelError(f"quantize must be one of {QUANTIZATIONS}, got {quantize!r}.")
    float_layers = getattr(model, "int8_float_layers", None)
    if quantize == "int8" and not float_layers:
        raise ModelError(
            f"int8 export covers RetinaNet; export a {type(model).__name__} with quantize none, fp16 "
            "or dynamic."
        )
    if quantize == "int8" and representative_images is None:
        raise ModelError("int8 quantisation needs representative images (the training data's).")
    with tempfile.TemporaryDirectory() as directory:
        _write_float_saved_model(optimize_for_inference(model), directory)

        def converter():
            return tf.lite.TFLiteConverter.from_saved_model(directory, signature_keys=["serving_default"])

        if quantize == "none":
            content = converter().convert()
        elif quantize == "int8":
            dynamic_layers = getattr(model, "int8_dynamic_layers", ())
            content = _quantize_int8(
                converter().convert(), representative_images, float_layers, dynamic_layers
            )
        elif quantize in ("fp16", "dynamic"):
            conversion = converter()
            conversion.optimizations = [tf.lite.Optimize.DEFAULT]
            if quantize == "fp16":
                conversion.target_spec.supported_types = [tf.float16]
            content = conversion.convert()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = f"{path}.partial"
    with open(partial, "wb") as f:
        f.write(content)
    os.replace(partial, path)
    return len(content)


def _quantize_int8(float_tflite, representative_images, float_layers, dynamic_layers):
    """Static int8 quantisation of a float .tflite but for the ops of `_float_scopes_regex`
    and the dynamic-range int8 of `dynamic_layers`.

    Weights: int8 symmetric per output channel; activations: int8 asymmetric per tensor,
    ranges the min/max over the representative images (collected by the interpreter's
    profiler, which skips the tensors of the NMS while loop, left float anyway).
    """
    from ai_edge_quantizer import quantizer
    from ai_edge_quantizer.calibrator import CalibrationMode

    images = [np.asarray(image, np.uint8)[None] for image in representative_images]
    if not images:
        raise DataError("int8 quantisation needs at least one representative image (none could be read).")
    int8 = {
        "activation_tensor_config": {
            "num_bits": 8,
            "symmetric": False,
            "granularity": "TENSORWISE",
            "dtype": "INT",
        },
        "weight_tensor_config": {
            "num_bits": 8,
            "symmetric": True,
            "granularity": "CHANNELWISE",
            "dtype": "INT",
        },
        "compute_precision": "INTEGER",
        "explicit_dequantize": False,
    }
    dynamic = {key: value for key, value in int8.items() if key != "activation_tensor_config"}
    recipe = [  # the last rule matching an op wins
        {"regex": ".*", "operation": "*", "algorithm_key": "min_max_uniform_quantize", "op_config": int8},
        {
            "regex": _float_scopes_regex(float_tflite, float_layers),
            "operation": "*",
            "algorithm_key": "no_quantize",
        },
    ]
    if dynamic_layers:
        recipe.append(
            {
                "regex": _layers_regex(dynamic_layers),
                "operation": "*",
                "algorithm_key": "min_max_uniform_quantize",
                "op_config": dynamic,
            }
        )
    calibration = quantizer.Quantizer(float_tflite, recipe).calibrate(
        {"serving_default": [{"images": image} for image in images]},
        num_threads=os.cpu_count() or 1,
        mode=CalibrationMode.CALIBRATION_PROFILER_BASED,
    )
    for bounds in calibration.values():  # each range at least MIN_INT8_RANGE wide, zero in it
        floor = np.minimum(np.min(bounds["min"]), 0.0) + MIN_INT8_RANGE
        bounds["max"] = np.maximum(bounds["max"], floor).astype(np.asarray(bounds["max"]).dtype)
    quantization = quantizer.Quantizer(float_tflite, recipe)
    result = quantization.quantize(calibration, enable_progress_bar=False, enable_progress_report=False)
    return bytes(result.quantized_model)


class TFLiteDetector:
    """Runs an exported .tflite (a detector's or a classifier's) through LiteRT."""

    def __init__(self, path, num_threads=None):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        # The export's one signature is the primary subgraph, run by the interpreter's own calls.
        runner = self.interpreter.get_signature_runner("serving_default")
        inputs, outputs = runner.get_input_details(), runner.get_output_details()
        del runner  # it holds the interpreter's tensors, which allocating would invalidate
        self.interpreter.allocate_tensors()
        self.input_index = inputs["images"]["index"]
        self.image_size = int(inputs["images"]["shape"][1])
        self.output_indices = {name: detail["index"] for name, detail in outputs.items()}
        self.is_classifier = "probabilities" in self.output_indices

    def __call__(self, model_sized_image, outputs=None):
        """uint8 [S, S, 3] (or [1, S, S, 3]) -> dict of the named `outputs` (default: all) with
        the batch dimension of 1. Naming them skips copying the rest (a detector's raw class
        logits: 10 MB at 384 px)."""
        image = np.asarray(model_sized_image)
        if image.ndim == 3:
            image = image[None]
        expected = (1, self.image_size, self.image_size, 3)
        if image.shape != expected or image.dtype != np.uint8:
            view = "centre-cropped" if self.is_classifier else "letterboxed"
            raise ValueError(
                f"The TFLite model takes one {view} uint8 image of shape {expected}; "
                f"got {image.dtype} {image.shape}."
            )
        self.interpreter.set_tensor(self.input_index, image)
        self.interpreter.invoke()
        names = self.output_indices if outputs is None else outputs
        return {name: self.interpreter.get_tensor(self.output_indices[name]) for name in names}
