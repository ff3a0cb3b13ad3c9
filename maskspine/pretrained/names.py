"""Which checkpoint variable of the originals goes into which maskspine weight.

Both originals build SpineNet in the same order (stem, then per block spec two resampling
connections and the block group, then the endpoints), and both name its layers by that
order: tensorflow/tpu through TF1 `tf.layers` counters per variable scope
(`spinenet/sub_policy3/resample_with_alpha_resample_3_0/conv2d_1/kernel`), Model Garden
through Keras' per-class name counters (`conv2d_17`, `bottleneck_block_4`), which its
checkpoint then lists in the functional model's layer order (`layer_with_weights-N`,
see `modelgarden_backbone_order.json`). `spinenet_units` walks maskspine's SpineNet in
that build order; the two `*_variable_map` functions turn the walk and the heads into
{checkpoint key: maskspine weight path} (facts about the originals' names are documented
in tools/README.md; no code of theirs is used).

maskspine layer names (see `modeling/spinenet.py`, `heads.py`, `rpn.py`): `stem_conv`,
`stem_block1_{proj,1,2,3}_{conv,bn}`, `block{i}_in{k}_{reduce,down,expand}_{conv,bn}`,
`block{i}[_{repeat}]_{proj,1,2,3}_{conv,bn}`, `endpoint_P{l}_{conv,bn}`, `rpn_head/...`,
`box_head/...`, `mask_head/...`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from maskspine.config import Config
from maskspine.modeling.spinenet import FILTER_SIZE_MAP, SCALING_MAP, SPINENET_BLOCK_SPECS

BN_WEIGHTS = ("gamma", "beta", "moving_mean", "moving_variance")
_MG_VALUE = "/.ATTRIBUTES/VARIABLE_VALUE"
_MG_ORDER_FILE = Path(__file__).with_name("modelgarden_backbone_order.json")


@dataclass(frozen=True)
class Unit:
    """One layer of the originals' SpineNet build: a conv with its BatchNorm
    (`kind` "conv", maskspine layers `{name}_conv` / `{name}_bn`), or a residual /
    bottleneck block (`kind` "residual" / "bottleneck", maskspine layers `{name}_*`).

    `scope`: the tensorflow/tpu variable scope it is created in (below `spinenet/`).
    `used`: False for layers the originals create but no output reads (Model Garden's
    level-2 output block with min_level 3); they are in neither checkpoint nor model.
    """

    kind: str
    name: str
    scope: str
    projection: bool = False
    used: bool = True

    def conv_bn_pairs(self) -> list[tuple[str, str]]:
        """(conv, bn) maskspine layer names in creation order (projection first)."""
        if self.kind == "conv":
            return [(f"{self.name}_conv", f"{self.name}_bn")]
        parts = ["proj"] if self.projection else []
        parts += ["1", "2", "3"] if self.kind == "bottleneck" else ["1", "2"]
        return [(f"{self.name}_{p}_conv", f"{self.name}_{p}_bn") for p in parts]


def spinenet_units(config: Config) -> list[Unit]:
    """maskspine's SpineNet layers in the originals' creation order (all 16 block specs)."""
    backbone = config.backbone
    scaling = dict(SCALING_MAP[backbone.arch])
    for key in ("filter_size_scale", "block_repeats"):
        if getattr(backbone, key) is not None:
            scaling[key] = getattr(backbone, key)
    repeats = int(scaling["block_repeats"])

    def filters(level: int) -> int:
        return int(FILTER_SIZE_MAP[level] * scaling["filter_size_scale"])

    def group(name: str, block_fn: str, in_channels: int, out_filters: int, scope: str, used):
        out_channels = 4 * out_filters if block_fn == "bottleneck" else out_filters
        for repeat in range(repeats):
            yield Unit(
                block_fn,
                f"{name}_{repeat + 1}" if repeats > 1 else name,
                scope,
                projection=repeat == 0 and in_channels != out_channels,
                used=used,
            )

    units = [Unit("conv", "stem", "")]
    levels = [2, 2]  # of every block so far, stem blocks first
    block_fns = ["bottleneck", "bottleneck"]
    channels = 64
    for g in range(2):
        units += group(f"stem_block{g + 1}", "bottleneck", channels, filters(2), "", True)
        channels = 4 * filters(2)
    outputs = set(range(backbone.min_level, backbone.max_level + 1))
    for i, spec in enumerate(SPINENET_BLOCK_SPECS):
        used = not spec.is_output or spec.level in outputs or _read_later(i)
        for k, offset in enumerate(spec.input_offsets):
            scope = f"sub_policy{i}/resample_with_alpha_resample_{i}_{k}"
            prefix = f"block{i + 1}_in{k}"
            units.append(Unit("conv", f"{prefix}_reduce", scope, used=used))
            if levels[offset] < spec.level:
                units.append(Unit("conv", f"{prefix}_down", scope, used=used))
            units.append(Unit("conv", f"{prefix}_expand", scope, used=used))
        out = filters(spec.level)
        in_channels = 4 * out if spec.block_fn == "bottleneck" else out
        scope = f"sub_policy{i}/scale_permuted_block_{i + 2}"
        units += group(f"block{i + 1}", spec.block_fn, in_channels, out, scope, used)
        levels.append(spec.level)
        block_fns.append(spec.block_fn)
    for level in range(backbone.min_level, backbone.max_level + 1):
        units.append(Unit("conv", f"endpoint_P{level}", ""))
    return units


def _read_later(index: int) -> bool:
    """Whether a later block spec reads block spec `index` (offsets count 2 stem blocks)."""
    return any(index + 2 in spec.input_offsets for spec in SPINENET_BLOCK_SPECS[index + 1 :])


# --------------------------------------------------------------------------- tensorflow/tpu


def tpu_variable_map(config: Config) -> dict[str, str]:
    """{TF1 variable name: maskspine weight path} of a tensorflow/tpu Mask R-CNN checkpoint
    (`global_step` and optimizer slots not included)."""
    mapping: dict[str, str] = {}
    counters: dict[str, defaultdict[str, int]] = defaultdict(lambda: defaultdict(int))

    def tf1_name(scope: str, layer_type: str) -> str:
        """The next TF1 `tf.layers` name of this type in this scope: conv2d, conv2d_1, ..."""
        index = counters[scope][layer_type]
        counters[scope][layer_type] += 1
        base = "/".join(part for part in ("spinenet", scope) if part)
        return f"{base}/{layer_type}" + (f"_{index}" if index else "")

    for unit in spinenet_units(config):
        if not unit.used:
            continue
        for conv, bn in unit.conv_bn_pairs():
            mapping[f"{tf1_name(unit.scope, 'conv2d')}/kernel"] = f"{conv}/kernel"
            source_bn = tf1_name(unit.scope, "batch_normalization")
            for weight in BN_WEIGHTS:
                mapping[f"{source_bn}/{weight}"] = f"{bn}/{weight}"

    rpn = config.rpn
    for i in range(rpn.num_convs):
        source = "rpn_head/rpn" + (f"-{i}" if i else "")
        target = "rpn_head/rpn_conv" + (f"{i + 1}" if i else "")
        mapping.update(_dense_like(source, target))
        for level in range(config.backbone.min_level, config.backbone.max_level + 1):
            source_bn = f"rpn_head/rpn-l{level}-bn" + (f"-{i}" if i else "")
            target_bn = f"rpn_head/rpn_bn{i + 1 if i else ''}_p{level}"
            mapping.update(_bn(source_bn, target_bn))
    mapping.update(_dense_like("rpn_head/rpn-class", "rpn_head/rpn_objectness"))
    mapping.update(_dense_like("rpn_head/rpn-box", "rpn_head/rpn_box_deltas"))

    box = config.bbox_head
    for i in range(box.num_shared_convs):
        mapping.update(_dense_like(f"fast_rcnn_head/conv_{i}", f"box_head/box_head_conv{i + 1}"))
        mapping.update(
            _bn(_numbered("fast_rcnn_head/batch_normalization", i), f"box_head/box_head_bn{i + 1}")
        )
    for i in range(box.num_shared_fcs):
        mapping.update(_dense_like(f"fast_rcnn_head/fc{i + 6}", f"box_head/box_head_fc{i + 1}"))
        source_bn = _numbered("fast_rcnn_head/batch_normalization", box.num_shared_convs + i)
        mapping.update(_bn(source_bn, f"box_head/box_head_fc{i + 1}_bn"))
    mapping.update(_dense_like("fast_rcnn_head/class-predict", "box_head/box_head_class_logits"))
    mapping.update(_dense_like("fast_rcnn_head/box-predict", "box_head/box_head_box_deltas"))

    mask = config.mask_head
    for i in range(mask.num_convs):
        mapping.update(_dense_like(f"mask_head/mask-conv-l{i}", f"mask_head/mask_head_conv{i + 1}"))
        mapping.update(
            _bn(_numbered("mask_head/batch_normalization", i), f"mask_head/mask_head_bn{i + 1}")
        )
    mapping.update(_dense_like("mask_head/conv5-mask", "mask_head/mask_head_deconv"))
    mapping.update(
        _bn(
            _numbered("mask_head/batch_normalization", mask.num_convs),
            "mask_head/mask_head_deconv_bn",
        )
    )
    mapping.update(_dense_like("mask_head/mask_fcn_logits", "mask_head/mask_head_logits"))
    return mapping


def _numbered(name: str, index: int) -> str:
    return name + (f"_{index}" if index else "")


def _dense_like(source: str, target: str) -> dict[str, str]:
    """kernel + bias of a conv / dense layer."""
    return {f"{source}/kernel": f"{target}/kernel", f"{source}/bias": f"{target}/bias"}


def _bn(source: str, target: str) -> dict[str, str]:
    return {f"{source}/{weight}": f"{target}/{weight}" for weight in BN_WEIGHTS}


# --------------------------------------------------------------------------- Model Garden

#: Where Model Garden's `tf.train.Checkpoint(model=...)` keeps each part; the first prefix
#: present in a checkpoint is used (the object path the checkpoint records depends on the
#: order Model Garden's MaskRCNNModel tracks its attributes).
MODELGARDEN_PREFIXES = {
    "backbone": ("model/backbone/", "model/_config_dict/backbone/"),
    "rpn_head": ("model/rpn_head/", "model/_config_dict/rpn_head/"),
    "detection_head": (
        "model/_config_dict/detection_head/",
        "model/detection_head/0/",
        "model/detection_head/",
    ),
    "mask_head": ("model/mask_head/", "model/_config_dict/mask_head/"),
}
#: Model Garden's sub-layer attributes of its blocks, by maskspine part.
_MG_BLOCK_PARTS = {"proj": ("_shortcut", "_norm0"), "1": ("_conv1", "_norm1"),
                   "2": ("_conv2", "_norm2"), "3": ("_conv3", "_norm3")}  # fmt: skip
_MG_CLASSES = {"conv": "Conv2D", "bn": "BatchNormalization",
               "bottleneck": "BottleneckBlock", "residual": "ResidualBlock"}  # fmt: skip


def modelgarden_backbone_order(block_repeats: int) -> list[tuple[str, int]]:
    """[(Keras class, creation index)] of Model Garden's SpineNet layers with weights in
    checkpoint order (`layer_with_weights-N`, N = position), from
    `modelgarden_backbone_order.json` (written by tools/pretrained/make_modelgarden_tables.py).

    Raises:
        KeyError: no recorded order for this `block_repeats`.
    """
    data = json.loads(_MG_ORDER_FILE.read_text())["block_repeats"]
    return [(cls, int(index)) for cls, index in data[str(block_repeats)]]


def modelgarden_variable_map(config: Config, prefixes: dict[str, str]) -> dict[str, str]:
    """{checkpoint key: maskspine weight path} of a Model Garden Mask R-CNN checkpoint.

    Args:
        config: the model's config (a Model Garden flavour).
        prefixes: the checkpoint prefix of each part (see `MODELGARDEN_PREFIXES`).
    """
    units = spinenet_units(config)
    # Creation index of each Keras class -> what maskspine layer(s) it is.
    created: dict[tuple[str, int], tuple[str, Unit, str]] = {}
    counts: defaultdict[str, int] = defaultdict(int)
    for unit in units:
        if unit.kind == "conv":
            for role, cls in (("conv", "Conv2D"), ("bn", "BatchNormalization")):
                created[(cls, counts[cls])] = (role, unit, f"{unit.name}_{role}")
                counts[cls] += 1
        else:
            cls = _MG_CLASSES[unit.kind]
            created[(cls, counts[cls])] = ("block", unit, unit.name)
            counts[cls] += 1
    repeats = SCALING_MAP[config.backbone.arch]["block_repeats"]
    if config.backbone.block_repeats is not None:
        repeats = config.backbone.block_repeats
    mapping: dict[str, str] = {}
    backbone = prefixes["backbone"]
    for position, key in enumerate(modelgarden_backbone_order(repeats)):
        role, unit, target = created[key]
        source = f"{backbone}layer_with_weights-{position}/"
        if role == "conv":
            mapping[f"{source}kernel{_MG_VALUE}"] = f"{target}/kernel"
        elif role == "bn":
            for weight in BN_WEIGHTS:
                mapping[f"{source}{weight}{_MG_VALUE}"] = f"{target}/{weight}"
        else:
            for part, (conv, bn) in _MG_BLOCK_PARTS.items():
                if part == "proj" and not unit.projection:
                    continue
                if part == "3" and unit.kind == "residual":
                    continue
                mapping[f"{source}{conv}/kernel{_MG_VALUE}"] = f"{target}_{part}_conv/kernel"
                for weight in BN_WEIGHTS:
                    mapping[f"{source}{bn}/{weight}{_MG_VALUE}"] = f"{target}_{part}_bn/{weight}"

    def add(source_prefix: str, source: str, target: str, weights) -> None:
        for weight in weights:
            mapping[f"{source_prefix}{source}/{weight}{_MG_VALUE}"] = f"{target}/{weight}"

    rpn, levels = (
        prefixes["rpn_head"],
        range(config.backbone.min_level, config.backbone.max_level + 1),
    )
    for i in range(config.rpn.num_convs):
        add(rpn, f"_convs/{i}", "rpn_head/rpn_conv" + (f"{i + 1}" if i else ""), ("kernel", "bias"))
        for index, level in enumerate(levels):
            add(
                rpn,
                f"_norms/{index}/{i}",
                f"rpn_head/rpn_bn{i + 1 if i else ''}_p{level}",
                BN_WEIGHTS,
            )
    add(rpn, "_classifier", "rpn_head/rpn_objectness", ("kernel", "bias"))
    add(rpn, "_box_regressor", "rpn_head/rpn_box_deltas", ("kernel", "bias"))

    det = prefixes["detection_head"]
    for i in range(config.bbox_head.num_shared_convs):
        add(det, f"_convs/{i}", f"box_head/box_head_conv{i + 1}", ("kernel", "bias"))
        add(det, f"_conv_norms/{i}", f"box_head/box_head_bn{i + 1}", BN_WEIGHTS)
    for i in range(config.bbox_head.num_shared_fcs):
        add(det, f"_fcs/{i}", f"box_head/box_head_fc{i + 1}", ("kernel", "bias"))
        add(det, f"_fc_norms/{i}", f"box_head/box_head_fc{i + 1}_bn", BN_WEIGHTS)
    add(det, "_classifier", "box_head/box_head_class_logits", ("kernel", "bias"))
    add(det, "_box_regressor", "box_head/box_head_box_deltas", ("kernel", "bias"))

    mask = prefixes["mask_head"]
    for i in range(config.mask_head.num_convs):
        add(mask, f"_convs/{i}", f"mask_head/mask_head_conv{i + 1}", ("kernel", "bias"))
        add(mask, f"_conv_norms/{i}", f"mask_head/mask_head_bn{i + 1}", BN_WEIGHTS)
    add(mask, "_deconv", "mask_head/mask_head_deconv", ("kernel", "bias"))
    add(mask, "_deconv_bn", "mask_head/mask_head_deconv_bn", BN_WEIGHTS)
    add(mask, "_mask_regressor", "mask_head/mask_head_logits", ("kernel", "bias"))
    return mapping


def iter_parts(mapping: dict[str, str]) -> Iterator[tuple[str, list[str]]]:
    """(module, its target weights) of a mapping, modules in model order: backbone,
    rpn_head, box_head, mask_head."""
    parts: dict[str, list[str]] = defaultdict(list)
    for target in mapping.values():
        head = target.split("/", 1)[0]
        parts[head if head in ("rpn_head", "box_head", "mask_head") else "backbone"].append(target)
    for module in ("backbone", "rpn_head", "box_head", "mask_head"):
        if parts.get(module):
            yield module, parts[module]
