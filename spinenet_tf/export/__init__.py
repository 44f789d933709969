"""Export of task models (detectors, classifiers): SavedModel for TF Serving, TFLite (LiteRT), and a
predictor over both."""

from spinenet_tf.export.from_run import export_run
from spinenet_tf.export.predictor import coco_metrics, load_predictor
from spinenet_tf.export.saved_model import export_saved_model
from spinenet_tf.export.tflite import TFLiteDetector, export_tflite

__all__ = [
    "TFLiteDetector",
    "coco_metrics",
    "export_run",
    "export_saved_model",
    "export_tflite",
    "load_predictor",
]
