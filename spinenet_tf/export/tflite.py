"""TFLite (LiteRT) export with post-processing inside, and its runner.

The .tflite takes one letterboxed uint8 image `images` [1, S, S, 3] (S the model size;
`serving.letterbox` prepares it: longest side resized to S, zero padding bottom/right)
and gives detections in those S x S pixels plus the raw outputs, under the signature
`serving_default`. Quantisation modes:

- `none`: float32.
- `fp16`: float16 weights, float32 compute on CPU.
- `dynamic`: int8 weights, activations quantised on the fly.
- `int8`: int8 weights and activations, calibrated on representative images. The
  post-processing ops (box decoding, NMS) are denylisted from quantisation, so they
  compute in float (a quantised IoU division fails on empty boxes); the quantiser still
  passes some of their inputs through int8 (the scores, the box deltas).
"""

import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from spinenet_tf.export.serving import (
    POSTPROCESS_SCOPE,
    detect_letterboxed,
    model_image_size,
    to_serving_outputs,
)

QUANTIZATIONS = ("none", "fp16", "dynamic", "int8")
RAW_OUTPUTS = ("class_logits", "box_deltas")


def _write_float_saved_model(model, directory):
    size = model_image_size(model)

    def serve(images):
        raw, detections = detect_letterboxed(model, tf.cast(images, tf.float32))
        return {**to_serving_outputs(detections), **raw}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve, [tf.TensorSpec([1, size, size, 3], tf.uint8, "images")])
    archive.write_out(directory, verbose=False)


def _postprocess_nodes(float_tflite):
    """Names of the post-processing ops of a float .tflite, as the quantiser's denylist wants them:
    an op's output tensor name, or its outputs' names joined by ';' when it has several."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=float_tflite)
    names = {d["index"]: d["name"] for d in interpreter.get_tensor_details()}
    nodes = set()
    for op in interpreter._get_ops_details():
        outputs = [names[i] for i in op["outputs"] if i in names]
        if outputs and outputs[0].startswith(POSTPROCESS_SCOPE + "/"):
            nodes.update(outputs)
            nodes.add(";".join(outputs))
    return sorted(nodes)


def export_tflite(model, path, quantize="none", representative_images=None):
    """Converts `model` to a .tflite file at `path` and returns its size in bytes.

    `representative_images`: an iterable of letterboxed uint8 [S, S, 3] arrays, needed for int8.
    """
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {QUANTIZATIONS}, got {quantize!r}.")
    if quantize == "int8" and representative_images is None:
        raise ValueError("int8 quantisation needs representative images (the training data's).")
    with tempfile.TemporaryDirectory() as directory:
        _write_float_saved_model(model, directory)

        def converter():
            return tf.lite.TFLiteConverter.from_saved_model(directory, signature_keys=["serving_default"])

        if quantize == "none":
            content = converter().convert()
        elif quantize in ("fp16", "dynamic"):
            conversion = converter()
            conversion.optimizations = [tf.lite.Optimize.DEFAULT]
            if quantize == "fp16":
                conversion.target_spec.supported_types = [tf.float16]
            content = conversion.convert()
        else:
            content = _convert_int8(converter, representative_images)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = f"{path}.partial"
    with open(partial, "wb") as f:
        f.write(content)
    os.replace(partial, path)
    return len(content)


def _convert_int8(converter, representative_images):
    images = [np.asarray(image, np.uint8)[None] for image in representative_images]
    if not images:
        raise ValueError("int8 quantisation needs at least one representative image.")

    def representative_dataset():
        for image in images:
            yield {"images": image}

    denylist = _postprocess_nodes(converter().convert())
    conversion = converter()
    conversion.optimizations = [tf.lite.Optimize.DEFAULT]
    conversion.representative_dataset = representative_dataset
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=conversion,
        debug_dataset=representative_dataset,
        debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=denylist),
    )
    return debugger.get_nondebug_quantized_model()


class TFLiteDetector:
    """Runs an exported .tflite through the LiteRT signature runner."""

    def __init__(self, path, num_threads=None):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        self.runner = self.interpreter.get_signature_runner("serving_default")
        self.image_size = int(self.runner.get_input_details()["images"]["shape"][1])

    def __call__(self, letterboxed_image):
        """uint8 [S, S, 3] (or [1, S, S, 3]) -> dict of outputs with the batch dimension of 1."""
        image = np.asarray(letterboxed_image)
        if image.ndim == 3:
            image = image[None]
        expected = (1, self.image_size, self.image_size, 3)
        if image.shape != expected or image.dtype != np.uint8:
            raise ValueError(
                f"The TFLite model takes one letterboxed uint8 image of shape {expected}; "
                f"got {image.dtype} {image.shape}."
            )
        return self.runner(images=image)
