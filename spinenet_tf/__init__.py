"""spinenet_tf: the SpineNet family of scale-permuted backbones in Keras 3."""

from spinenet_tf.backbones.resnet import ResNet50Backbone
from spinenet_tf.backbones.spinenet import SpineNet
from spinenet_tf.builders import build_backbone, build_detector
from spinenet_tf.detection.retinanet import RetinaNet
from spinenet_tf.profile import ModelProfile, profile
from spinenet_tf.specs import MODEL_IDS, SCALING, SPINENET_BLOCK_SPECS, BlockSpec

__all__ = [
    "MODEL_IDS",
    "SCALING",
    "SPINENET_BLOCK_SPECS",
    "BlockSpec",
    "ModelProfile",
    "ResNet50Backbone",
    "RetinaNet",
    "SpineNet",
    "build_backbone",
    "build_detector",
    "profile",
]
__version__ = "0.1.0"
