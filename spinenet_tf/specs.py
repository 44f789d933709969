"""SpineNet architecture as data: the NAS-found block table and the scaling table.

Numbers are those of Du et al., "SpineNet: Learning Scale-Permuted Backbone for
Recognition and Localization" (CVPR 2020), as released in TF Model Garden.
"""

import dataclasses

BLOCK_TYPES = ("bottleneck", "residual")
MIN_BLOCK_LEVEL = 1
MAX_BLOCK_LEVEL = 7

# Base width of a block at each level, before `filter_size_scale`; a bottleneck
# block outputs 4x this width, a residual block 1x.
LEVEL_FILTERS = {1: 32, 2: 64, 3: 128, 4: 256, 5: 256, 6: 256, 7: 256}

# The fixed stem: a 7x7/2 conv of this width (never scaled), a 3x3/2 max-pool, then
# NUM_STEM_BLOCKS bottleneck block groups at level 2.
STEM_CONV_FILTERS = 64
STEM_LEVEL = 2
STEM_BLOCK_TYPE = "bottleneck"
NUM_STEM_BLOCKS = 2


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One block of the scale-permuted network.

    `input_offsets` index the list of blocks built so far, stem blocks first: 0 and 1
    are the two stem blocks, 2 is the first scale-permuted block, and so on.
    """

    level: int
    block_type: str
    input_offsets: tuple[int, int]
    is_output: bool

    def as_list(self):
        return [self.level, self.block_type, list(self.input_offsets), self.is_output]


# SpineNet-49's 16 blocks. The 16th (level 2, output) is only used when min_level=2.
SPINENET_BLOCK_SPECS = (
    BlockSpec(2, "bottleneck", (0, 1), False),
    BlockSpec(4, "residual", (0, 1), False),
    BlockSpec(3, "bottleneck", (2, 3), False),
    BlockSpec(4, "bottleneck", (2, 4), False),
    BlockSpec(6, "residual", (3, 5), False),
    BlockSpec(4, "bottleneck", (3, 5), False),
    BlockSpec(5, "residual", (6, 7), False),
    BlockSpec(7, "residual", (6, 8), False),
    BlockSpec(5, "bottleneck", (8, 9), False),
    BlockSpec(5, "bottleneck", (8, 10), False),
    BlockSpec(4, "bottleneck", (5, 10), True),
    BlockSpec(3, "bottleneck", (4, 10), True),
    BlockSpec(5, "bottleneck", (7, 12), True),
    BlockSpec(7, "bottleneck", (5, 14), True),
    BlockSpec(6, "bottleneck", (12, 14), True),
    BlockSpec(2, "bottleneck", (2, 13), True),
)


@dataclasses.dataclass(frozen=True)
class Scaling:
    """How a SpineNet variant scales the SpineNet-49 block table."""

    filter_size_scale: float
    endpoints_num_filters: int
    resample_alpha: float
    block_repeats: int


# Table of the paper. Note: Model Garden's model zoo numbers for 49S (11.9M params,
# 33.8 GMACs for RetinaNet) were measured with endpoints_num_filters=256, not 128.
SCALING = {
    "49S": Scaling(filter_size_scale=0.65, endpoints_num_filters=128, resample_alpha=0.5, block_repeats=1),
    "49": Scaling(filter_size_scale=1.0, endpoints_num_filters=256, resample_alpha=0.5, block_repeats=1),
    "96": Scaling(filter_size_scale=1.0, endpoints_num_filters=256, resample_alpha=0.5, block_repeats=2),
    "143": Scaling(filter_size_scale=1.0, endpoints_num_filters=256, resample_alpha=1.0, block_repeats=3),
    "143L": Scaling(filter_size_scale=1.3, endpoints_num_filters=256, resample_alpha=1.0, block_repeats=3),
    "190": Scaling(filter_size_scale=1.3, endpoints_num_filters=512, resample_alpha=1.0, block_repeats=4),
}
MODEL_IDS = tuple(SCALING)


def block_filters(level, filter_size_scale):
    """Base width of a block at `level` (bottleneck blocks output 4x this)."""
    return int(LEVEL_FILTERS[level] * filter_size_scale)


def block_output_channels(block_type, filters):
    return 4 * filters if block_type == "bottleneck" else filters


# === Mobile SpineNet ===
# Du et al., "Efficient Scale-Permuted Backbone with Learned Resource Distribution"
# (ECCV 2020), as released in TF Model Garden (`spinenet_mobile`): every block is an
# MBConv (inverted bottleneck with squeeze-excitation), and widths are set per level.

MOBILE_BLOCK_TYPES = ("mbconv",)

# Width of the stem's 3x3/2 conv, and the output width of a block at each level; all
# scaled by `filter_size_scale` (rounded down).
MOBILE_STEM_CONV_FILTERS = 8
MOBILE_LEVEL_FILTERS = {1: 16, 2: 24, 3: 40, 4: 80, 5: 112, 6: 112, 7: 112}

# The stem blocks as (level, block type): after the stem conv (stride 2), a stride-1
# MBConv at level 1, then a stride-2 one at level 2. Input offsets 0 and 1 are these.
MOBILE_STEM_BLOCKS = ((1, "mbconv"), (2, "mbconv"))

# The NAS-found scale permutation: SpineNet-49's block order and connections, MBConv blocks.
MOBILE_BLOCK_SPECS = (
    BlockSpec(2, "mbconv", (0, 1), False),
    BlockSpec(2, "mbconv", (1, 2), False),
    BlockSpec(4, "mbconv", (1, 2), False),
    BlockSpec(3, "mbconv", (3, 4), False),
    BlockSpec(4, "mbconv", (3, 5), False),
    BlockSpec(6, "mbconv", (4, 6), False),
    BlockSpec(4, "mbconv", (4, 6), False),
    BlockSpec(5, "mbconv", (7, 8), False),
    BlockSpec(7, "mbconv", (7, 9), False),
    BlockSpec(5, "mbconv", (9, 10), False),
    BlockSpec(5, "mbconv", (9, 11), False),
    BlockSpec(4, "mbconv", (6, 11), True),
    BlockSpec(3, "mbconv", (5, 11), True),
    BlockSpec(5, "mbconv", (8, 13), True),
    BlockSpec(7, "mbconv", (6, 15), True),
    BlockSpec(6, "mbconv", (13, 15), True),
)


@dataclasses.dataclass(frozen=True)
class MobileScaling:
    """How a Mobile SpineNet variant scales the block table."""

    filter_size_scale: float
    endpoints_num_filters: int
    block_repeats: int


MOBILE_SCALING = {
    "49": MobileScaling(filter_size_scale=1.0, endpoints_num_filters=48, block_repeats=1),
    "49S": MobileScaling(filter_size_scale=0.65, endpoints_num_filters=40, block_repeats=1),
    "49XS": MobileScaling(filter_size_scale=0.6, endpoints_num_filters=24, block_repeats=1),
}
MOBILE_MODEL_IDS = tuple(MOBILE_SCALING)

# Every Mobile SpineNet's MBConvs: expansion of the inverted bottleneck, and the
# squeeze-excitation width as a fraction of the block's input width.
MOBILE_EXPAND_RATIO = 6
MOBILE_SE_RATIO = 0.2


def mobile_block_filters(level, filter_size_scale):
    """Output width of a Mobile SpineNet block at `level`."""
    return int(MOBILE_LEVEL_FILTERS[level] * filter_size_scale)
