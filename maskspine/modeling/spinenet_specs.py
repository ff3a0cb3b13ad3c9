"""SpineNet's architecture as data, without TensorFlow: the scale-permuted blocks the paper's
search found (arXiv 1912.05027, Model Garden's `official/vision/modeling/backbones/
spinenet.py`), the scaling of each model id, and the input-size rule. `maskspine.config`
checks a config against these when it loads; `maskspine.modeling.spinenet` builds from them.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Channels of a block at each level before `filter_size_scale` (bottlenecks output 4x).
FILTER_SIZE_MAP = {1: 32, 2: 64, 3: 128, 4: 256, 5: 256, 6: 256, 7: 256}


@dataclass(frozen=True)
class BlockSpec:
    """One block of the scale-permuted network: its level, type, the two earlier
    blocks it reads (indices into the list of all blocks, stem blocks first) and
    whether it is an output."""

    level: int
    block_fn: str
    input_offsets: tuple[int, int]
    is_output: bool


#: The 16 blocks of the scale-permuted network found by the paper's architecture search.
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

#: Per model id: endpoints_num_filters, filter_size_scale, resample_alpha, block_repeats.
SCALING_MAP = {
    "49S": dict(
        endpoints_num_filters=128, filter_size_scale=0.65, resample_alpha=0.5, block_repeats=1
    ),
    "49": dict(
        endpoints_num_filters=256, filter_size_scale=1.0, resample_alpha=0.5, block_repeats=1
    ),
    "96": dict(
        endpoints_num_filters=256, filter_size_scale=1.0, resample_alpha=0.5, block_repeats=2
    ),
    "143": dict(
        endpoints_num_filters=256, filter_size_scale=1.0, resample_alpha=1.0, block_repeats=3
    ),
    "143L": dict(
        endpoints_num_filters=256, filter_size_scale=1.3, resample_alpha=1.0, block_repeats=3
    ),
    "190": dict(
        endpoints_num_filters=512, filter_size_scale=1.3, resample_alpha=1.0, block_repeats=4
    ),
}

#: Height and width of the input must be multiples of this: 2**7, the stride of
#: SpineNet's coarsest blocks, whatever `max_level` is. Block specs 7 and 13 are at level
#: 7 and block spec 7 feeds every output through block spec 8 (level 5), so level-7 maps
#: are always built. Stride-2 convs and pools ('same' or symmetric padding) round up,
#: giving ceil(H / 2**l) at level l, and merging a level-7 map into level 5 upsamples it
#: 4x: 4 * ceil(H / 128) equals ceil(H / 32) only when H mod 128 is 0 or above 96, and
#: every feature map is exactly H / 2**l (as the anchors assume) only for multiples of 128.
INPUT_SIZE_DIVISOR = 2 ** max(spec.level for spec in SPINENET_BLOCK_SPECS)
