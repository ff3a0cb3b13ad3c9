"""Every choice a config key, an option of the command line or a part of the model offers, in
one place without TensorFlow: the config checks them once when it loads
(`maskspine.config.validate`), the CLI builds its option lists from them, and the model's
parts check the values they are given against the same tuples.

The first value of each tuple is the default. A choice that selects the behaviour of another
codebase names it in the docstring of the config key or part that takes it.
"""

from __future__ import annotations

# ------------------------------------------------------------------ the model

#: SpineNet model ids (`backbone.arch`).
SPINENET_ARCHS = ("49S", "49", "96", "143", "143L", "190")
#: norm_cfg.type: per-replica BatchNorm, or BatchNorm synchronised over replicas.
NORM_TYPES = ("BN", "SyncBN")
ACTIVATIONS = ("relu", "swish")
#: backbone.conv_padding: Keras "same", or tensorflow/tpu's symmetric padding.
CONV_PADDINGS = ("same", "symmetric")
#: backbone.downsample_pooling: Model Garden's repeated max-pools, or tensorflow/tpu's one.
DOWNSAMPLE_POOLINGS = ("repeated", "single")
#: rpn.anchor_generator.ratio_convention: what an anchor ratio r means.
RATIO_CONVENTIONS = ("height_over_width", "width_over_height")
#: bbox_coder.dhdw_clip: log-size deltas clipped on both sides, or from above only.
DHDW_CLIPS = ("both", "upper")
#: roi.level_assignment: mmdetection's finest_scale rule, or the FPN paper's.
LEVEL_ASSIGNMENTS = ("finest_scale", "canonical")
#: NMS rules of proposals and detections: TensorFlow's combined NMS, or the originals' padded.
NMS_RULES = ("combined", "padded")
#: How a rule runs: TensorFlow's NMS ops, or the tiled NMS with static shapes (XLA).
NMS_IMPLEMENTATIONS = ("tf_image", "tiled")
#: RoIAlign and mask targets: `tf.image.crop_and_resize`, or bilinear gathers (XLA).
ROI_METHODS = ("crop_and_resize", "gather")
#: clip_boxes_to: the scaled image inside the input, or the whole input.
CLIP_BOXES_TO = ("image", "input")
#: resize_method: `tf.image.resize` bilinear, or TF1's bilinear (tensorflow/tpu).
RESIZE_METHODS = ("bilinear", "bilinear_legacy")

# ------------------------------------------------------------------ computing

#: precision: the model's dtype policy (`maskspine.precision`).
PRECISIONS = ("float32", "bfloat16", "float16", "auto")
#: jit_compile: XLA for the training step and inference (`maskspine.jit`).
JIT_COMPILE = ("auto", "true", "false")
#: strategy: how training is distributed (`maskspine.training.strategy`).
STRATEGIES = ("auto", "tpu")

# ------------------------------------------------------------------ training

OPTIMIZERS = ("sgd", "adam", "adamw")
LR_TYPES = ("multistep", "cosine")

#: Config keys (dotted) -> their choices; `maskspine.config.validate` checks every one.
CONFIG_CHOICES: dict[str, tuple[str, ...]] = {
    "backbone.arch": SPINENET_ARCHS,
    "backbone.norm_cfg.type": NORM_TYPES,
    "rpn.norm_cfg.type": NORM_TYPES,
    "bbox_head.norm_cfg.type": NORM_TYPES,
    "mask_head.norm_cfg.type": NORM_TYPES,
    "backbone.conv_padding": CONV_PADDINGS,
    "backbone.downsample_pooling": DOWNSAMPLE_POOLINGS,
    "backbone.activation": ACTIVATIONS,
    "rpn.activation": ACTIVATIONS,
    "bbox_head.activation": ACTIVATIONS,
    "mask_head.activation": ACTIVATIONS,
    "rpn.anchor_generator.ratio_convention": RATIO_CONVENTIONS,
    "rpn.bbox_coder.dhdw_clip": DHDW_CLIPS,
    "bbox_head.bbox_coder.dhdw_clip": DHDW_CLIPS,
    "roi.level_assignment": LEVEL_ASSIGNMENTS,
    "mask_roi.level_assignment": LEVEL_ASSIGNMENTS,
    "roi.roi_layer.method": ROI_METHODS,
    "mask_roi.roi_layer.method": ROI_METHODS,
    "train_cfg.rcnn.mask_target_method": ROI_METHODS,
    "train_cfg.rpn_proposal.nms_rule": NMS_RULES,
    "test_cfg.rpn.nms_rule": NMS_RULES,
    "test_cfg.rcnn.nms_rule": NMS_RULES,
    "train_cfg.rpn_proposal.nms_implementation": NMS_IMPLEMENTATIONS,
    "test_cfg.rpn.nms_implementation": NMS_IMPLEMENTATIONS,
    "test_cfg.rcnn.nms_implementation": NMS_IMPLEMENTATIONS,
    "clip_boxes_to": CLIP_BOXES_TO,
    "resize_method": RESIZE_METHODS,
    "precision": PRECISIONS,
    "jit_compile": JIT_COMPILE,
    "strategy": STRATEGIES,
    "opt_type": OPTIMIZERS,
    "lr_type": LR_TYPES,
}


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    """`value` if it is one of `allowed`; a ValueError naming `name` and the choices else."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value
