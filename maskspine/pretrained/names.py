"""Which checkpoint variable of the originals goes into which maskspine weight.

Both originals build SpineNet in the same order as maskspine (stem, then per block spec two
resampling connections and the block group, then the endpoints), and both name its layers
by that order: tensorflow/tpu through TF1 `tf.layers` counters per variable scope
(`spinenet/sub_policy3/resample_with_alpha_resample_3_0/conv2d_1/kernel`), Model Garden
through Keras' per-class name counters (`conv2d_17`, `bottleneck_block_4`), which its
checkpoint then lists in the functional model's layer order (`layer_with_weights-N`,
see `modelgarden_backbone_order.json`). The order is maskspine's own build plan
(`modeling.spinenet.spinenet_plan`, the layers `build_spinenet` creates, in creation
order); the two `*_variable_map` functions turn it and the heads into
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
from pathlib import Path

from maskspine.config import Config
from maskspine.modeling.spinenet import PlannedLayer, SpineNetPlan, spinenet_plan

BN_WEIGHTS = ("gamma", "beta", "moving_mean", "moving_variance")
_MG_VALUE = "/.ATTRIBUTES/VARIABLE_VALUE"
_MG_ORDER_FILE = Path(__file__).with_name("modelgarden_backbone_order.json")


def backbone_plan(config: Config) -> SpineNetPlan:
    """The build plan of the config's SpineNet (its layers in creation order)."""
    backbone = config.backbone
    return spinenet_plan(
        backbone.arch,
        backbone.min_level,
        backbone.max_level,
        filter_size_scale=backbone.filter_size_scale,
        endpoints_num_filters=backbone.endpoints_num_filters,
        resample_alpha=backbone.resample_alpha,
        block_repeats=backbone.block_repeats,
    )


def tpu_scope(layer: PlannedLayer) -> str:
    """The tensorflow/tpu variable scope (below `spinenet/`) a backbone layer is created in:
    block spec i's resampling connection k in `sub_policy{i}/resample_with_alpha_resample_{i}_{k}`,
    its blocks in `sub_policy{i}/scale_permuted_block_{i + 2}`; the stem and endpoints at
    the top."""
    if layer.role.startswith("resample_"):
        spec = layer.block - 2
        return f"sub_policy{spec}/resample_with_alpha_resample_{spec}_{layer.connection}"
    if layer.role == "block":
        return f"sub_policy{layer.block - 2}/scale_permuted_block_{layer.block}"
    return ""


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

    for layer in backbone_plan(config).layers:
        if not layer.used:
            continue
        scope = tpu_scope(layer)
        for conv, bn in layer.weight_layer_names():
            mapping[f"{tf1_name(scope, 'conv2d')}/kernel"] = f"{conv}/kernel"
            source_bn = tf1_name(scope, "batch_normalization")
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
    plan = backbone_plan(config)
    # Creation index of each Keras class -> what maskspine layer(s) it is (layers of unused
    # blocks count: Model Garden creates them too).
    created: dict[tuple[str, int], tuple[str, PlannedLayer, str]] = {}
    counts: defaultdict[str, int] = defaultdict(int)
    for layer in plan.layers:
        if layer.kind == "conv":
            for role, cls in (("conv", "Conv2D"), ("bn", "BatchNormalization")):
                created[(cls, counts[cls])] = (role, layer, f"{layer.name}_{role}")
                counts[cls] += 1
        else:
            cls = _MG_CLASSES[layer.kind]
            created[(cls, counts[cls])] = ("block", layer, layer.name)
            counts[cls] += 1
    mapping: dict[str, str] = {}
    backbone = prefixes["backbone"]
    for position, key in enumerate(modelgarden_backbone_order(plan.block_repeats)):
        role, layer, target = created[key]
        source = f"{backbone}layer_with_weights-{position}/"
        if role == "conv":
            mapping[f"{source}kernel{_MG_VALUE}"] = f"{target}/kernel"
        elif role == "bn":
            for weight in BN_WEIGHTS:
                mapping[f"{source}{weight}{_MG_VALUE}"] = f"{target}/{weight}"
        else:
            for part, (conv, bn) in _MG_BLOCK_PARTS.items():
                if part == "proj" and not layer.projection:
                    continue
                if part == "3" and layer.kind == "residual":
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
