"""Mobile SpineNet: SpineNet's scale permutation with MBConv blocks (Du et al., ECCV 2020)."""

import dataclasses

import keras

from spinenet_tf import specs
from spinenet_tf.backbones.spinenet import ACTIVATIONS, regularizer_from_config, scale_permuted_pyramid
from spinenet_tf.block_graph import resolve_block_graph
from spinenet_tf.errors import ModelError
from spinenet_tf.layers.conv_norm import ConvNormSettings, conv_norm
from spinenet_tf.layers.mbconv import mbconv_group, resample_depthwise


def _graph(block_specs, min_level, max_level):
    block_specs = specs.MOBILE_BLOCK_SPECS if block_specs is None else block_specs
    try:
        return resolve_block_graph(
            block_specs, min_level, max_level, specs.MOBILE_STEM_BLOCKS, specs.MOBILE_BLOCK_TYPES
        )
    except ValueError as error:  # an impossible table or levels: the user's to fix
        raise ModelError(str(error)) from None


def spinenet_mobile_size_multiple(block_specs=None, min_level=3, max_level=7):
    """What the input height and width must be a multiple of: 2**L, L the coarsest level of
    the blocks the outputs need, or `max_level` if higher (128 for the published table at
    any levels, since its level-7 block feeds every output)."""
    graph = _graph(block_specs, min_level, max_level)
    return 2 ** max(max_level, *(node.level for node in graph.used_nodes()))


def _check_image_shape(image_shape, multiple):
    """Height and width multiples of `multiple` (or None): Model Garden's up-sampling by level
    factors joins levels only there."""
    if len(image_shape) != 3 or image_shape[-1] is None:
        raise ModelError(
            f"image_shape must be (height, width, channels) with known channels, got {image_shape}."
        )
    for axis, size in zip(("height", "width"), image_shape[:2]):
        if size is not None and (size <= 0 or size % multiple):
            raise ModelError(
                f"Input {axis} {size} is not a multiple of {multiple}: SpineNetMobile needs height and "
                f"width divisible by 2**{multiple.bit_length() - 1} = {multiple} (its coarsest level)."
            )


@keras.saving.register_keras_serializable(package="spinenet_tf")
class SpineNetMobile(keras.Model):
    """Mobile SpineNet backbone: image in, dict of pyramid features "P{min_level}".."P{max_level}" out.

    The SpineNet contract (`pyramid_channels`, `pyramid_strides`, `size_multiple`, config
    round trip) with Model Garden's `spinenet_mobile` network: a 3x3/2 stem conv, two MBConv
    stem blocks (levels 1 and 2), then SpineNet-49's scale permutation of MBConv blocks
    whose width is set by their level, joined by depthwise resampling. `model_id` picks a
    row of the scaling table ("49", "49S", "49XS"); each scaling field given explicitly
    overrides it. Feature "Pn" has stride 2**n and `endpoints_num_filters` channels.

    Args:
        block_specs: the scale-permuted block table (default: Mobile SpineNet-49's), as
            `BlockSpec`s or (level, "mbconv", (offset0, offset1), is_output) rows.
        expand_ratio: expansion of every MBConv's inverted bottleneck.
        se_ratio: squeeze-excitation width as a fraction of a block's input width (0: none).
        stochastic_depth_rate: drop-path rate of the last block; block i of n gets
            rate * i / n, stem blocks none.
        sync_batch_norm: synchronise BN statistics across replicas (TF distribute).
        kernel_regularizer: None, an L2 factor, or a Keras regularizer (or its config);
            for the convs, not the depthwise kernels (as Model Garden's).
    """

    # The input size multiple of the published table, whatever the levels (builders read it).
    size_multiple = 128

    def __init__(
        self,
        model_id="49",
        image_shape=(None, None, 3),
        min_level=3,
        max_level=7,
        endpoints_num_filters=None,
        filter_size_scale=None,
        block_repeats=None,
        block_specs=None,
        expand_ratio=specs.MOBILE_EXPAND_RATIO,
        se_ratio=specs.MOBILE_SE_RATIO,
        activation="swish",
        stochastic_depth_rate=0.0,
        norm_momentum=0.99,
        norm_epsilon=1e-3,
        sync_batch_norm=False,
        kernel_initializer="VarianceScaling",
        kernel_regularizer=None,
        dtype=None,
        **kwargs,
    ):
        model_id = str(model_id)
        if model_id not in specs.MOBILE_SCALING:
            raise ModelError(
                f"Unknown SpineNetMobile model_id {model_id!r}; use one of {specs.MOBILE_MODEL_IDS}."
            )
        if activation not in ACTIVATIONS:
            raise ModelError(f"Unknown activation {activation!r}; use one of {ACTIVATIONS}.")
        if not 0.0 <= stochastic_depth_rate < 1.0:
            raise ModelError(f"stochastic_depth_rate must be in [0, 1), got {stochastic_depth_rate}.")
        if isinstance(expand_ratio, bool) or not isinstance(expand_ratio, int) or expand_ratio < 1:
            raise ModelError(f"expand_ratio must be an integer >= 1, got {expand_ratio!r}.")
        if not 0.0 <= se_ratio <= 1.0:
            raise ModelError(f"se_ratio must be in [0, 1], got {se_ratio!r}.")
        explicit = {
            "endpoints_num_filters": endpoints_num_filters,
            "filter_size_scale": filter_size_scale,
            "block_repeats": block_repeats,
        }
        for key, value in explicit.items():
            if value is not None and (isinstance(value, bool) or not value > 0):
                raise ModelError(f"{key} must be a positive number, got {value!r}.")
        scaling = dataclasses.replace(
            specs.MOBILE_SCALING[model_id], **{k: v for k, v in explicit.items() if v is not None}
        )
        endpoints_num_filters = int(scaling.endpoints_num_filters)
        filter_size_scale = float(scaling.filter_size_scale)
        block_repeats = int(scaling.block_repeats)
        graph = _graph(block_specs, min_level, max_level)
        image_shape = tuple(image_shape)
        size_multiple = spinenet_mobile_size_multiple(graph.block_specs, min_level, max_level)
        _check_image_shape(image_shape, size_multiple)

        settings = ConvNormSettings(
            activation=activation,
            norm_momentum=norm_momentum,
            norm_epsilon=norm_epsilon,
            sync_batch_norm=sync_batch_norm,
            kernel_initializer=kernel_initializer,
            kernel_regularizer=regularizer_from_config(kernel_regularizer),
            dtype=dtype,
        )

        # === Functional graph ===
        def block(x, node, strides=1, drop_rate=None):
            return mbconv_group(
                x,
                specs.mobile_block_filters(node.level, filter_size_scale),
                block_repeats,
                settings,
                node.name,
                strides,
                expand_ratio,
                se_ratio,
                drop_rate,
            )

        image = keras.Input(shape=image_shape, name="image")
        stem_filters = int(specs.MOBILE_STEM_CONV_FILTERS * filter_size_scale)
        x = conv_norm(image, settings, stem_filters, 3, "stem", strides=2)  # level 1
        built = {}
        level = 1
        for node in graph.nodes:  # every stem block: each one feeds the next
            if node.is_stem:
                built[node.index] = x = block(x, node, strides=2 ** (node.level - level))
                level = node.level

        def resample(x, parent, node):
            filters = specs.mobile_block_filters(node.level, filter_size_scale)
            name = f"{node.name}_from_{parent.name}"
            return resample_depthwise(x, parent.level, node.level, filters, settings, name)

        features = scale_permuted_pyramid(
            graph, built, resample, block, settings, stochastic_depth_rate, endpoints_num_filters
        )
        super().__init__(inputs=image, outputs=features, dtype=dtype, **kwargs)

        # === Config ===
        self.model_id = model_id
        self.image_shape = image_shape
        self.min_level = min_level
        self.max_level = max_level
        self.endpoints_num_filters = endpoints_num_filters
        self.filter_size_scale = filter_size_scale
        self.block_repeats = block_repeats
        self.block_specs = graph.block_specs
        self.expand_ratio = expand_ratio
        self.se_ratio = se_ratio
        self.activation = activation
        self.stochastic_depth_rate = stochastic_depth_rate
        self.norm_momentum = norm_momentum
        self.norm_epsilon = norm_epsilon
        self.sync_batch_norm = sync_batch_norm
        self.kernel_initializer = kernel_initializer
        self.kernel_regularizer = settings.kernel_regularizer
        self.size_multiple = size_multiple
        self.pyramid_channels = {name: endpoints_num_filters for name in features}
        self.pyramid_strides = {f"P{level}": 2**level for level in graph.outputs}

    def call(self, inputs, training=None, mask=None):
        _check_image_shape(tuple(inputs.shape[1:]), self.size_multiple)
        return super().call(inputs, training=training, mask=mask)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            "model_id": self.model_id,
            "image_shape": list(self.image_shape),
            "min_level": self.min_level,
            "max_level": self.max_level,
            "endpoints_num_filters": self.endpoints_num_filters,
            "filter_size_scale": self.filter_size_scale,
            "block_repeats": self.block_repeats,
            "block_specs": [spec.as_list() for spec in self.block_specs],
            "expand_ratio": self.expand_ratio,
            "se_ratio": self.se_ratio,
            "activation": self.activation,
            "stochastic_depth_rate": self.stochastic_depth_rate,
            "norm_momentum": self.norm_momentum,
            "norm_epsilon": self.norm_epsilon,
            "sync_batch_norm": self.sync_batch_norm,
            "kernel_initializer": keras.initializers.serialize(
                keras.initializers.get(self.kernel_initializer)
            ),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["dtype"] = keras.dtype_policies.deserialize(config["dtype"]) if config.get("dtype") else None
        return cls(**config)
