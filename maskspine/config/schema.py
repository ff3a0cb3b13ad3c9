"""The config's schema: typed dataclasses whose keys follow the reference's YAML (its
"Script Parameters" block), building one from a nested mapping with type checks, and the
checks across keys (`validate`), run once when a config loads (`maskspine.config.loader`).

Every string choice is one of `maskspine.choices.CONFIG_CHOICES`; the model's structural
rules (channels that must agree, strides of the backbone's levels, the input-size rule)
are checked here too, against SpineNet's published architecture (`modeling.spinenet_specs`),
so that a model that cannot be built never gets past loading. Nothing here imports
TensorFlow.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union

from maskspine.choices import CONFIG_CHOICES, SPINENET_ARCHS
from maskspine.errors import ConfigError
from maskspine.modeling.spinenet_specs import INPUT_SIZE_DIVISOR, SCALING_MAP

#: Keys of the reference's YAML that only make sense on MindSpore: accepted, ignored.
MINDSPORE_ONLY_KEYS = frozenset(
    {
        "device_target",
        "mode",
        "enable_graph_kernel",
        "datasink",
        "run_distribute",
        "device_id",
        "device_num",
        "rank_id",
        "python_multiprocessing",
        "train_dataset_divider",
    }
)

#: The value of `coco_classes` that takes the class list from the training data's labels.json.
CLASSES_FROM_DATA = "from_data"

# --------------------------------------------------------------------------- sections


@dataclass
class NormConfig:
    """Batch normalisation. `type`: "BN" (per replica) or "SyncBN" (statistics over all
    replicas, for small per-GPU batches). `momentum` is the reference's (PyTorch-style)
    weight of the new batch statistics; Keras' BatchNormalization gets `1 - momentum`."""

    type: str = "BN"
    momentum: float = 0.01
    eps: float = 0.001


@dataclass
class BackboneConfig:
    """SpineNet backbone. `arch` picks a model id; the optional fields override its
    scaling (for small test and demo models).

    `conv_padding`: how stride-2 convolutions pad. "same": Keras/TF 'same' padding (more
    after than before on even sizes; Model Garden's SpineNet). "symmetric": (k - 1) // 2
    zeros before and k - 1 - (k - 1) // 2 after, then a 'valid' convolution, as
    tensorflow/tpu `models/official/detection/modeling/architecture/nn_ops.py`
    (`conv2d_fixed_padding`) does; the stem's 7x7 and the resampling 3x3 are shifted.

    `downsample_pooling`: how a resampling connection goes down by 4x or more after its
    stride-2 3x3 conv. "repeated": one 3x3 stride-2 max-pool per further level (Model
    Garden `official/vision/modeling/backbones/spinenet.py`). "single": one max-pool of
    size 3 (by 4x) or 5 (by 8x or more) with stride ratio / 2, as tensorflow/tpu
    `modeling/architecture/spinenet.py` (`resample_with_alpha`) does.
    """

    type: str = "spinenet"
    arch: str = "49"
    norm_cfg: NormConfig = field(default_factory=NormConfig)
    min_level: int = 3
    max_level: int = 7
    activation: str = "relu"
    stochastic_depth_rate: float = 0.0
    filter_size_scale: float | None = None
    endpoints_num_filters: int | None = None
    resample_alpha: float | None = None
    block_repeats: int | None = None
    conv_padding: str = "same"
    downsample_pooling: str = "repeated"


@dataclass
class BoxCoderConfig:
    """Delta encoding of boxes: (delta - mean) / std per (dy, dx, dh, dw).

    `legacy_plus_one`: the pixel-index box convention of tensorflow/tpu
    `models/official/detection/utils/box_utils.py` (`encode_boxes`, `decode_boxes`,
    `clip_boxes`): a box's height is y2 - y1 + 1, a decoded box ends at y1 + h - 1, and
    boxes are clipped to [0, H - 1] instead of [0, H].

    `dhdw_clip`: the bound log(1000 / 16) on the decoded dh, dw. "both": clipped to
    [-bound, bound] (mmdetection). "upper": only from above, as tensorflow/tpu
    `utils/box_utils.py` and Model Garden `official/vision/ops/box_ops.py` do.
    """

    target_means: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    target_stds: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    legacy_plus_one: bool = False
    dhdw_clip: str = "both"


@dataclass
class LossWeightConfig:
    loss_weight: float = 1.0


@dataclass
class SmoothL1LossConfig:
    loss_weight: float = 1.0
    beta: float = 1.0


@dataclass
class AnchorGeneratorConfig:
    """Anchors per level: base size = stride x scale, one anchor per (scale, ratio), in
    the order of `ratios` (the RPN's output channels follow this order).

    `ratio_convention`: what a ratio r means. "height_over_width": h = base * sqrt(r),
    w = base / sqrt(r) (mmdetection). "width_over_height": w = base * sqrt(r),
    h = base / sqrt(r), as tensorflow/tpu `models/official/detection/dataloader/anchor.py`
    and Model Garden `official/vision/ops/anchor.py` define `aspect_ratios`.
    """

    scales: list[float] = field(default_factory=lambda: [3.0])
    strides: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 128])
    ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    ratio_convention: str = "height_over_width"


@dataclass
class RPNConfig:
    """RPN head: `num_convs` shared 3x3 convs of `feat_channels` (with bias), then 1x1
    objectness and delta convs.

    `norm_per_level`: each shared conv is followed by a BatchNorm of its own per pyramid
    level (`norm_cfg`) before the activation, as tensorflow/tpu
    `models/official/detection/modeling/architecture/heads.py` (`RpnHead` with
    use_batch_norm, `rpn-l3-bn` ...) and Model Garden
    `official/vision/modeling/heads/dense_prediction_heads.py` (`RPNHead`) do.
    `activation`: "relu" or "swish" after each shared conv.
    """

    in_channels: int = 256
    feat_channels: int = 256
    num_classes: int = 1
    num_convs: int = 1
    norm_per_level: bool = False
    activation: str = "relu"
    norm_cfg: NormConfig = field(default_factory=NormConfig)
    bbox_coder: BoxCoderConfig = field(default_factory=BoxCoderConfig)
    loss_cls: LossWeightConfig = field(default_factory=LossWeightConfig)
    loss_bbox: SmoothL1LossConfig = field(
        default_factory=lambda: SmoothL1LossConfig(loss_weight=1.0, beta=1.0 / 9.0)
    )
    anchor_generator: AnchorGeneratorConfig = field(default_factory=AnchorGeneratorConfig)


@dataclass
class BBoxHeadConfig:
    """Box head: `num_shared_convs` 3x3 conv-BN-activation, `num_shared_fcs` FC-activation,
    class logits and class-specific (or agnostic) deltas laid out [class][dy, dx, dh, dw].

    `conv_bias`: the convs have a bias (before their BatchNorm), and `fc_norm`: each FC is
    followed by a BatchNorm before its activation, as in tensorflow/tpu
    `models/official/detection/modeling/architecture/heads.py` (`FastrcnnHead` with
    use_batch_norm) and Model Garden `official/vision/modeling/heads/instance_heads.py`
    (`DetectionHead`). `activation`: "relu" or "swish".
    """

    num_shared_convs: int = 4
    num_shared_fcs: int = 1
    in_channels: int = 256
    conv_out_channels: int = 256
    fc_out_channels: int = 1024
    roi_feat_size: int = 7
    reg_class_agnostic: bool = False
    bbox_coder: BoxCoderConfig = field(
        default_factory=lambda: BoxCoderConfig(target_stds=[0.1, 0.1, 0.2, 0.2])
    )
    loss_cls: LossWeightConfig = field(default_factory=LossWeightConfig)
    loss_bbox: SmoothL1LossConfig = field(default_factory=SmoothL1LossConfig)
    norm_cfg: NormConfig = field(default_factory=NormConfig)
    conv_bias: bool = False
    fc_norm: bool = False
    activation: str = "relu"


@dataclass
class MaskHeadConfig:
    """Mask head: `num_convs` 3x3 conv-BN-activation, a 2x2 stride-2 transposed conv (with
    bias) + activation, a 1x1 conv with one logit channel per class.

    `conv_bias`: the 3x3 convs have a bias (before their BatchNorm), and `deconv_norm`: the
    transposed conv is followed by a BatchNorm before its activation, as in tensorflow/tpu
    `models/official/detection/modeling/architecture/heads.py` (`MaskrcnnHead` with
    use_batch_norm) and Model Garden `official/vision/modeling/heads/instance_heads.py`
    (`MaskHead`). `activation`: "relu" or "swish".
    """

    num_convs: int = 4
    in_channels: int = 256
    conv_out_channels: int = 256
    norm_cfg: NormConfig = field(default_factory=NormConfig)
    loss_mask: LossWeightConfig = field(default_factory=LossWeightConfig)
    conv_bias: bool = False
    deconv_norm: bool = False
    activation: str = "relu"


@dataclass
class RoILayerConfig:
    """RoIAlign: `out_size` bins per side, `sample_num` samples per bin side.

    `aligned`: torchvision's `aligned` flag. True: a box is shifted by -0.5 feature pixel
    (pixel centres at integers). False: not shifted, as the RoIAlign of tensorflow/tpu
    `models/official/detection/ops/spatial_transform_ops.py` and Model Garden
    `official/vision/ops/spatial_transform_ops.py` (`multilevel_crop_and_resize`,
    sample_offset 0.5, one sample per bin: `sample_num: 1`) samples.

    `method`: "crop_and_resize" (`tf.image.crop_and_resize`, no XLA kernel) or "gather"
    (bilinear gathers from the flattened levels, the technique of Model Garden's
    `multilevel_crop_and_resize`; the same values to float rounding, compiles with
    `jit_compile=True`; on CPU faster forward, slower backward: `multilevel_roi_align`).
    """

    type: str = "RoIAlign"
    out_size: int = 7
    sample_num: int = 2
    aligned: bool = True
    method: str = "crop_and_resize"


@dataclass
class RoIExtractorConfig:
    """Multilevel RoIAlign. `roi_layer.sample_num` is the sampling ratio per bin; the
    extractor's own `sample_num` is the reference's number of RoIs fed to the head.

    `level_assignment`: which of `featmap_strides` a box is pooled from.
    "finest_scale": floor(log2(sqrt(wh) / finest_scale + 1e-6)) (mmdetection).
    "canonical": level floor(log2(sqrt(wh) / 224)) + 4 of the FPN paper, clamped to the
    strides' levels, computed as tensorflow/tpu
    `models/official/detection/ops/spatial_transform_ops.py` and Model Garden
    `official/vision/ops/spatial_transform_ops.py` (`multilevel_crop_and_resize`) do.
    """

    roi_layer: RoILayerConfig = field(default_factory=RoILayerConfig)
    out_channels: int = 256
    featmap_strides: list[int] = field(default_factory=lambda: [8, 16, 32, 64])
    finest_scale: int = 56
    sample_num: int = 640
    level_assignment: str = "finest_scale"


@dataclass
class AssignerConfig:
    pos_iou_thr: float = 0.7
    neg_iou_thr: float = 0.3
    min_pos_iou: float = 0.3
    match_low_quality: bool = True


@dataclass
class SamplerConfig:
    num: int = 256
    pos_fraction: float = 0.5
    neg_pos_ub: float = -1
    add_gt_as_proposals: bool = False


@dataclass
class RPNTrainConfig:
    assigner: AssignerConfig = field(default_factory=AssignerConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)


@dataclass
class ProposalConfig:
    """Proposal generation: per level the best `nms_pre` anchors, decoded and clipped,
    NMS per level at `iou_threshold`, the best `max_per_img` over all levels.

    `size_filter`: drop boxes whose height or width is not above `min_bbox_size`
    (mmdetection; also drops boxes clipped to zero size). False: no size filter, as
    tensorflow/tpu `models/official/detection/ops/roi_ops.py` and Model Garden
    `official/vision/modeling/layers/roi_generator.py` do at a minimum size of 0.

    `nms_rule`: "combined": `tf.image.combined_non_max_suppression` (a box is suppressed
    by a better one whose IoU with it is > iou_threshold). "padded": the padded NMS of
    tensorflow/tpu `ops/nms.py` and Model Garden `official/vision/ops/nms.py`
    (`sorted_non_max_suppression_padded`, TF's `tf.image.non_max_suppression_padded`):
    boxes ranked by sigmoid score, suppressed at IoU >= iou_threshold, boxes with four
    zero coordinates never selected; a level keeps at most `max_per_img`, and the empty
    slots (zero boxes) are passed on as proposals as the originals pass them.

    `nms_implementation`: "tf_image" (TensorFlow's NMS ops) or "tiled" (`nms.tiled_nms`,
    the tiling of Model Garden's `sorted_non_max_suppression_padded`: the same proposals
    with static shapes, compiles with `jit_compile=True`).
    """

    nms_pre: int = 2000
    max_per_img: int = 2000
    iou_threshold: float = 0.7
    min_bbox_size: float = 0
    size_filter: bool = True
    nms_rule: str = "combined"
    nms_implementation: str = "tf_image"


@dataclass
class RCNNTrainConfig:
    """`mask_target_method`: "crop_and_resize" (`tf.image.crop_and_resize`, no XLA kernel)
    or "gather" (the same samples read by gathers; compiles with `jit_compile=True`)."""

    assigner: AssignerConfig = field(
        default_factory=lambda: AssignerConfig(
            pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5, match_low_quality=True
        )
    )
    sampler: SamplerConfig = field(
        default_factory=lambda: SamplerConfig(
            num=512, pos_fraction=0.25, neg_pos_ub=-1, add_gt_as_proposals=True
        )
    )
    mask_size: int = 28
    mask_target_method: str = "crop_and_resize"


@dataclass
class TrainCfg:
    rpn: RPNTrainConfig = field(default_factory=RPNTrainConfig)
    rpn_proposal: ProposalConfig = field(default_factory=ProposalConfig)
    rcnn: RCNNTrainConfig = field(default_factory=RCNNTrainConfig)


@dataclass
class RCNNTestConfig:
    """Detection: softmax, class-wise decode and clip, per-class NMS, the best
    `max_per_img` over all classes with a score above `score_thr`.

    `nms_rule`: "combined": `tf.image.combined_non_max_suppression` (suppressed at IoU >
    iou_threshold). "padded": per class the boxes above `score_thr` go through the padded
    NMS (`tf.image.non_max_suppression_padded`: suppressed at IoU >= iou_threshold, zero
    boxes never selected, at most `max_per_img` per class), then the best `max_per_img`
    over the classes, ties to the lower class; this is what tensorflow/tpu
    `models/official/detection/ops/postprocess_ops.py` (nms_version v1) and Model Garden
    `official/vision/modeling/layers/detection_generator.py` (nms_version v2) compute.

    `nms_implementation`: "tf_image" (TensorFlow's NMS ops) or "tiled" (`nms.tiled_nms`:
    the same detections with static shapes, compiles with `jit_compile=True`).
    """

    score_thr: float = 0.05
    iou_threshold: float = 0.5
    max_per_img: int = 100
    mask_thr_binary: float = 0.5
    nms_rule: str = "combined"
    nms_implementation: str = "tf_image"


@dataclass
class TestCfg:
    rpn: ProposalConfig = field(
        default_factory=lambda: ProposalConfig(nms_pre=1000, max_per_img=1000)
    )
    rcnn: RCNNTestConfig = field(default_factory=RCNNTestConfig)


# --------------------------------------------------------------------------- the config


@dataclass
class Config:
    """The whole configuration. Top-level keys follow the reference's YAML."""

    # experiment
    train_outputs: str = "runs"
    brief: str = "gpu-1"
    detector: str = "mask_rcnn"

    # model
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    bbox_head: BBoxHeadConfig = field(default_factory=BBoxHeadConfig)
    mask_head: MaskHeadConfig = field(default_factory=MaskHeadConfig)
    roi: RoIExtractorConfig = field(default_factory=RoIExtractorConfig)
    mask_roi: RoIExtractorConfig = field(
        default_factory=lambda: RoIExtractorConfig(
            roi_layer=RoILayerConfig(out_size=14, sample_num=2), sample_num=128
        )
    )
    train_cfg: TrainCfg = field(default_factory=TrainCfg)
    test_cfg: TestCfg = field(default_factory=TestCfg)

    # optimizer
    opt_type: str = "sgd"
    lr: float = 0.14
    min_lr: float = 1e-7
    momentum: float = 0.9
    weight_decay: float = 4e-5
    warmup_step: int = 4000
    warmup_ratio: float = 0.1
    lr_steps: list[int] = field(default_factory=lambda: [320, 340])
    lr_type: str = "multistep"
    grad_clip: float = 0.0

    # train
    num_gts: int = 100
    batch_size: int = 16
    accumulate_step: int = 1
    test_batch_size: int = 1
    loss_scale: float = 256.0
    epoch_size: int = 350
    steps_per_epoch: int = 0
    run_eval: int = 1
    eval_every: int = 1
    finetune: int = 0
    pre_trained: str = ""
    precision: str = "float32"
    #: XLA for the training step and inference: "auto" (decided per device kind by
    #: `maskspine.jit.resolve_jit_compile`), "true" or "false". Under "true" the parts take
    #: their compilable kernels (RoIAlign and mask targets by gathers, the tiled NMS).
    jit_compile: bool | str = "auto"
    #: "auto" (several workers, all GPUs or one device: `training.strategy`) or "tpu"
    #: (`tf.distribute.TPUStrategy` on the TPU named by `tpu`).
    strategy: str = "auto"
    #: The TPU of `strategy: tpu` (`TPUClusterResolver`'s name: a name, a grpc:// address,
    #: or "" for the one attached to this machine or named by the environment).
    tpu: str = ""
    seed: int = 0
    deterministic: bool = False
    #: TensorFlow's thread pools in `maskspine train` and `maskspine benchmark --what train`:
    #: threads per op and ops at once (0: TensorFlow's default, one per core);
    #: `intra_op_threads: auto` is 1 on a host of at most 2 cores and TensorFlow's default on
    #: a larger one (`maskspine.threads.resolve_intra_op_threads`); `maskspine.threads`.
    intra_op_threads: int | str = 0
    inter_op_threads: int = 0
    log_every: int = 100
    mlflow: bool = False

    # data
    num_parallel_workers: int = 6
    train_dataset: str = ""
    val_dataset: str = ""
    train_dataset_num: int = 0
    coco_classes: list[str] | str = field(default_factory=lambda: ["background"])
    num_classes: int = 1
    category_ids: list[int] = field(default_factory=list)

    # images
    img_width: int = 640
    img_height: int = 640
    divider: int = 64
    img_mean: list[float] = field(default_factory=lambda: [123.675, 116.28, 103.53])
    img_std: list[float] = field(default_factory=lambda: [58.395, 57.12, 57.375])
    to_rgb: int = 1
    keep_ratio: int = 1
    mask_crop_size: int = 112
    #: "bilinear": `tf.image.resize` (half-pixel centres). "bilinear_legacy": TF1's
    #: `tf.compat.v1.image.resize_images` bilinear (align_corners=False, no half-pixel
    #: centres), which tensorflow/tpu `models/official/detection/utils/input_utils.py`
    #: (`resize_and_crop_image`) uses.
    resize_method: str = "bilinear"
    #: What proposals and detections are clipped to. "image": the scaled image inside the
    #: input (image_info row 1). "input": the whole img_height x img_width input, as
    #: tensorflow/tpu (`modeling/maskrcnn_model.py`) and Model Garden
    #: (`official/vision/ops/preprocess_ops.py`: image_info row 1 is the desired size)
    #: clip.
    clip_boxes_to: str = "image"

    # augmentation
    flip_ratio: float = 0.5
    expand_ratio: float = 0.0
    aug_scale_min: float = 1.0
    aug_scale_max: float = 1.0

    # callbacks
    save_every: int = 100
    keep_checkpoint_max: int = 5
    keep_best_checkpoints_max: int = 5

    @property
    def classes_from_data(self) -> bool:
        """True when `coco_classes: from_data` (classes come from the training labels.json)."""
        return self.coco_classes == CLASSES_FROM_DATA

    @property
    def class_names(self) -> list[str]:
        """Class names without the background entry (index = 0-based label)."""
        if self.classes_from_data:
            raise ConfigError(
                "coco_classes is 'from_data': the class names are known only after the "
                "training data's labels.json has been read"
            )
        return list(self.coco_classes[1:])

    @property
    def output_category_ids(self) -> list[int]:
        """The category id of each class (label k is entry k - 1), the one rule for every
        output (the inference JSON, COCO results, the serving signature's classes):
        `category_ids` when the config lists them (training records the data set's),
        else 1..K in `coco_classes` order."""
        if self.category_ids:
            return list(self.category_ids)
        if self.classes_from_data:
            raise ConfigError(
                "coco_classes is 'from_data': the category ids are known only after the "
                "training data's labels.json has been read"
            )
        return list(range(1, self.num_classes))


def config_to_dict(config: Config) -> dict[str, Any]:
    """The config as a plain nested dict (YAML-ready)."""
    return dataclasses.asdict(config)


def flatten_config(config: Config) -> dict[str, Any]:
    """The config as {dotted key: value} (`backbone.arch`, `lr_steps`, ...)."""
    flat: dict[str, Any] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, Mapping):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(config_to_dict(config), "")
    return flat


#: (top-level key, low, low excluded, high or None, high excluded): numeric ranges checked
#: by `validate`, so that no value reaches Keras or TensorFlow to fail there.
_RANGES = (
    ("lr", 0.0, True, None, False),
    ("min_lr", 0.0, False, None, False),
    ("momentum", 0.0, False, 1.0, True),
    ("weight_decay", 0.0, False, None, False),
    ("warmup_step", 0, False, None, False),
    ("warmup_ratio", 0.0, False, 1.0, False),
    ("grad_clip", 0.0, False, None, False),
    ("batch_size", 1, False, None, False),
    ("accumulate_step", 1, False, None, False),
    ("test_batch_size", 1, False, None, False),
    ("loss_scale", 0.0, True, None, False),
    ("epoch_size", 1, False, None, False),
    ("steps_per_epoch", 0, False, None, False),
    ("eval_every", 1, False, None, False),
    ("save_every", 1, False, None, False),
    ("keep_checkpoint_max", 1, False, None, False),
    ("keep_best_checkpoints_max", 1, False, None, False),
    ("log_every", 1, False, None, False),
    ("intra_op_threads", 0, False, None, False),
    ("inter_op_threads", 0, False, None, False),
    ("num_gts", 1, False, None, False),
    ("flip_ratio", 0.0, False, 1.0, False),
    ("expand_ratio", 0.0, False, 1.0, False),
    ("aug_scale_min", 0.0, True, None, False),
    ("aug_scale_max", 0.0, True, None, False),
)


def validate(config: Config, *, source: str = "<config>") -> None:
    """The checks a type check cannot do: classes and their ids, every choice
    (`maskspine.choices.CONFIG_CHOICES`), numeric ranges, and the model's structural rules
    (`_check_model`). Run once, when a config loads.

    Raises:
        ConfigError: naming `source`, the key and the fix.
    """
    if isinstance(config.coco_classes, str):
        if config.coco_classes != CLASSES_FROM_DATA:
            raise ConfigError(
                f"{source}: coco_classes must be a list of class names (background first) "
                f"or '{CLASSES_FROM_DATA}', got {config.coco_classes!r}"
            )
    else:
        if len(config.coco_classes) != config.num_classes:
            raise ConfigError(
                f"{source}: num_classes is {config.num_classes} but coco_classes has "
                f"{len(config.coco_classes)} entries (background included); make them equal, "
                f"or set coco_classes: {CLASSES_FROM_DATA} to take the classes from the data"
            )
        if config.category_ids and len(config.category_ids) != config.num_classes - 1:
            raise ConfigError(
                f"{source}: category_ids has {len(config.category_ids)} entries but there are "
                f"{config.num_classes - 1} classes besides background; give one id per class"
            )
    if config.backbone.type != "spinenet":
        raise ConfigError(
            f"{source}: backbone.type must be 'spinenet', got {config.backbone.type!r}"
        )
    if config.backbone.arch not in SPINENET_ARCHS:
        close = [a for a in SPINENET_ARCHS if a.lower() == config.backbone.arch.lower()]
        close = close or difflib.get_close_matches(config.backbone.arch, SPINENET_ARCHS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"{source}: backbone.arch {config.backbone.arch!r} is not a SpineNet model id; "
            f"use one of {', '.join(SPINENET_ARCHS)}{hint}"
        )
    if isinstance(config.jit_compile, bool):  # YAML's true / false
        config.jit_compile = "true" if config.jit_compile else "false"
    for key, allowed in CONFIG_CHOICES.items():
        value = _lookup(config, key)
        if value not in allowed:
            raise ConfigError(f"{source}: {key} must be one of {', '.join(allowed)}, got {value!r}")
    for key in ("img_height", "img_width"):
        value = getattr(config, key)
        if value <= 0 or value % INPUT_SIZE_DIVISOR:
            raise ConfigError(
                f"{source}: {key}={value} must be a positive multiple of {INPUT_SIZE_DIVISOR} "
                f"(the stride of SpineNet's coarsest blocks, whatever backbone.max_level)"
            )
    if isinstance(config.intra_op_threads, str) and config.intra_op_threads != "auto":
        raise ConfigError(
            f"{source}: intra_op_threads must be a thread count (0: TensorFlow's default) or "
            f"'auto' (one thread per op on a host of at most 2 cores), got "
            f"{config.intra_op_threads!r}"
        )
    for key, low, low_open, high, high_open in _RANGES:
        value = getattr(config, key)
        if key == "intra_op_threads" and value == "auto":
            continue
        too_low = value <= low if low_open else value < low
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            left = "(" if low_open else "["
            right = ")" if high_open else "]"
            upper = "inf" if high is None else high
            raise ConfigError(
                f"{source}: {key} = {value!r} is out of range: it must be in "
                f"{left}{low}, {upper}{right}"
            )
    for key in ("img_mean", "img_std"):
        if len(getattr(config, key)) != 3:
            raise ConfigError(f"{source}: {key} needs 3 values (R, G, B)")
    _check_model(config, source)


def endpoint_channels(config: Config) -> int:
    """Channels of the backbone's output features: `backbone.endpoints_num_filters`, else
    the model id's (`modeling.spinenet_specs.SCALING_MAP`)."""
    if config.backbone.endpoints_num_filters is not None:
        return config.backbone.endpoints_num_filters
    return int(SCALING_MAP[config.backbone.arch]["endpoints_num_filters"])


def _check_model(config: Config, source: str) -> None:
    """The parts of the model fit together: channels, levels and strides, sizes."""
    if config.rpn.num_convs < 1:
        raise ConfigError(f"{source}: rpn.num_convs must be at least 1")
    if config.rpn.num_classes != 1:
        raise ConfigError(
            f"{source}: rpn.num_classes must be 1 (one sigmoid objectness per anchor)"
        )
    channels = endpoint_channels(config)
    for key, value in (
        ("rpn.in_channels", config.rpn.in_channels),
        ("bbox_head.in_channels", config.bbox_head.in_channels),
        ("mask_head.in_channels", config.mask_head.in_channels),
        ("roi.out_channels", config.roi.out_channels),
        ("mask_roi.out_channels", config.mask_roi.out_channels),
    ):
        if value != channels:
            raise ConfigError(
                f"{source}: {key} is {value} but SpineNet-{config.backbone.arch} gives "
                f"{channels}-channel features (backbone.endpoints_num_filters); set {key}: "
                f"{channels}"
            )
    levels = list(range(config.backbone.min_level, config.backbone.max_level + 1))
    strides = list(config.rpn.anchor_generator.strides)
    expected = [2**level for level in levels]
    if strides != expected:
        raise ConfigError(
            f"{source}: rpn.anchor_generator.strides {strides} must be {expected} "
            f"(one per backbone level {levels[0]}..{levels[-1]}: min_level..max_level)"
        )
    for key, extractor in (("roi", config.roi), ("mask_roi", config.mask_roi)):
        if extractor.roi_layer.type != "RoIAlign":
            raise ConfigError(
                f"{source}: {key}.roi_layer.type must be 'RoIAlign', got "
                f"{extractor.roi_layer.type!r}"
            )
        bad = [stride for stride in extractor.featmap_strides if stride not in expected]
        if bad:
            raise ConfigError(
                f"{source}: {key}.featmap_strides has {bad}, which the backbone does not give "
                f"(strides {expected})"
            )
    if config.bbox_head.roi_feat_size != config.roi.roi_layer.out_size:
        raise ConfigError(
            f"{source}: bbox_head.roi_feat_size ({config.bbox_head.roi_feat_size}) must equal "
            f"roi.roi_layer.out_size ({config.roi.roi_layer.out_size})"
        )
    if 2 * config.mask_roi.roi_layer.out_size != config.train_cfg.rcnn.mask_size:
        raise ConfigError(
            f"{source}: train_cfg.rcnn.mask_size ({config.train_cfg.rcnn.mask_size}) must be "
            f"twice mask_roi.roi_layer.out_size ({config.mask_roi.roi_layer.out_size}): the "
            "mask head upsamples 2x"
        )


# --------------------------------------------------------------------------- building


def _lookup(config: Config, key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _build(default: Any, data: Mapping[str, Any], *, source: str, prefix: str) -> Any:
    """`default` (a dataclass instance) with the fields named in `data` replaced; a nested
    section given in part keeps the parent's defaults for the keys it leaves out."""
    cls = type(default)
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{source}: {prefix.rstrip('.') or 'the top level'} must be a mapping, got {data!r}"
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full_key = f"{prefix}{key}"
        if key not in fields:
            candidates = [f"{prefix}{name}" for name in fields]
            if not prefix:
                candidates += sorted(MINDSPORE_ONLY_KEYS)
            close = difflib.get_close_matches(full_key, candidates, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{source}: unknown key {full_key!r}{hint}")
        current = getattr(default, key)
        if dataclasses.is_dataclass(current):
            kwargs[key] = _build(current, value, source=source, prefix=f"{full_key}.")
        else:
            kwargs[key] = _convert(hints[key], value, source=source, key=full_key)
    return dataclasses.replace(default, **kwargs)


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, *, source: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, source=source, key=key)
            except ConfigError:
                continue
        raise _type_error(source, key, value, tp)
    if origin is list:
        (item_type,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise _type_error(source, key, value, tp)
        return [
            _convert(item_type, item, source=source, key=f"{key}[{i}]")
            for i, item in enumerate(value)
        ]
    if tp is bool:
        # The reference writes flags both as True/False and as 0/1.
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise _type_error(source, key, value, tp)
    if tp is int:
        if isinstance(value, bool):
            raise _type_error(source, key, value, tp)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _type_error(source, key, value, tp)
    if tp is float:
        if isinstance(value, bool):
            raise _type_error(source, key, value, tp)
        if isinstance(value, (int, float)):
            return float(value)
        raise _type_error(source, key, value, tp)
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # YAML reads `arch: 49` as an int; the reference quotes it, users may not.
            return str(value)
        raise _type_error(source, key, value, tp)
    raise _type_error(source, key, value, tp)


def _type_error(source: str, key: str, value: Any, tp: Any) -> ConfigError:
    return ConfigError(f"{source}: {key} = {value!r} has the wrong type: expected {_type_name(tp)}")
