"""spinenet_tf: the SpineNet family of scale-permuted backbones in Keras 3.

The public names are loaded on first use (PEP 562), so that importing a light submodule
(`spinenet_tf.specs`, the command line's parser) does not load Keras and TensorFlow. The
model classes register themselves with Keras when loaded: on the first use of any public
name, or at once when Keras is loaded already, so that `keras.saving.load_model` finds them.
"""

import importlib
import sys

# Public name -> the module that defines it.
_EXPORTS = {
    "MODEL_IDS": "spinenet_tf.specs",
    "SCALING": "spinenet_tf.specs",
    "SPINENET_BLOCK_SPECS": "spinenet_tf.specs",
    "BlockSpec": "spinenet_tf.specs",
    "ImageClassifier": "spinenet_tf.classification.image_classifier",
    "ImageConverter": "spinenet_tf.layers.image_converter",
    "MaskRCNN": "spinenet_tf.detection.mask_rcnn",
    "ModelProfile": "spinenet_tf.profile",
    "ResNet50Backbone": "spinenet_tf.backbones.resnet",
    "RetinaNet": "spinenet_tf.detection.retinanet",
    "SpineNet": "spinenet_tf.backbones.spinenet",
    "SpineNetMobile": "spinenet_tf.backbones.spinenet_mobile",
    "build_backbone": "spinenet_tf.builders",
    "build_classifier": "spinenet_tf.builders",
    "paste_masks": "spinenet_tf.masks",
    "build_detector": "spinenet_tf.builders",
    "optimize_for_inference": "spinenet_tf.inference",
    "preset_names": "spinenet_tf.pretrained.presets",
    "profile": "spinenet_tf.profile",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def _load_all():
    for name, module in _EXPORTS.items():
        globals()[name] = getattr(importlib.import_module(module), name)  # later look-ups skip __getattr__


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'spinenet_tf' has no attribute {name!r}")
    _load_all()
    return globals()[name]


def __dir__():
    return sorted([*globals(), *_EXPORTS])


if "keras" in sys.modules:  # Keras' import cost is paid: register the models for load_model now
    _load_all()
