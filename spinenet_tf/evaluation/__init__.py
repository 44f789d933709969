"""COCO metrics for detector outputs."""

from spinenet_tf.evaluation.coco_evaluator import COCO_METRIC_NAMES, MASK_METRIC_NAMES, CocoEvaluator

__all__ = ["COCO_METRIC_NAMES", "MASK_METRIC_NAMES", "CocoEvaluator"]
