"""The one factory: a config -> the parts of Mask R-CNN -> `MaskRCNN`.

    model = build_mask_rcnn(config)            # maskspine.build_model

Each part is built from its own config block (`build_backbone` from `backbone`,
`build_proposal_generator` from `train_cfg.rpn_proposal` / `test_cfg.rpn` and
`rpn.bbox_coder`, ...). The conventions of the three codebases maskspine reproduces (the
reference's, tensorflow/tpu's, Model Garden's) are options of the parts they change, chosen
here from the config's keys; the model's call holds no such choice. The parts with weights
are created under the dtype policy of `precision`; with `jit_compile` resolved to true every
part takes the kernels XLA compiles (RoIAlign and mask targets by gathers, the tiled NMS),
which give the other kernels' values to float rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import keras
import tensorflow as tf

from maskspine.config import Config, ConfigError
from maskspine.config.schema import endpoint_channels
from maskspine.jit import resolve_jit_compile
from maskspine.modeling.anchors import AnchorGenerator
from maskspine.modeling.box_ops import ImageWindow
from maskspine.modeling.detection import DetectionGenerator
from maskspine.modeling.heads import BoxHead, MaskHead
from maskspine.modeling.layers import BatchNormalization
from maskspine.modeling.losses import MaskRCNNLoss
from maskspine.modeling.mask_rcnn import MaskRCNN
from maskspine.modeling.roi_align import RoIAligner
from maskspine.modeling.rpn import ProposalGenerator, RPNHead
from maskspine.modeling.spinenet import build_spinenet
from maskspine.modeling.targets import AnchorLabeler, MaskSampler, RoISampler
from maskspine.precision import dtype_policy, resolve_precision


def build_mask_rcnn(config: Config, strategy: tf.distribute.Strategy | None = None) -> MaskRCNN:
    """The detector `config` describes, its weights freshly initialised.

    Args:
        strategy: a distribution strategy to train under: the parts' variables are created
            in its scope, the model that composes them outside any, so that Keras runs
            `fit` under the strategy current when it is called (compile and fit in
            `strategy.scope()`) without averaging a batch over the replicas to build a model
            that is built already. Call this outside the strategy's scope.

    Raises:
        ConfigError: the classes are not resolved yet (`coco_classes: from_data`).
    """
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        parts = build_parts(config)
    return MaskRCNN(**parts)


def build_parts(config: Config) -> dict[str, Any]:
    """Every part of `config`'s model (`mask_rcnn.PARTS`), with `precision` and `jit_compile`
    resolved on this machine: `MaskRCNN`'s keyword arguments.

    Raises:
        ConfigError: the classes are not resolved yet (`coco_classes: from_data`).
    """
    if config.classes_from_data:
        raise ConfigError(
            "coco_classes is 'from_data': resolve the classes from the data set "
            "(the train command does) before building the model"
        )
    precision = resolve_precision(config.precision)
    jit = resolve_jit_compile(config.jit_compile)
    with dtype_policy(precision):
        backbone = build_backbone(config, jit)
        rpn_head = build_rpn_head(config, jit)
        box_head = build_box_head(config, jit)
        mask_head = build_mask_head(config, jit)
    anchors = build_anchor_generator(config)
    return dict(
        backbone=backbone,
        rpn_head=rpn_head,
        anchor_generator=anchors,
        image_window=ImageWindow(
            input_size=(config.img_height, config.img_width), clip_boxes_to=config.clip_boxes_to
        ),
        proposal_generator=build_proposal_generator(config, jit),
        anchor_labeler=build_anchor_labeler(config),
        roi_sampler=build_roi_sampler(config),
        roi_aligner=build_roi_aligner(config.roi, jit, name="roi_aligner"),
        box_head=box_head,
        detection_generator=build_detection_generator(config, jit),
        mask_sampler=build_mask_sampler(config, jit),
        mask_roi_aligner=build_roi_aligner(config.mask_roi, jit, name="mask_roi_aligner"),
        mask_head=mask_head,
        loss=build_loss(config),
        precision=precision,
        jit_compile=jit,
    )


# --------------------------------------------------------------------------- with weights


def build_backbone(config: Config, jit: bool = False) -> keras.Model:
    """SpineNet of `backbone` for the config's input size (`modeling.spinenet`). `jit`: its BatchNorms
    set for XLA (`_configure_batch_norm`)."""
    backbone = config.backbone
    model = build_spinenet(
        backbone.arch,
        (config.img_height, config.img_width, 3),
        min_level=backbone.min_level,
        max_level=backbone.max_level,
        activation=backbone.activation,
        norm_momentum=1.0 - backbone.norm_cfg.momentum,
        norm_epsilon=backbone.norm_cfg.eps,
        stochastic_depth_rate=backbone.stochastic_depth_rate,
        filter_size_scale=backbone.filter_size_scale,
        endpoints_num_filters=backbone.endpoints_num_filters,
        resample_alpha=backbone.resample_alpha,
        block_repeats=backbone.block_repeats,
        conv_padding=backbone.conv_padding,
        downsample_pooling=backbone.downsample_pooling,
        name="backbone",
    )
    _configure_batch_norm(model, backbone.norm_cfg.type == "SyncBN", jit)
    return model


def build_rpn_head(config: Config, jit: bool = False) -> RPNHead:
    """The RPN head of `rpn`, built for the backbone's channels. `jit`: its BatchNorms
    set for XLA (`_configure_batch_norm`)."""
    rpn = config.rpn
    generator = rpn.anchor_generator
    head = RPNHead(
        len(generator.scales) * len(generator.ratios),
        rpn.feat_channels,
        num_convs=rpn.num_convs,
        norm_per_level=rpn.norm_per_level,
        levels=list(range(config.backbone.min_level, config.backbone.max_level + 1)),
        activation=rpn.activation,
        norm_momentum=1.0 - rpn.norm_cfg.momentum,
        norm_epsilon=rpn.norm_cfg.eps,
        name="rpn_head",
    )
    _configure_batch_norm(head, rpn.norm_cfg.type == "SyncBN", jit)
    head.build((None, None, None, endpoint_channels(config)))
    return head


def build_box_head(config: Config, jit: bool = False) -> BoxHead:
    """The box head of `bbox_head`, built for `roi`'s RoI size. `jit`: its BatchNorms
    set for XLA (`_configure_batch_norm`)."""
    box = config.bbox_head
    head = BoxHead(
        config.num_classes,
        num_shared_convs=box.num_shared_convs,
        conv_out_channels=box.conv_out_channels,
        num_shared_fcs=box.num_shared_fcs,
        fc_out_channels=box.fc_out_channels,
        reg_class_agnostic=box.reg_class_agnostic,
        norm_momentum=1.0 - box.norm_cfg.momentum,
        norm_epsilon=box.norm_cfg.eps,
        conv_bias=box.conv_bias,
        fc_norm=box.fc_norm,
        activation=box.activation,
        name="box_head",
    )
    _configure_batch_norm(head, box.norm_cfg.type == "SyncBN", jit)
    size = config.roi.roi_layer.out_size
    head.build((None, None, size, size, endpoint_channels(config)))
    return head


def build_mask_head(config: Config, jit: bool = False) -> MaskHead:
    """The mask head of `mask_head`, built for `mask_roi`'s RoI size. `jit`: its BatchNorms
    set for XLA (`_configure_batch_norm`)."""
    mask = config.mask_head
    head = MaskHead(
        config.num_classes,
        num_convs=mask.num_convs,
        conv_out_channels=mask.conv_out_channels,
        norm_momentum=1.0 - mask.norm_cfg.momentum,
        norm_epsilon=mask.norm_cfg.eps,
        conv_bias=mask.conv_bias,
        deconv_norm=mask.deconv_norm,
        activation=mask.activation,
        name="mask_head",
    )
    _configure_batch_norm(head, mask.norm_cfg.type == "SyncBN", jit)
    size = config.mask_roi.roi_layer.out_size
    head.build((None, None, size, size, endpoint_channels(config)))
    return head


def _sublayers(layer: keras.layers.Layer) -> Iterator[keras.layers.Layer]:
    """`layer` and every layer inside it (a functional model's `layers`, a custom layer's
    attributes that hold layers or lists of them), each once."""
    seen: set[int] = set()
    pending = [layer]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        children = list(current.layers) if isinstance(current, keras.Model) else []
        for value in vars(current).values():
            values = value if isinstance(value, (list, tuple)) else [value]
            children.extend(v for v in values if isinstance(v, keras.layers.Layer))
        pending.extend(children)


def _configure_batch_norm(part: keras.layers.Layer, synchronized: bool, jit: bool) -> None:
    """norm_cfg.type SyncBN: BatchNorm statistics over all replicas (Keras reads the flag
    at call time and saves it with the layer). `jit`: maskspine's BatchNormalization keeps
    Keras' ops instead of TensorFlow's fused kernel, for XLA to fuse them itself (with the
    fused kernel the compiled training step's gradient norm differed from the graph's by
    2.2e-4 relative on the trained shapes demo, `benchmarks/xla_equality.py`)."""
    for layer in _sublayers(part):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = synchronized
        if isinstance(layer, BatchNormalization):
            layer.fused = not jit


# --------------------------------------------------------------------------- without weights


def _box_coder(coder: Any, *, decode: bool = True) -> dict[str, Any]:
    """A box coder block as the coder arguments of the parts (`decode`: with the clipping of
    decoded sizes, which encoding does not take)."""
    arguments = {
        "means": list(coder.target_means),
        "stds": list(coder.target_stds),
        "legacy_plus_one": bool(coder.legacy_plus_one),
    }
    if decode:
        arguments["dhdw_clip"] = coder.dhdw_clip
    return arguments


def build_anchor_generator(config: Config) -> AnchorGenerator:
    """The anchors of `rpn.anchor_generator` for the config's input size."""
    generator = config.rpn.anchor_generator
    return AnchorGenerator(
        (config.img_height, config.img_width),
        generator.strides,
        generator.scales,
        generator.ratios,
        generator.ratio_convention,
    )


def _proposal_settings(settings: Any, jit: bool) -> dict[str, Any]:
    return {
        "nms_pre": settings.nms_pre,
        "max_per_img": settings.max_per_img,
        "iou_threshold": settings.iou_threshold,
        "min_bbox_size": settings.min_bbox_size,
        "size_filter": settings.size_filter,
        "nms_rule": settings.nms_rule,
        "nms_implementation": "tiled" if jit else settings.nms_implementation,
    }


def build_proposal_generator(config: Config, jit: bool = False) -> ProposalGenerator:
    """Proposals of `train_cfg.rpn_proposal` (training) and `test_cfg.rpn` (inference)."""
    return ProposalGenerator(
        train=_proposal_settings(config.train_cfg.rpn_proposal, jit),
        test=_proposal_settings(config.test_cfg.rpn, jit),
        box_coder=_box_coder(config.rpn.bbox_coder),
        name="proposal_generator",
    )


def _assigner(assigner: Any) -> dict[str, Any]:
    return {
        "pos_iou_thr": assigner.pos_iou_thr,
        "neg_iou_thr": assigner.neg_iou_thr,
        "min_pos_iou": assigner.min_pos_iou,
        "match_low_quality": assigner.match_low_quality,
    }


def _sampler(sampler: Any, num: int | None = None) -> dict[str, Any]:
    return {
        "num": int(sampler.num if num is None else num),
        "pos_fraction": sampler.pos_fraction,
        "neg_pos_ub": sampler.neg_pos_ub,
        "add_gt_as_proposals": sampler.add_gt_as_proposals,
    }


def build_anchor_labeler(config: Config) -> AnchorLabeler:
    """RPN targets of `train_cfg.rpn` with `rpn.bbox_coder`, sampled from `seed`."""
    rpn = config.train_cfg.rpn
    return AnchorLabeler(
        assigner=_assigner(rpn.assigner),
        sampler=_sampler(rpn.sampler),
        box_coder=_box_coder(config.rpn.bbox_coder, decode=False),
        seed=config.seed,
        name="anchor_labeler",
    )


def _rcnn_sample_size(config: Config) -> int:
    return min(config.train_cfg.rcnn.sampler.num, config.roi.sample_num)


def build_roi_sampler(config: Config) -> RoISampler:
    """R-CNN targets of `train_cfg.rcnn` (at most `roi.sample_num` RoIs per image) with
    `bbox_head.bbox_coder`, sampled from `seed`."""
    rcnn = config.train_cfg.rcnn
    return RoISampler(
        assigner=_assigner(rcnn.assigner),
        sampler=_sampler(rcnn.sampler, _rcnn_sample_size(config)),
        box_coder=_box_coder(config.bbox_head.bbox_coder, decode=False),
        seed=config.seed,
        name="roi_sampler",
    )


def build_mask_sampler(config: Config, jit: bool = False) -> MaskSampler:
    """The mask head's RoIs: at most `mask_roi.sample_num` positives per image, targets of
    `train_cfg.rcnn.mask_size`."""
    rcnn = config.train_cfg.rcnn
    return MaskSampler(
        num_masks=min(config.mask_roi.sample_num, _rcnn_sample_size(config)),
        mask_size=rcnn.mask_size,
        method="gather" if jit else rcnn.mask_target_method,
        name="mask_sampler",
    )


def build_roi_aligner(extractor: Any, jit: bool = False, *, name: str) -> RoIAligner:
    """Multilevel RoIAlign of an extractor block (`roi` or `mask_roi`)."""
    return RoIAligner(
        output_size=extractor.roi_layer.out_size,
        featmap_strides=extractor.featmap_strides,
        finest_scale=extractor.finest_scale,
        sampling_ratio=extractor.roi_layer.sample_num,
        aligned=extractor.roi_layer.aligned,
        level_assignment=extractor.level_assignment,
        method="gather" if jit else extractor.roi_layer.method,
        name=name,
    )


def build_detection_generator(config: Config, jit: bool = False) -> DetectionGenerator:
    """Detections of `test_cfg.rcnn` with `bbox_head.bbox_coder`."""
    rcnn = config.test_cfg.rcnn
    return DetectionGenerator(
        score_thr=rcnn.score_thr,
        iou_threshold=rcnn.iou_threshold,
        max_per_img=rcnn.max_per_img,
        nms_rule=rcnn.nms_rule,
        nms_implementation="tiled" if jit else rcnn.nms_implementation,
        box_coder=_box_coder(config.bbox_head.bbox_coder),
        name="detection_generator",
    )


def build_loss(config: Config) -> MaskRCNNLoss:
    """The losses' betas and weights of `rpn`, `bbox_head` and `mask_head`."""
    return MaskRCNNLoss(
        rpn_beta=config.rpn.loss_bbox.beta,
        rpn_cls_weight=config.rpn.loss_cls.loss_weight,
        rpn_box_weight=config.rpn.loss_bbox.loss_weight,
        rcnn_beta=config.bbox_head.loss_bbox.beta,
        rcnn_cls_weight=config.bbox_head.loss_cls.loss_weight,
        rcnn_box_weight=config.bbox_head.loss_bbox.loss_weight,
        mask_weight=config.mask_head.loss_mask.loss_weight,
        name="loss",
    )
