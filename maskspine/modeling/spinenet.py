"""SpineNet backbone (Du et al., "SpineNet: Learning Scale-Permuted Backbone for
Recognition and Localization", CVPR 2020, arXiv 1912.05027).

The block specs and the scaling map are the paper's and TF Model Garden's
(`official/vision/modeling/backbones/spinenet.py`); parameter counts match
Model Garden's for the same model id (see tests/modeling/test_spinenet.py).

    backbone = build_spinenet("49", input_shape=(640, 640, 3))
    features = backbone(images)  # {"P3": [B, 80, 80, 256], ..., "P7": [B, 5, 5, 256]}
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
from keras import layers

from maskspine.modeling.layers import (
    InputSizeCheck,
    batch_norm,
    bottleneck_block,
    conv_bn,
    residual_block,
)

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

_STEM_BLOCKS = 2
_STEM_BLOCK_FN = "bottleneck"

#: `downsample_pooling` values (see `build_spinenet`).
DOWNSAMPLE_POOLINGS = ("repeated", "single")


def build_spinenet(
    model_id: str = "49",
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
    min_level: int = 3,
    max_level: int = 7,
    activation: str = "relu",
    norm_momentum: float = 0.99,
    norm_epsilon: float = 1e-3,
    stochastic_depth_rate: float = 0.0,
    *,
    filter_size_scale: float | None = None,
    endpoints_num_filters: int | None = None,
    resample_alpha: float | None = None,
    block_repeats: int | None = None,
    conv_padding: str = "same",
    downsample_pooling: str = "repeated",
    kernel_regularizer=None,
    name: str | None = None,
) -> keras.Model:
    """Builds a SpineNet backbone as a Keras functional model.

    Args:
        model_id: one of `SCALING_MAP` ("49S", "49", "96", "143", "143L", "190").
        input_shape: (height, width, 3); height and width may be None, otherwise
            they must be multiples of 2**max_level.
        min_level, max_level: the output levels (stride 2**level).
        activation: "relu" or "swish".
        norm_momentum, norm_epsilon: Keras BatchNormalization settings.
        stochastic_depth_rate: drop rate of the last block; block i of 16 uses i/16 of it.
        filter_size_scale, endpoints_num_filters, resample_alpha, block_repeats:
            override the model id's scaling (small variants for tests and demos).
        conv_padding: "same" (Model Garden) or "symmetric" (tensorflow/tpu) padding of
            the stride-2 convolutions (see `layers.conv_bn`).
        downsample_pooling: "repeated": a resampling connection that goes down by 4x or
            more uses one 3x3 stride-2 max-pool per level after its stride-2 conv (Model
            Garden); "single": one max-pool of size 3 (4x) or 5 (8x and more) with
            stride ratio / 2 (tensorflow/tpu `resample_with_alpha`).

    Returns:
        A model mapping images [B, H, W, 3] to `{"P{l}": [B, H/2**l, W/2**l, C]}` for
        l in min_level..max_level, C = endpoints_num_filters.
    """
    if model_id not in SCALING_MAP:
        raise ValueError(
            f"unknown SpineNet model id {model_id!r}; use one of {', '.join(SCALING_MAP)}"
        )
    scaling = dict(SCALING_MAP[model_id])
    for key, value in (
        ("filter_size_scale", filter_size_scale),
        ("endpoints_num_filters", endpoints_num_filters),
        ("resample_alpha", resample_alpha),
        ("block_repeats", block_repeats),
    ):
        if value is not None:
            scaling[key] = value
    if activation not in ("relu", "swish"):
        raise ValueError(f"activation must be 'relu' or 'swish', got {activation!r}")
    if downsample_pooling not in DOWNSAMPLE_POOLINGS:
        raise ValueError(
            f"downsample_pooling must be one of {DOWNSAMPLE_POOLINGS}, got {downsample_pooling!r}"
        )
    spec_levels = {spec.level for spec in SPINENET_BLOCK_SPECS if spec.is_output}
    if not set(range(min_level, max_level + 1)) <= spec_levels:
        raise ValueError(
            f"levels {min_level}..{max_level} are not all SpineNet outputs {sorted(spec_levels)}"
        )
    divisor = 2 ** max(spec.level for spec in SPINENET_BLOCK_SPECS)
    for size in input_shape[:2]:
        if size is not None and size % divisor:
            raise ValueError(
                f"input size {input_shape[0]}x{input_shape[1]} is not divisible by {divisor} "
                f"(2**{int(math.log2(divisor))}); use a multiple of {divisor}"
            )

    builder = _SpineNetBuilder(
        activation=activation,
        momentum=norm_momentum,
        epsilon=norm_epsilon,
        kernel_regularizer=kernel_regularizer,
        stochastic_depth_rate=stochastic_depth_rate,
        conv_padding=conv_padding,
        downsample_pooling=downsample_pooling,
        **scaling,
    )
    images = keras.Input(shape=input_shape, name="images")
    x = InputSizeCheck(divisor, name="input_size_check")(images)
    blocks = builder.stem(x)
    outputs_by_level = builder.scale_permuted_network(blocks)
    outputs = builder.endpoints(outputs_by_level, min_level, max_level)
    return keras.Model(images, outputs, name=name or f"spinenet_{model_id}")


class _SpineNetBuilder:
    """Adds the layers of one SpineNet to a functional graph."""

    def __init__(
        self,
        *,
        endpoints_num_filters: int,
        filter_size_scale: float,
        resample_alpha: float,
        block_repeats: int,
        activation: str,
        momentum: float,
        epsilon: float,
        kernel_regularizer,
        stochastic_depth_rate: float,
        conv_padding: str,
        downsample_pooling: str,
    ):
        self.conv_padding = conv_padding
        self.downsample_pooling = downsample_pooling
        self.endpoints_num_filters = endpoints_num_filters
        self.filter_size_scale = filter_size_scale
        self.resample_alpha = resample_alpha
        self.block_repeats = block_repeats
        self.activation = activation
        self.stochastic_depth_rate = stochastic_depth_rate
        self.common = dict(
            momentum=momentum, epsilon=epsilon, kernel_regularizer=kernel_regularizer
        )

    def _filters(self, level: int) -> int:
        return int(FILTER_SIZE_MAP[level] * self.filter_size_scale)

    def _block_group(self, x, filters: int, block_fn: str, drop_rate: float, name: str):
        """`block_repeats` blocks; the first projects when the channels do not match."""
        block = bottleneck_block if block_fn == "bottleneck" else residual_block
        out_channels = 4 * filters if block_fn == "bottleneck" else filters
        use_projection = x.shape[-1] != out_channels
        for repeat in range(self.block_repeats):
            x = block(
                x,
                filters,
                use_projection=use_projection and repeat == 0,
                stochastic_depth_rate=drop_rate,
                activation=self.activation,
                name=f"{name}_{repeat + 1}" if self.block_repeats > 1 else name,
                **self.common,
            )
        return x

    def stem(self, images) -> list[_Block]:
        x = conv_bn(
            images,
            64,
            7,
            strides=2,
            activation=self.activation,
            padding=self.conv_padding,
            name="stem",
            **self.common,
        )
        x = layers.MaxPooling2D(pool_size=3, strides=2, padding="same", name="stem_pool")(x)
        blocks = []
        for i in range(_STEM_BLOCKS):
            x = self._block_group(
                x, self._filters(2), _STEM_BLOCK_FN, 0.0, name=f"stem_block{i + 1}"
            )
            blocks.append(_Block(x, level=2, block_fn=_STEM_BLOCK_FN))
        return blocks

    def scale_permuted_network(self, blocks: list[_Block]) -> dict[int, object]:
        outputs = {}
        num_specs = len(SPINENET_BLOCK_SPECS)
        for i, spec in enumerate(SPINENET_BLOCK_SPECS):
            filters = self._filters(spec.level)
            name = f"block{i + 1}"
            parents = []
            for k, offset in enumerate(spec.input_offsets):
                parent = blocks[offset]
                parents.append(self._resample(parent, spec, filters, name=f"{name}_in{k}"))
                parent.outgoing += 1
            if spec.is_output:
                # Blocks nothing has read yet join the output block of their level and width.
                for block in blocks:
                    if (
                        block.outgoing == 0
                        and block.level == spec.level
                        and block.tensor.shape[-1] == parents[0].shape[-1]
                    ):
                        parents.append(block.tensor)
                        block.outgoing += 1
            x = layers.Add(name=f"{name}_merge")(parents)
            x = layers.Activation(self.activation, name=f"{name}_merge_{self.activation}")(x)
            drop = self.stochastic_depth_rate * (i + 1) / num_specs
            x = self._block_group(x, filters, spec.block_fn, drop, name=name)
            blocks.append(_Block(x, level=spec.level, block_fn=spec.block_fn))
            if spec.is_output:
                if spec.level in outputs:
                    raise ValueError(f"duplicate SpineNet output at level {spec.level}")
                outputs[spec.level] = x
        return outputs

    def _resample(self, parent: _Block, target: BlockSpec, target_filters: int, name: str):
        """1x1 reduce by alpha, resample to the target level, 1x1 expand to its width."""
        in_filters = parent.tensor.shape[-1]
        if parent.block_fn == "bottleneck":
            in_filters //= 4
        reduced = int(in_filters * self.resample_alpha)
        x = conv_bn(
            parent.tensor,
            reduced,
            1,
            activation=self.activation,
            name=f"{name}_reduce",
            **self.common,
        )
        if parent.level < target.level:
            x = conv_bn(
                x,
                reduced,
                3,
                strides=2,
                activation=self.activation,
                padding=self.conv_padding,
                name=f"{name}_down",
                **self.common,
            )
            ratio = 2 ** (target.level - parent.level)
            if self.downsample_pooling == "single" and ratio > 2:
                x = layers.MaxPooling2D(
                    3 if ratio <= 4 else 5, strides=ratio // 2, padding="same", name=f"{name}_pool"
                )(x)
            elif self.downsample_pooling == "repeated":
                for step in range(target.level - parent.level - 1):
                    x = layers.MaxPooling2D(
                        3, strides=2, padding="same", name=f"{name}_pool{step + 1}"
                    )(x)
        elif parent.level > target.level:
            scale = 2 ** (parent.level - target.level)
            x = layers.UpSampling2D(scale, interpolation="nearest", name=f"{name}_up")(x)
        out_filters = 4 * target_filters if target.block_fn == "bottleneck" else target_filters
        x = layers.Conv2D(
            out_filters,
            1,
            use_bias=False,
            kernel_initializer="VarianceScaling",
            kernel_regularizer=self.common["kernel_regularizer"],
            name=f"{name}_expand_conv",
        )(x)
        return batch_norm(
            x,
            momentum=self.common["momentum"],
            epsilon=self.common["epsilon"],
            name=f"{name}_expand_bn",
        )

    def endpoints(
        self, outputs_by_level: dict[int, object], min_level: int, max_level: int
    ) -> dict:
        return {
            f"P{level}": conv_bn(
                outputs_by_level[level],
                self.endpoints_num_filters,
                1,
                activation=self.activation,
                name=f"endpoint_P{level}",
                **self.common,
            )
            for level in range(min_level, max_level + 1)
        }


class _Block:
    """A block's output tensor with what the resampling and merging need to know."""

    def __init__(self, tensor, *, level: int, block_fn: str):
        self.tensor = tensor
        self.level = level
        self.block_fn = block_fn
        self.outgoing = 0
