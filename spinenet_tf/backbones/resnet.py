"""ResNet-50 (keras.applications, random init) as a pyramid feature backbone."""

import keras

# Last block of each ResNet-50 stage in keras.applications, by level (stride 2**level).
RESNET50_STAGE_OUTPUTS = {3: "conv3_block4_out", 4: "conv4_block6_out", 5: "conv5_block3_out"}
# First block of the stages that downsample: keras.applications puts the stride on its
# 1x1 conv ("_1_conv", ResNet v1); v1.5 puts it on the 3x3 ("_2_conv").
DOWNSAMPLING_BLOCKS = ("conv3_block1", "conv4_block1", "conv5_block1")
# Its coarsest stage has stride 32: inputs of a multiple of it keep the FPN's sums aligned.
RESNET50_SIZE_MULTIPLE = 32


def _layer_options(stride_in_1x1, sync_batch_norm):
    """clone_model hook: ResNet v1 -> v1.5 (stride on the 3x3 conv: same weights' shapes, more
    accurate) unless `stride_in_1x1`, and batch norm synchronised across replicas if asked."""

    def clone(layer):
        config = layer.get_config()
        block = layer.name.rsplit("_", 2)[0]
        if not stride_in_1x1 and block in DOWNSAMPLING_BLOCKS and layer.name.endswith(("_1_conv", "_2_conv")):
            config["strides"] = (1, 1) if layer.name.endswith("_1_conv") else (2, 2)
        if isinstance(layer, keras.layers.BatchNormalization):
            config["synchronized"] = sync_batch_norm and keras.backend.backend() == "tensorflow"
        return layer.__class__.from_config(config)

    return clone


@keras.saving.register_keras_serializable(package="spinenet_tf")
class ResNet50Backbone(keras.Model):
    """ResNet-50 returning {"P3", "P4", "P5"} (strides 8, 16, 32), for the R50-FPN baseline.

    Built from keras.applications.ResNet50 with random weights. `stride_in_1x1=False`
    (default) moves each stage's stride from the first 1x1 conv to the 3x3 conv
    (ResNet v1.5, as in TF Model Garden and the papers' R50-FPN baselines: 97.0 GMACs
    for RetinaNet at 640); True keeps keras.applications' original v1 layout.
    `sync_batch_norm` synchronises BN statistics across replicas (TF distribute).
    """

    size_multiple = RESNET50_SIZE_MULTIPLE

    def __init__(self, image_shape=(None, None, 3), stride_in_1x1=False, sync_batch_norm=False, **kwargs):
        image_shape = tuple(image_shape)
        base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=image_shape)
        if not stride_in_1x1 or sync_batch_norm:
            base = keras.models.clone_model(
                base, clone_function=_layer_options(stride_in_1x1, sync_batch_norm)
            )
        outputs = {f"P{level}": base.get_layer(name).output for level, name in RESNET50_STAGE_OUTPUTS.items()}
        super().__init__(inputs=base.input, outputs=outputs, **kwargs)
        self.image_shape = image_shape
        self.stride_in_1x1 = stride_in_1x1
        self.sync_batch_norm = sync_batch_norm
        self.pyramid_channels = {name: x.shape[-1] for name, x in outputs.items()}
        self.pyramid_strides = {f"P{level}": 2**level for level in RESNET50_STAGE_OUTPUTS}

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "image_shape": list(self.image_shape),
            "stride_in_1x1": self.stride_in_1x1,
            "sync_batch_norm": self.sync_batch_norm,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
