"""Inference post-processing of the box head: class-wise decode and combined NMS."""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from maskspine.modeling import box_ops


def detect_boxes(
    class_logits: tf.Tensor,
    box_deltas: tf.Tensor,
    proposals: tf.Tensor,
    proposal_valid: tf.Tensor,
    image_shape: tf.Tensor,
    *,
    means: Sequence[float],
    stds: Sequence[float],
    score_thr: float,
    iou_threshold: float,
    max_per_img: int,
) -> dict[str, tf.Tensor]:
    """Final detections from the box head's outputs.

    Args:
        class_logits: [B, N, C] with C classes including background (index 0).
        box_deltas: [B, N, C, 4] class-specific or [B, N, 1, 4] class-agnostic deltas,
            encoded with the R-CNN `means` / `stds` relative to the proposals.
        proposals: [B, N, 4] yxyx input pixels.
        proposal_valid: [B, N] bool; invalid (padding) proposals never become detections.
        image_shape: [B, 2] (height, width) the boxes are clipped to.
        score_thr, iou_threshold, max_per_img: per-class NMS settings; at most
            `max_per_img` detections per image over all classes.

    Returns:
        detection_boxes [B, D, 4] yxyx input pixels, detection_scores [B, D],
        detection_classes [B, D] int32 (contiguous, 1-based), num_detections [B] int32,
        with D = max_per_img and zeros after `num_detections`.
    """
    scores = tf.nn.softmax(tf.cast(class_logits, tf.float32), axis=-1)[:, :, 1:]
    scores = scores * tf.cast(proposal_valid, tf.float32)[:, :, None]
    box_deltas = tf.cast(box_deltas, tf.float32)
    if box_deltas.shape[2] != 1:
        box_deltas = box_deltas[:, :, 1:]
    boxes = box_ops.decode_boxes(
        box_deltas, tf.cast(proposals, tf.float32)[:, :, None, :], means, stds
    )
    image_shape = tf.cast(image_shape, tf.float32)[:, None, :]  # [B, 1, 2] for [B, N, K, 4]
    boxes = box_ops.clip_boxes(boxes, image_shape)
    nmsed_boxes, nmsed_scores, nmsed_classes, num_detections = (
        tf.image.combined_non_max_suppression(
            boxes,
            scores,
            max_output_size_per_class=max_per_img,
            max_total_size=max_per_img,
            iou_threshold=iou_threshold,
            score_threshold=score_thr,
            pad_per_class=False,
            clip_boxes=False,
        )
    )
    valid = tf.range(max_per_img)[None, :] < num_detections[:, None]
    classes = tf.where(valid, tf.cast(nmsed_classes, tf.int32) + 1, 0)
    return {
        "detection_boxes": nmsed_boxes,
        "detection_scores": nmsed_scores,
        "detection_classes": classes,
        "num_detections": tf.cast(num_detections, tf.int32),
    }
