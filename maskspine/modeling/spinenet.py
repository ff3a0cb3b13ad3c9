"""SpineNet backbone (Du et al., "SpineNet: Learning Scale-Permuted Backbone for
Recognition and Localization", CVPR 2020, arXiv 1912.05027).

The block specs and the scaling map are the paper's and TF Model Garden's
(`official/vision/modeling/backbones/spinenet.py`); parameter counts match
Model Garden's for the same model id (see tests/modeling/test_spinenet.py).

    backbone = build_spinenet("49", input_shape=(640, 640, 3))
    features = backbone(images)  # {"P3": [B, 80, 80, 256], ..., "P7": [B, 5, 5, 256]}

`spinenet_plan` computes what the builder creates before any layer exists: the scaling
after overrides, the blocks, and the layers with weights in creation order. The builder
follows it (and fails if it strays); `maskspine.pretrained.names` reads the originals'
checkpoint names off the same plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
from keras import layers

from maskspine.choices import DOWNSAMPLE_POOLINGS
from maskspine.modeling.layers import (
    Conv2D,
    InputSizeCheck,
    batch_norm,
    bottleneck_block,
    conv_bn,
    residual_block,
)
from maskspine.modeling.spinenet_specs import (  # noqa: F401 (re-exported)
    FILTER_SIZE_MAP,
    INPUT_SIZE_DIVISOR,
    SCALING_MAP,
    SPINENET_BLOCK_SPECS,
    BlockSpec,
)

_STEM_BLOCKS = 2
_STEM_BLOCK_FN = "bottleneck"
_STEM_FILTERS = 64
#: The stem conv's weight gradient in two halves of the batch (`Conv2D.weight_gradient_parts`):
#: it is the backward pass's last convolution, with nothing else to run beside it, so with one
#: thread per op one core would idle through it. `fit`'s step on the shapes demo's stream,
#: in-process A/B on a 2-core AMD EPYC Zen 4: 0.955x in bfloat16, 0.974x in float32 held to
#: AVX2; SpineNet-49 at 640, batch 2, TensorFlow's default pools: 0.99x (benchmarks/README.md,
#: "The step's two cores, the stem's weight gradient in halves").
_STEM_WEIGHT_GRADIENT_PARTS = 2


@dataclass(frozen=True)
class PlannedBlock:
    """One block of a SpineNet build: the two stem blocks, then one per block spec.

    `inputs`: the blocks resampled into it (indices into `SpineNetPlan.blocks`; none for
    the stem blocks). `merged`: blocks nothing else reads, of its level and width, added
    to an output block's input. `used`: whether an endpoint depends on it (blocks no
    endpoint reads, such as the level-2 output block with min_level 3, are pruned from the
    Keras model and absent from checkpoints).
    """

    index: int
    level: int
    block_fn: str
    filters: int
    inputs: tuple[int, ...]
    merged: tuple[int, ...]
    is_output: bool
    used: bool

    @property
    def channels(self) -> int:
        """Output channels: bottlenecks give 4 * filters."""
        return 4 * self.filters if self.block_fn == "bottleneck" else self.filters


@dataclass(frozen=True)
class PlannedLayer:
    """One layer with weights of a SpineNet build, in the order the builder creates it.

    `role`: "stem" (the 7x7 conv), "stem_block", "resample_reduce", "resample_down" (the
    stride-2 conv of a connection to a coarser level), "resample_expand", "block" or
    "endpoint". `block`: the index in `SpineNetPlan.blocks` it belongs to (stem blocks 0
    and 1, block spec i is 2 + i); None for the stem conv and the endpoints.
    `connection`: k of a resampling layer's block{b}_in{k}. `name`: the layer's name
    prefix (see `weight_layer_names`). `kind`: "conv" (a conv with its BatchNorm),
    "bottleneck" or "residual" (a whole block of `layers.py`). `projection`: a block
    with a 1x1 projection shortcut. `used`: False for layers of unused blocks.
    """

    role: str
    name: str
    kind: str
    block: int | None = None
    connection: int | None = None
    projection: bool = False
    used: bool = True

    def weight_layer_names(self) -> list[tuple[str, str]]:
        """(conv, BatchNorm) Keras layer names in creation order (projection first)."""
        if self.kind == "conv":
            return [(f"{self.name}_conv", f"{self.name}_bn")]
        parts = ["proj"] if self.projection else []
        parts += ["1", "2", "3"] if self.kind == "bottleneck" else ["1", "2"]
        return [(f"{self.name}_{p}_conv", f"{self.name}_{p}_bn") for p in parts]


@dataclass(frozen=True)
class SpineNetPlan:
    """What `build_spinenet` builds, computed before any layer exists: the scaling after
    overrides, the blocks, and the layers with weights in creation order (the order the
    originals' checkpoint names count, see `maskspine.pretrained.names`)."""

    model_id: str
    min_level: int
    max_level: int
    endpoints_num_filters: int
    filter_size_scale: float
    resample_alpha: float
    block_repeats: int
    blocks: tuple[PlannedBlock, ...]
    layers: tuple[PlannedLayer, ...]


def spinenet_plan(
    model_id: str = "49",
    min_level: int = 3,
    max_level: int = 7,
    *,
    filter_size_scale: float | None = None,
    endpoints_num_filters: int | None = None,
    resample_alpha: float | None = None,
    block_repeats: int | None = None,
) -> SpineNetPlan:
    """The build plan of a SpineNet (arguments as `build_spinenet`'s).

    Raises:
        ValueError: unknown model id, or levels that are not all SpineNet outputs.
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
    spec_levels = {spec.level for spec in SPINENET_BLOCK_SPECS if spec.is_output}
    if not set(range(min_level, max_level + 1)) <= spec_levels:
        raise ValueError(
            f"levels {min_level}..{max_level} are not all SpineNet outputs {sorted(spec_levels)}"
        )
    blocks = _plan_blocks(scaling["filter_size_scale"], min_level, max_level)
    layers_ = _plan_layers(blocks, int(scaling["block_repeats"]), min_level, max_level)
    return SpineNetPlan(
        model_id=model_id,
        min_level=min_level,
        max_level=max_level,
        endpoints_num_filters=int(scaling["endpoints_num_filters"]),
        filter_size_scale=float(scaling["filter_size_scale"]),
        resample_alpha=float(scaling["resample_alpha"]),
        block_repeats=int(scaling["block_repeats"]),
        blocks=blocks,
        layers=layers_,
    )


def _plan_blocks(
    filter_size_scale: float, min_level: int, max_level: int
) -> tuple[PlannedBlock, ...]:
    """The stem blocks and the block specs, with their merges and whether they are used."""

    def filters(level: int) -> int:
        return int(FILTER_SIZE_MAP[level] * filter_size_scale)

    blocks = [
        dict(level=2, block_fn=_STEM_BLOCK_FN, filters=filters(2), inputs=(), merged=(),
             is_output=False)
        for _ in range(_STEM_BLOCKS)
    ]  # fmt: skip
    outgoing = [0] * _STEM_BLOCKS
    for spec in SPINENET_BLOCK_SPECS:
        block = dict(level=spec.level, block_fn=spec.block_fn, filters=filters(spec.level),
                     inputs=spec.input_offsets, merged=(), is_output=spec.is_output)  # fmt: skip
        for offset in spec.input_offsets:
            outgoing[offset] += 1
        if spec.is_output:
            # Blocks nothing has read yet join the output block of their level and width.
            width = _channels(spec.block_fn, block["filters"])
            merged = tuple(
                j
                for j, other in enumerate(blocks)
                if outgoing[j] == 0
                and other["level"] == spec.level
                and _channels(other["block_fn"], other["filters"]) == width
            )
            for j in merged:
                outgoing[j] += 1
            block["merged"] = merged
        blocks.append(block)
        outgoing.append(0)
    # Used: the endpoint blocks and, backwards, every block they read.
    endpoints = {
        i
        for i, block in enumerate(blocks)
        if block["is_output"] and min_level <= block["level"] <= max_level
    }
    used = set()
    pending = sorted(endpoints)
    while pending:
        i = pending.pop()
        if i not in used:
            used.add(i)
            pending += [*blocks[i]["inputs"], *blocks[i]["merged"]]
            if i < _STEM_BLOCKS:
                pending += range(i)  # a stem block reads the one before it
    return tuple(PlannedBlock(index=i, used=i in used, **block) for i, block in enumerate(blocks))


def _channels(block_fn: str, filters: int) -> int:
    return 4 * filters if block_fn == "bottleneck" else filters


def _plan_layers(
    blocks: tuple[PlannedBlock, ...], repeats: int, min_level: int, max_level: int
) -> tuple[PlannedLayer, ...]:
    """The layers with weights in creation order: the stem conv, the stem blocks, per
    block spec its two resampling connections (reduce, down when going coarser, expand)
    then its block group, and the endpoints."""

    def group(role: str, block: PlannedBlock, name: str, in_channels: int):
        for repeat in range(repeats):
            yield PlannedLayer(
                role,
                f"{name}_{repeat + 1}" if repeats > 1 else name,
                block.block_fn,
                block=block.index,
                projection=repeat == 0 and in_channels != block.channels,
                used=block.used,
            )

    planned = [PlannedLayer("stem", "stem", "conv")]
    channels = _STEM_FILTERS
    for block in blocks[:_STEM_BLOCKS]:
        planned += group("stem_block", block, f"stem_block{block.index + 1}", channels)
        channels = block.channels
    for block in blocks[_STEM_BLOCKS:]:
        name = f"block{block.index - _STEM_BLOCKS + 1}"
        for k, parent in enumerate(block.inputs):
            steps = ["reduce", "down", "expand"]
            if blocks[parent].level >= block.level:
                steps.remove("down")
            planned += [
                PlannedLayer(f"resample_{step}", f"{name}_in{k}_{step}", "conv",
                             block=block.index, connection=k, used=block.used)
                for step in steps
            ]  # fmt: skip
        # The resampled inputs arrive at the block's own width: no projection.
        planned += group("block", block, name, block.channels)
    planned += [
        PlannedLayer("endpoint", f"endpoint_P{level}", "conv")
        for level in range(min_level, max_level + 1)
    ]
    return tuple(planned)


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
    """Builds a SpineNet backbone as a Keras functional model, following `spinenet_plan`.

    Args:
        model_id: one of `SCALING_MAP` ("49S", "49", "96", "143", "143L", "190").
        input_shape: (height, width, 3); height and width may be None, otherwise
            they must be multiples of `INPUT_SIZE_DIVISOR` (128, whatever max_level).
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
    plan = spinenet_plan(
        model_id,
        min_level,
        max_level,
        filter_size_scale=filter_size_scale,
        endpoints_num_filters=endpoints_num_filters,
        resample_alpha=resample_alpha,
        block_repeats=block_repeats,
    )
    if activation not in ("relu", "swish"):
        raise ValueError(f"activation must be 'relu' or 'swish', got {activation!r}")
    if downsample_pooling not in DOWNSAMPLE_POOLINGS:
        raise ValueError(
            f"downsample_pooling must be one of {DOWNSAMPLE_POOLINGS}, got {downsample_pooling!r}"
        )
    divisor = INPUT_SIZE_DIVISOR
    for size in input_shape[:2]:
        if size is not None and size % divisor:
            raise ValueError(
                f"input size {input_shape[0]}x{input_shape[1]} is not divisible by {divisor} "
                f"(2**{int(math.log2(divisor))}, the stride of SpineNet's coarsest blocks); "
                f"use a multiple of {divisor}"
            )

    builder = _SpineNetBuilder(
        plan,
        activation=activation,
        momentum=norm_momentum,
        epsilon=norm_epsilon,
        kernel_regularizer=kernel_regularizer,
        stochastic_depth_rate=stochastic_depth_rate,
        conv_padding=conv_padding,
        downsample_pooling=downsample_pooling,
    )
    images = keras.Input(shape=input_shape, name="images")
    x = InputSizeCheck(divisor, name="input_size_check")(images)
    outputs = builder.build(x)
    return keras.Model(images, outputs, name=name or f"spinenet_{model_id}")


class _SpineNetBuilder:
    """Adds the layers of one SpineNet plan to a functional graph, taking each layer with
    weights from the plan in order (`_next`), so the plan is the creation order."""

    def __init__(
        self,
        plan: SpineNetPlan,
        *,
        activation: str,
        momentum: float,
        epsilon: float,
        kernel_regularizer,
        stochastic_depth_rate: float,
        conv_padding: str,
        downsample_pooling: str,
    ):
        self.plan = plan
        self.conv_padding = conv_padding
        self.downsample_pooling = downsample_pooling
        self.activation = activation
        self.stochastic_depth_rate = stochastic_depth_rate
        self.common = dict(
            momentum=momentum, epsilon=epsilon, kernel_regularizer=kernel_regularizer
        )
        self._position = 0

    def _next(self, role: str, block: int | None = None, connection: int | None = None):
        """The plan's next layer, which must be the one the builder is about to create."""
        layer = self.plan.layers[self._position]
        if (layer.role, layer.block, layer.connection) != (role, block, connection):
            raise AssertionError(
                f"SpineNet builder out of its plan: creating {(role, block, connection)}, "
                f"planned {layer}"
            )
        self._position += 1
        return layer

    def build(self, images) -> dict:
        """images -> {"P{l}": features}."""
        x = conv_bn(
            images,
            _STEM_FILTERS,
            7,
            strides=2,
            activation=self.activation,
            padding=self.conv_padding,
            weight_gradient_parts=_STEM_WEIGHT_GRADIENT_PARTS,
            name=self._next("stem").name,
            **self.common,
        )
        x = layers.MaxPooling2D(pool_size=3, strides=2, padding="same", name="stem_pool")(x)
        tensors = []
        for block in self.plan.blocks[:_STEM_BLOCKS]:
            x = self._block_group(x, block, "stem_block", 0.0)
            tensors.append(x)
        num_specs = len(self.plan.blocks) - _STEM_BLOCKS
        outputs = {}
        for block in self.plan.blocks[_STEM_BLOCKS:]:
            parents = [
                self._resample(tensors[parent], self.plan.blocks[parent], block, k)
                for k, parent in enumerate(block.inputs)
            ]
            parents += [tensors[j] for j in block.merged]
            name = f"block{block.index - _STEM_BLOCKS + 1}"
            x = layers.Add(name=f"{name}_merge")(parents)
            x = layers.Activation(self.activation, name=f"{name}_merge_{self.activation}")(x)
            drop = self.stochastic_depth_rate * (block.index - _STEM_BLOCKS + 1) / num_specs
            x = self._block_group(x, block, "block", drop)
            tensors.append(x)
            if block.is_output:
                outputs[block.level] = x
        features = {
            f"P{level}": conv_bn(
                outputs[level],
                self.plan.endpoints_num_filters,
                1,
                activation=self.activation,
                name=self._next("endpoint").name,
                **self.common,
            )
            for level in range(self.plan.min_level, self.plan.max_level + 1)
        }
        if self._position != len(self.plan.layers):
            raise AssertionError("SpineNet builder did not create every planned layer")
        return features

    def _block_group(self, x, block: PlannedBlock, role: str, drop_rate: float):
        """`block_repeats` blocks of `block`'s type."""
        block_fn = bottleneck_block if block.block_fn == "bottleneck" else residual_block
        for _ in range(self.plan.block_repeats):
            planned = self._next(role, block.index)
            x = block_fn(
                x,
                block.filters,
                use_projection=planned.projection,
                stochastic_depth_rate=drop_rate,
                activation=self.activation,
                name=planned.name,
                **self.common,
            )
        return x

    def _resample(self, tensor, parent: PlannedBlock, target: PlannedBlock, connection: int):
        """Connection `connection` of `target`: 1x1 reduce of the parent's filters by alpha,
        resample to the target level, 1x1 expand to the target's width."""
        reduce = self._next("resample_reduce", target.index, connection)
        prefix = reduce.name.removesuffix("_reduce")
        reduced = int(parent.filters * self.plan.resample_alpha)
        x = conv_bn(tensor, reduced, 1, activation=self.activation, name=reduce.name, **self.common)
        if parent.level < target.level:
            x = conv_bn(
                x,
                reduced,
                3,
                strides=2,
                activation=self.activation,
                padding=self.conv_padding,
                name=self._next("resample_down", target.index, connection).name,
                **self.common,
            )
            ratio = 2 ** (target.level - parent.level)
            if self.downsample_pooling == "single" and ratio > 2:
                x = layers.MaxPooling2D(
                    3 if ratio <= 4 else 5,
                    strides=ratio // 2,
                    padding="same",
                    name=f"{prefix}_pool",
                )(x)
            elif self.downsample_pooling == "repeated":
                for step in range(target.level - parent.level - 1):
                    x = layers.MaxPooling2D(
                        3, strides=2, padding="same", name=f"{prefix}_pool{step + 1}"
                    )(x)
        elif parent.level > target.level:
            scale = 2 ** (parent.level - target.level)
            x = layers.UpSampling2D(scale, interpolation="nearest", name=f"{prefix}_up")(x)
        expand = self._next("resample_expand", target.index, connection)
        conv = Conv2D(
            target.channels,
            1,
            use_bias=False,
            kernel_initializer="VarianceScaling",
            kernel_regularizer=self.common["kernel_regularizer"],
            name=f"{expand.name}_conv",
        )
        return batch_norm(
            conv(x),
            momentum=self.common["momentum"],
            epsilon=self.common["epsilon"],
            name=f"{expand.name}_bn",
        )
