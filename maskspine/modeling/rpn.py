"""Region proposal network: the shared head and batched proposal generation.

The head runs one or more 3x3 convs (shared across levels; optionally each followed by a
BatchNorm of its own per level) then 1x1 convs for the sigmoid objectness of each anchor
and its box deltas. Proposal generation follows the reference (mmdetection's RPN): per
level the top `nms_pre` anchors by score are decoded, clipped to the image and filtered
by size; NMS runs per level, and the `max_per_img` best boxes over all levels are kept.
Everything is batched with static shapes: one `tf.image.combined_non_max_suppression`
call treats the levels as its "classes". The "padded" NMS rule computes what
tensorflow/tpu and Model Garden compute instead (`generate_proposals`). With
`nms_implementation="tiled"` either rule runs on `nms.tiled_nms` and compiles with XLA.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf
from keras import layers

from maskspine.modeling import box_ops
from maskspine.modeling.layers import BatchNormalization
from maskspine.modeling.nms import NMS_RULES, combined_nms, padded_nms
from maskspine.modeling.part import Part


@keras.saving.register_keras_serializable(package="maskspine")
class RPNHead(layers.Layer):
    """Shared RPN head.

    Call: features {"P3": [B, H3, W3, C], ...} -> (objectness_logits {level: [B, H*W*A]},
    box_deltas {level: [B, H*W*A, 4]}), flattened in (y, x, anchor) order to match
    `anchors.generate_anchors`. Levels are ints (3..7).

    `num_convs` shared 3x3 convs (with bias) each followed by `activation`; with
    `norm_per_level` each conv is followed by a BatchNorm of its own per level in `levels`
    before the activation (tensorflow/tpu and Model Garden RPN heads).
    """

    def __init__(
        self,
        num_anchors: int,
        feat_channels: int = 256,
        num_convs: int = 1,
        norm_per_level: bool = False,
        levels: tuple[int, ...] | list[int] = (),
        activation: str = "relu",
        norm_momentum: float = 0.99,
        norm_epsilon: float = 1e-3,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_anchors = num_anchors
        self.feat_channels = feat_channels
        self.num_convs = num_convs
        self.norm_per_level = norm_per_level
        self.levels = [int(level) for level in levels]
        self.activation = activation
        self.norm_momentum = norm_momentum
        self.norm_epsilon = norm_epsilon
        if norm_per_level and not self.levels:
            raise ValueError("RPNHead: norm_per_level needs the levels (e.g. [3, 4, 5, 6, 7])")
        init = keras.initializers.RandomNormal(stddev=0.01)
        convs = [
            layers.Conv2D(
                feat_channels,
                3,
                padding="same",
                activation=None if norm_per_level else activation,
                kernel_initializer=init,
                name="rpn_conv" if i == 0 else f"rpn_conv{i + 1}",
            )
            for i in range(num_convs)
        ]
        # The first conv keeps its own attribute: the weights files of one-conv heads
        # address it as `rpn_head/conv`.
        self.conv, self.extra_convs = convs[0], convs[1:]
        # norms[level][i]: the BatchNorm after conv i at that level.
        self.norms = {
            level: [
                BatchNormalization(
                    momentum=norm_momentum,
                    epsilon=norm_epsilon,
                    name=f"rpn_bn_p{level}" if i == 0 else f"rpn_bn{i + 1}_p{level}",
                )
                for i in range(num_convs)
            ]
            for level in (self.levels if norm_per_level else [])
        }
        self.objectness = layers.Conv2D(
            num_anchors, 1, kernel_initializer=init, name="rpn_objectness"
        )
        self.deltas = layers.Conv2D(
            4 * num_anchors, 1, kernel_initializer=init, name="rpn_box_deltas"
        )

    def build(self, input_shape):
        """input_shape: one level's [B, H, W, C] (all levels share the weights)."""
        shape = tuple(input_shape)
        for conv in (self.conv, *self.extra_convs):
            conv.build(shape)
            shape = (*shape[:-1], self.feat_channels)
        for norms in self.norms.values():
            for norm in norms:
                norm.build(shape)
        self.objectness.build(shape)
        self.deltas.build(shape)
        self.built = True

    def call(self, features: Mapping[str, tf.Tensor], training=None):
        objectness, deltas = {}, {}
        for key, feature in features.items():
            level = int(str(key).lstrip("P"))
            x = feature
            for i, conv in enumerate((self.conv, *self.extra_convs)):
                x = conv(x)
                if self.norm_per_level:
                    x = self.norms[level][i](x, training=training)
                    x = keras.activations.get(self.activation)(x)
            # [B, H, W, A] -> [B, H * W * A]: the count per image stays static where H and W
            # are (with the batch size unknown, as in an export for any batch size, a
            # reshape to [B, -1] loses it, and the tiled NMS needs it).
            height, width = x.shape[1], x.shape[2]
            if height is not None and width is not None:
                shape = [-1, height * width * self.num_anchors]
            else:
                shape = [tf.shape(x)[0], -1]
            objectness[level] = tf.reshape(self.objectness(x), shape)
            deltas[level] = tf.reshape(self.deltas(x), [*shape, 4])
        return objectness, deltas

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "num_anchors": self.num_anchors,
            "feat_channels": self.feat_channels,
            "num_convs": self.num_convs,
            "norm_per_level": self.norm_per_level,
            "levels": self.levels,
            "activation": self.activation,
            "norm_momentum": self.norm_momentum,
            "norm_epsilon": self.norm_epsilon,
        }


def generate_proposals(
    objectness_logits: Mapping[int, tf.Tensor],
    box_deltas: Mapping[int, tf.Tensor],
    anchors: Mapping[int, tf.Tensor],
    image_shape: tf.Tensor,
    *,
    nms_pre: int,
    max_per_img: int,
    iou_threshold: float,
    min_bbox_size: float,
    means: Sequence[float],
    stds: Sequence[float],
    legacy_plus_one: bool = False,
    dhdw_clip: str = "both",
    size_filter: bool = True,
    nms_rule: str = "combined",
    nms_implementation: str = "tf_image",
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Turns RPN outputs into proposals.

    Args:
        objectness_logits: {level: [B, N_l]} logits.
        box_deltas: {level: [B, N_l, 4]} encoded with `means` / `stds`.
        anchors: {level: [N_l, 4]} yxyx input pixels.
        image_shape: [B, 2] (height, width) of the image inside the padded input;
            proposals are clipped to it.
        nms_pre: anchors kept per level (by score) before NMS.
        max_per_img: proposals kept per image after NMS.
        iou_threshold: NMS threshold (per level).
        min_bbox_size: with `size_filter`, boxes whose height or width is not above this
            are dropped.
        means, stds, legacy_plus_one, dhdw_clip: the RPN box coder (`box_ops.decode_boxes`).
        size_filter: apply the `min_bbox_size` filter (False: none, as the originals at a
            minimum size of 0).
        nms_rule: "combined" (`tf.image.combined_non_max_suppression` over the levels as
            classes) or "padded" (per level the padded NMS of `nms.padded_nms` on the best
            `nms_pre` by sigmoid score, at most `max_per_img` per level, then the best
            `max_per_img` of all levels by score: tensorflow/tpu `ops/roi_ops.py`, Model
            Garden `roi_generator.py`).
        nms_implementation: "tf_image" (TensorFlow's NMS ops) or "tiled" (`nms.tiled_nms`:
            the same kept boxes with static shapes, compiles with `jit_compile=True`; the
            numbers of anchors per level must be static). See `nms.combined_nms` for ties.

    Returns:
        proposals [B, max_per_img, 4] yxyx input pixels (zeros where padded),
        scores [B, max_per_img] sigmoid objectness (padding: 0 for "combined", -1 for
        "padded"), valid [B, max_per_img] bool: False for padding with "combined"; all
        True with "padded", whose padding (zero boxes) goes on to the heads as the
        originals send it.
    """
    if nms_rule not in NMS_RULES:
        raise ValueError(f"nms_rule must be one of {NMS_RULES}, got {nms_rule!r}")
    levels = sorted(objectness_logits)
    all_boxes, all_scores = [], []
    image_shape = tf.cast(image_shape, tf.float32)
    coder = dict(legacy_plus_one=legacy_plus_one, dhdw_clip=dhdw_clip)
    for index, level in enumerate(levels):
        logits = tf.cast(objectness_logits[level], tf.float32)
        count = logits.shape[1] if logits.shape[1] is not None else tf.shape(logits)[1]
        k = min(nms_pre, count) if isinstance(count, int) else tf.minimum(nms_pre, count)
        if nms_rule == "padded":
            # The originals rank by the sigmoid score: saturated scores tie, ties go to the
            # lower anchor index.
            top_scores, top_index = tf.math.top_k(tf.sigmoid(logits), k=k, sorted=True)
        else:
            top_logits, top_index = tf.math.top_k(logits, k=k, sorted=False)
            top_scores = tf.sigmoid(top_logits)
        deltas = tf.gather(tf.cast(box_deltas[level], tf.float32), top_index, batch_dims=1)
        level_anchors = tf.gather(tf.cast(anchors[level], tf.float32), top_index)
        boxes = box_ops.decode_boxes(deltas, level_anchors, means, stds, **coder)
        boxes = box_ops.clip_boxes(boxes, image_shape, legacy_plus_one=legacy_plus_one)
        keep = tf.ones_like(top_scores, tf.bool)
        if size_filter:
            heights = boxes[..., 2] - boxes[..., 0]
            widths = boxes[..., 3] - boxes[..., 1]
            keep = (heights > min_bbox_size) & (widths > min_bbox_size)
        if nms_rule == "padded":
            # A filtered box becomes a zero "dot", which the padded NMS never selects.
            boxes = tf.where(keep[..., None], boxes, 0.0)
            kept = min(max_per_img, count) if isinstance(count, int) else max_per_img
            indices, num_valid = padded_nms(
                boxes, top_scores, kept, iou_threshold, implementation=nms_implementation
            )
            slot_valid = tf.range(kept)[None, :] < num_valid[:, None]
            all_boxes.append(
                tf.where(slot_valid[..., None], tf.gather(boxes, indices, batch_dims=1), 0.0)
            )
            all_scores.append(
                tf.where(slot_valid, tf.gather(top_scores, indices, batch_dims=1), -1.0)
            )
            continue
        scores = tf.where(keep, top_scores, 0.0)
        # One score column per level: combined NMS then suppresses within a level only.
        all_scores.append(scores[..., None] * tf.one_hot(index, len(levels), dtype=tf.float32))
        all_boxes.append(boxes)
    boxes = tf.concat(all_boxes, axis=1)
    scores = tf.concat(all_scores, axis=1)
    if nms_rule == "padded":
        return _best_over_levels(boxes, scores, max_per_img)
    nmsed_boxes, nmsed_scores, _, num_valid = combined_nms(
        boxes[:, :, None, :],
        scores,
        max_output_size_per_class=max_per_img,
        max_total_size=max_per_img,
        iou_threshold=iou_threshold,
        score_threshold=_MIN_SCORE,
        implementation=nms_implementation,
    )
    valid = tf.range(max_per_img)[None, :] < num_valid[:, None]
    return (
        tf.stop_gradient(nmsed_boxes),
        tf.stop_gradient(nmsed_scores),
        valid,
    )


def _best_over_levels(
    boxes: tf.Tensor, scores: tf.Tensor, max_per_img: int
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The `max_per_img` best of all levels' NMS outputs by score (ties to the lower
    index), zero-padded when the levels hold fewer; all slots valid ("padded" rule)."""
    total = boxes.shape[1]
    k = min(max_per_img, total)
    best_scores, best = tf.math.top_k(scores, k=k, sorted=True)
    best_boxes = tf.gather(boxes, best, batch_dims=1)
    if k < max_per_img:
        best_boxes = tf.pad(best_boxes, [[0, 0], [0, max_per_img - k], [0, 0]])
        best_scores = tf.pad(best_scores, [[0, 0], [0, max_per_img - k]], constant_values=-1.0)
    valid = tf.ones_like(best_scores, tf.bool)
    return tf.stop_gradient(best_boxes), tf.stop_gradient(best_scores), valid


# Scores at or below this are padding (the other levels' columns, filtered boxes).
_MIN_SCORE = 1e-8


@keras.saving.register_keras_serializable(package="maskspine")
class ProposalGenerator(Part):
    """The RPN's outputs -> proposals (`generate_proposals`), with one setting for training
    and one for inference.

    Args:
        train, test: `generate_proposals`' selection and NMS arguments for each mode:
            `nms_pre`, `max_per_img`, `iou_threshold`, `min_bbox_size`, `size_filter`,
            `nms_rule` ("combined", the reference's mmdetection rule; "padded", tensorflow/tpu
            `models/official/detection/ops/roi_ops.py` and Model Garden
            `official/vision/modeling/layers/roi_generator.py`) and `nms_implementation`
            ("tf_image", or "tiled" for XLA).
        box_coder: the RPN box coder: `means`, `stds`, `legacy_plus_one`, `dhdw_clip`.

    Call: (objectness {level: [B, N_l]}, deltas {level: [B, N_l, 4]}, anchors {level:
    [N_l, 4]}, image_shape [B, 2], training) -> (proposals [B, P, 4] yxyx input pixels,
    scores [B, P], valid [B, P] bool), P the mode's `max_per_img`.
    """

    def __init__(
        self, train: dict[str, Any], test: dict[str, Any], box_coder: dict[str, Any], **kwargs
    ) -> None:
        super().__init__({"train": train, "test": test, "box_coder": box_coder}, **kwargs)
        self.settings = {True: dict(train), False: dict(test)}
        self.box_coder = dict(box_coder)

    def call(self, objectness, deltas, anchors, image_shape, training=False):
        return generate_proposals(
            objectness,
            deltas,
            anchors,
            image_shape,
            **self.settings[bool(training)],
            **self.box_coder,
        )
