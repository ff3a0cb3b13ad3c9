"""Mask R-CNN losses with mmdetection's conventions (the reference's behaviour).

Every loss is a float32 scalar already multiplied by its loss weight. Logits and
deltas are cast to float32 first, so the losses are the same under mixed
precision. Normalisers are sums over the whole batch (mmdetection's
`avg_factor` over all images), never per-image means; under `tf.distribute`
they are per replica.

    losses = rpn_losses(objectness_logits, box_deltas, rpn_targets, beta=1 / 9,
                        cls_weight=1.0, box_weight=1.0)
"""

from __future__ import annotations

from collections.abc import Mapping

import keras
import tensorflow as tf

from maskspine.modeling.part import Part

__all__ = ["mask_loss", "rcnn_losses", "rpn_losses", "smooth_l1"]


def smooth_l1(diff: tf.Tensor, beta: float) -> tf.Tensor:
    """Elementwise smooth L1 (Huber / beta) of `diff`, mmdetection's `smooth_l1_loss`.

    0.5 * d**2 / beta where |d| < beta, |d| - 0.5 * beta elsewhere; beta = 0 is L1.

    Args:
        diff: prediction - target, any shape, float.
        beta: the transition point (in the units of `diff`), >= 0.

    Returns:
        Same shape as `diff`, float32.
    """
    beta = float(beta)
    if beta < 0:
        raise ValueError(f"smooth L1 beta must be >= 0, got {beta}.")
    abs_diff = tf.abs(tf.cast(diff, tf.float32))
    if beta == 0.0:
        return abs_diff
    return tf.where(abs_diff < beta, 0.5 * tf.square(abs_diff) / beta, abs_diff - 0.5 * beta)


def rpn_losses(
    objectness_logits: tf.Tensor,
    box_deltas: tf.Tensor,
    targets: Mapping[str, tf.Tensor],
    *,
    beta: float,
    cls_weight: float = 1.0,
    box_weight: float = 1.0,
) -> dict[str, tf.Tensor]:
    """RPN objectness and box losses.

    Both are normalised by the number of sampled anchors in the batch (sum of
    `objectness_weight`, at least 1), mmdetection's `num_total_samples`.

    Args:
        objectness_logits: [B, A] float logits, all levels concatenated.
        box_deltas: [B, A, 4] float predicted deltas (the box coder's encoding).
        targets: `targets.rpn_targets` output: `objectness` [B, A] (1 positive, 0
            negative), `objectness_weight` [B, A] (1 for sampled anchors),
            `box_deltas` [B, A, 4] and `box_weight` [B, A] (1 for sampled positives).
        beta: smooth L1 beta of the box loss (the reference's 1/9).
        cls_weight, box_weight: loss weights.

    Returns:
        {"rpn_cls_loss": float32 scalar, "rpn_box_loss": float32 scalar}.
    """
    logits = tf.cast(objectness_logits, tf.float32)
    labels = tf.cast(targets["objectness"], tf.float32)
    sample_weight = tf.cast(targets["objectness_weight"], tf.float32)
    positive_weight = tf.cast(targets["box_weight"], tf.float32)
    num_samples = tf.maximum(tf.reduce_sum(sample_weight), 1.0)

    cross_entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
    cls_loss = tf.reduce_sum(cross_entropy * sample_weight) / num_samples

    box_loss = _box_loss(box_deltas, targets["box_deltas"], positive_weight, beta, num_samples)
    return {
        "rpn_cls_loss": _scale(cls_weight) * cls_loss,
        "rpn_box_loss": _scale(box_weight) * box_loss,
    }


def rcnn_losses(
    class_logits: tf.Tensor,
    box_deltas: tf.Tensor,
    class_targets: tf.Tensor,
    box_targets: tf.Tensor,
    positive_weight: tf.Tensor,
    roi_valid: tf.Tensor,
    *,
    beta: float,
    cls_weight: float = 1.0,
    box_weight: float = 1.0,
) -> dict[str, tf.Tensor]:
    """Box head classification and box regression losses.

    The classification loss is the softmax cross-entropy averaged over the valid
    sampled RoIs; the box loss is smooth L1 of the target class's deltas summed
    over the 4 coordinates and the positives, divided by the same number of valid
    sampled RoIs (mmdetection's `avg_factor=bbox_targets.size(0)`). Both normalisers
    are at least 1.

    Args:
        class_logits: [B, S, num_classes] float logits, class 0 = background.
        box_deltas: [B, S, num_classes, 4] class-specific, or [B, S, 1, 4] or [B, S, 4]
            class-agnostic predicted deltas.
        class_targets: [B, S] int, 0 for background, 1..num_classes-1 for positives;
            any value where `roi_valid` is False.
        box_targets: [B, S, 4] float target deltas.
        positive_weight: [B, S] float, 1 for positives (`rcnn_targets`' `box_weight`);
            passed positionally, since `box_weight` is the loss weight.
        roi_valid: [B, S] bool or 0/1, False for padding RoIs.
        beta: smooth L1 beta (the reference's 1.0).
        cls_weight, box_weight: loss weights.

    Returns:
        {"rcnn_cls_loss": float32 scalar, "rcnn_box_loss": float32 scalar}.
    """
    logits = tf.cast(class_logits, tf.float32)
    valid = tf.cast(roi_valid, tf.float32)
    labels = tf.where(valid > 0, tf.cast(class_targets, tf.int32), 0)
    num_rois = tf.maximum(tf.reduce_sum(valid), 1.0)

    cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    cls_loss = tf.reduce_sum(cross_entropy * valid) / num_rois

    deltas = tf.cast(box_deltas, tf.float32)
    if deltas.shape.rank == 4 and deltas.shape[2] == 1:  # class-agnostic, [B, S, 1, 4]
        deltas = deltas[:, :, 0]
    elif deltas.shape.rank == 4:
        deltas = tf.gather(deltas, labels, axis=2, batch_dims=2)  # [B, S, 4]
    elif deltas.shape.rank != 3:
        raise ValueError(
            "box_deltas must be [B, S, num_classes, 4] (class-specific) or [B, S, 4] "
            f"(class-agnostic), got shape {deltas.shape}."
        )
    weight = tf.cast(positive_weight, tf.float32) * valid
    box_loss = _box_loss(deltas, box_targets, weight, beta, num_rois)
    return {
        "rcnn_cls_loss": _scale(cls_weight) * cls_loss,
        "rcnn_box_loss": _scale(box_weight) * box_loss,
    }


def mask_loss(
    mask_logits: tf.Tensor,
    mask_targets: tf.Tensor,
    positive: tf.Tensor,
    *,
    weight: float = 1.0,
) -> dict[str, tf.Tensor]:
    """Per-pixel binary cross-entropy of each positive RoI's mask for its class.

    Averaged over all pixels of all positives in the batch (mmdetection's
    `mask_cross_entropy`, reduction 'mean' over the positives); 0 when there are none.

    Args:
        mask_logits: [B, K, M, M] float, each RoI's logits for its target class (the mask
            head computes only that channel).
        mask_targets: [B, K, M, M] float in [0, 1] (or uint8 / bool 0-1), each RoI's
            target mask in its box.
        positive: [B, K] bool, the RoIs that contribute.
        weight: loss weight.

    Returns:
        {"mask_loss": float32 scalar}.
    """
    positive = tf.cast(positive, tf.bool)
    class_logits = tf.cast(mask_logits, tf.float32)
    targets = tf.cast(mask_targets, tf.float32)
    cross_entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=class_logits)
    pixel_weight = tf.cast(positive, tf.float32)[:, :, None, None]
    pixels_per_mask = tf.cast(tf.reduce_prod(tf.shape(class_logits)[2:]), tf.float32)
    num_pixels = tf.maximum(tf.reduce_sum(pixel_weight) * pixels_per_mask, 1.0)
    loss = tf.reduce_sum(cross_entropy * pixel_weight) / num_pixels
    return {"mask_loss": _scale(weight) * loss}


def _box_loss(deltas, targets, weight, beta: float, normaliser) -> tf.Tensor:
    """Smooth L1 of [..., 4] deltas against their targets, weighted per box ([...]) and
    summed over the batch, divided by `normaliser`."""
    diff = tf.cast(deltas, tf.float32) - tf.cast(targets, tf.float32)
    return tf.reduce_sum(smooth_l1(diff, beta) * weight[..., None]) / normaliser


def _scale(loss_weight: float | tf.Tensor) -> tf.Tensor:
    return tf.cast(loss_weight, tf.float32)


@keras.saving.register_keras_serializable(package="maskspine")
class MaskRCNNLoss(Part):
    """The weighted losses of Mask R-CNN (mmdetection's conventions, the reference's):
    `rpn_losses`, `rcnn_losses` and `mask_loss` with the config's betas and weights.

    Args:
        rpn_beta, rpn_cls_weight, rpn_box_weight: rpn.loss_bbox.beta, rpn.loss_cls /
            loss_bbox loss_weight.
        rcnn_beta, rcnn_cls_weight, rcnn_box_weight: the same of bbox_head.
        mask_weight: mask_head.loss_mask.loss_weight.
    """

    def __init__(
        self,
        *,
        rpn_beta: float,
        rpn_cls_weight: float = 1.0,
        rpn_box_weight: float = 1.0,
        rcnn_beta: float,
        rcnn_cls_weight: float = 1.0,
        rcnn_box_weight: float = 1.0,
        mask_weight: float = 1.0,
        **kwargs,
    ) -> None:
        self.weights_of = {
            "rpn": {"beta": rpn_beta, "cls_weight": rpn_cls_weight, "box_weight": rpn_box_weight},
            "rcnn": {
                "beta": rcnn_beta,
                "cls_weight": rcnn_cls_weight,
                "box_weight": rcnn_box_weight,
            },
            "mask": {"weight": mask_weight},
        }
        super().__init__(
            {
                "rpn_beta": rpn_beta,
                "rpn_cls_weight": rpn_cls_weight,
                "rpn_box_weight": rpn_box_weight,
                "rcnn_beta": rcnn_beta,
                "rcnn_cls_weight": rcnn_cls_weight,
                "rcnn_box_weight": rcnn_box_weight,
                "mask_weight": mask_weight,
            },
            **kwargs,
        )

    def rpn(self, objectness_logits, box_deltas, targets) -> dict[str, tf.Tensor]:
        """`rpn_losses` of [B, A] logits and [B, A, 4] deltas against `AnchorLabeler`'s."""
        return rpn_losses(objectness_logits, box_deltas, targets, **self.weights_of["rpn"])

    def rcnn(self, class_logits, box_deltas, rcnn) -> dict[str, tf.Tensor]:
        """`rcnn_losses` of the box head's outputs against `RoISampler`'s targets."""
        return rcnn_losses(
            class_logits,
            box_deltas,
            rcnn["class_targets"],
            rcnn["box_deltas"],
            rcnn["box_weight"],
            rcnn["roi_valid"],
            **self.weights_of["rcnn"],
        )

    def mask(self, mask_logits, masks) -> dict[str, tf.Tensor]:
        """`mask_loss` of the mask head's logits against `MaskSampler`'s targets."""
        return mask_loss(
            mask_logits, masks["targets"], masks["positive"], **self.weights_of["mask"]
        )

    def call(self, losses: dict[str, tf.Tensor]) -> tf.Tensor:
        """The total: the sum of the (weighted) losses, float32."""
        return tf.add_n([tf.cast(value, tf.float32) for value in losses.values()])
