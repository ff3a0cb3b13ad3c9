"""Inference post-processing of the box head: class-wise decode and per-class NMS (TensorFlow's
NMS ops, or with `nms_implementation="tiled"` `nms.tiled_nms`, which compiles with XLA)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from maskspine.modeling import box_ops
from maskspine.modeling.nms import NMS_RULES, combined_nms, padded_nms, sort_candidates
from maskspine.modeling.part import Part


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
    legacy_plus_one: bool = False,
    dhdw_clip: str = "both",
    nms_rule: str = "combined",
    nms_implementation: str = "tf_image",
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
        legacy_plus_one, dhdw_clip: the box coder's conventions (`box_ops.decode_boxes`,
            `box_ops.clip_boxes`).
        nms_rule: "combined" (`tf.image.combined_non_max_suppression`) or "padded" (per
            class `nms.padded_nms` of the boxes scoring above `score_thr`, then the best
            `max_per_img` over the classes, ties to the lower class: tensorflow/tpu
            `ops/postprocess_ops.py`, Model Garden `detection_generator.py`).
        nms_implementation: "tf_image" (TensorFlow's NMS ops; the padded rule runs on the
            longest above-threshold prefix, a run-time length) or "tiled" (`nms.tiled_nms`
            on all N boxes per class with static shapes, its loop ending after the last
            tile holding a box above `score_thr`; compiles with `jit_compile=True`; N static).
            Same detections; see `nms.combined_nms` for equal scores.

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
        box_deltas,
        tf.cast(proposals, tf.float32)[:, :, None, :],
        means,
        stds,
        legacy_plus_one=legacy_plus_one,
        dhdw_clip=dhdw_clip,
    )
    image_shape = tf.cast(image_shape, tf.float32)[:, None, :]  # [B, 1, 2] for [B, N, K, 4]
    boxes = box_ops.clip_boxes(boxes, image_shape, legacy_plus_one=legacy_plus_one)
    if nms_rule not in NMS_RULES:
        raise ValueError(f"nms_rule must be one of {NMS_RULES}, got {nms_rule!r}")
    if nms_rule == "padded":
        return _padded_per_class_nms(
            boxes, scores, score_thr, iou_threshold, max_per_img, nms_implementation
        )
    nmsed_boxes, nmsed_scores, nmsed_classes, num_detections = combined_nms(
        boxes,
        scores,
        max_output_size_per_class=max_per_img,
        max_total_size=max_per_img,
        iou_threshold=iou_threshold,
        score_threshold=score_thr,
        implementation=nms_implementation,
    )
    valid = tf.range(max_per_img)[None, :] < num_detections[:, None]
    classes = tf.where(valid, nmsed_classes + 1, 0)
    return {
        "detection_boxes": nmsed_boxes,
        "detection_scores": nmsed_scores,
        "detection_classes": classes,
        "num_detections": tf.cast(num_detections, tf.int32),
    }


def _padded_per_class_nms(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    score_thr: float,
    iou_threshold: float,
    max_per_img: int,
    implementation: str,
) -> dict[str, tf.Tensor]:
    """The "padded" detection rule on decoded, clipped boxes [B, N, K, 4] (K = 1 or C) and
    class scores [B, N, C] without background (see `detect_boxes`)."""
    batch = tf.shape(scores)[0]
    num_boxes, num_classes = scores.shape[1], scores.shape[2]
    per_class_scores = tf.transpose(scores, [0, 2, 1])  # [B, C, N]
    per_class_boxes = tf.transpose(
        tf.broadcast_to(boxes, [batch, num_boxes, num_classes, 4]), [0, 2, 1, 3]
    )  # [B, C, N, 4]
    # Per class: sorted by score (ties to the lower index), boxes at or below the score
    # threshold turned into zero "dots" that the padded NMS never selects.
    if implementation == "tiled":
        sorted_scores, order = sort_candidates(per_class_scores, score_thr)
    else:
        sorted_scores, order = tf.math.top_k(per_class_scores, k=num_boxes, sorted=True)
    # Only boxes above the threshold can be selected or suppress: the NMS runs on the
    # longest such prefix over the classes (the rest of each row would be dots).
    above = sorted_scores > score_thr
    if implementation != "tiled":
        # A run-time length: the tiled NMS keeps all N (static) and stops after the prefix.
        count = tf.maximum(tf.reduce_max(tf.reduce_sum(tf.cast(above, tf.int32), axis=-1)), 1)
        order, above = order[..., :count], above[..., :count]
        sorted_scores = sorted_scores[..., :count]
    sorted_boxes = tf.gather(per_class_boxes, order, batch_dims=2)
    sorted_scores = tf.where(above, sorted_scores, 0.0)
    sorted_boxes = tf.where(above[..., None], sorted_boxes, 0.0)
    length = sorted_scores.shape[-1] or tf.shape(sorted_scores)[-1]  # static when tiled
    flat_boxes = tf.reshape(sorted_boxes, [batch * num_classes, length, 4])
    flat_scores = tf.reshape(sorted_scores, [batch * num_classes, length])
    indices, num_valid = padded_nms(
        flat_boxes, flat_scores, max_per_img, iou_threshold, implementation=implementation
    )
    slot_valid = tf.range(max_per_img)[None, :] < num_valid[:, None]  # [B*C, D]
    kept_boxes = tf.gather(flat_boxes, indices, batch_dims=1)
    kept_scores = tf.where(slot_valid, tf.gather(flat_scores, indices, batch_dims=1), -1.0)
    # Classes in order, each with its D slots: top_k's ties then go to the lower class.
    kept_boxes = tf.reshape(kept_boxes, [batch, num_classes * max_per_img, 4])
    kept_scores = tf.reshape(kept_scores, [batch, num_classes * max_per_img])
    classes = tf.repeat(tf.range(1, num_classes + 1, dtype=tf.int32), max_per_img)
    best_scores, best = tf.math.top_k(kept_scores, k=max_per_img, sorted=True)
    valid = best_scores > -1.0
    return {
        "detection_boxes": tf.where(
            valid[..., None], tf.gather(kept_boxes, best, batch_dims=1), 0.0
        ),
        "detection_scores": tf.where(valid, best_scores, 0.0),
        "detection_classes": tf.where(valid, tf.gather(classes, best), 0),
        "num_detections": tf.reduce_sum(tf.cast(valid, tf.int32), axis=1),
    }


@keras.saving.register_keras_serializable(package="maskspine")
class DetectionGenerator(Part):
    """The box head's outputs -> final detections (`detect_boxes`).

    Args:
        score_thr, iou_threshold, max_per_img: per-class NMS settings (test_cfg.rcnn).
        nms_rule: "combined" (the reference's rule) or "padded" (tensorflow/tpu
            `models/official/detection/ops/postprocess_ops.py`, Model Garden
            `official/vision/modeling/layers/detection_generator.py`).
        nms_implementation: "tf_image", or "tiled" (static shapes: XLA).
        box_coder: the R-CNN box coder: `means`, `stds`, `legacy_plus_one`, `dhdw_clip`.

    Call: (class_logits [B, N, C], box_deltas [B, N, C or 1, 4], proposals [B, N, 4],
    valid [B, N], image_shape [B, 2]) -> the detection dict without masks
    (`detect_boxes`).
    """

    def __init__(
        self,
        *,
        score_thr: float,
        iou_threshold: float,
        max_per_img: int,
        box_coder: dict[str, Any],
        nms_rule: str = "combined",
        nms_implementation: str = "tf_image",
        **kwargs,
    ) -> None:
        self.nms_settings = {
            "score_thr": score_thr,
            "iou_threshold": iou_threshold,
            "max_per_img": max_per_img,
            "nms_rule": nms_rule,
            "nms_implementation": nms_implementation,
        }
        super().__init__({**self.nms_settings, "box_coder": box_coder}, **kwargs)
        self.box_coder = dict(box_coder)
        self.max_per_img = int(max_per_img)

    def call(self, class_logits, box_deltas, proposals, valid, image_shape):
        return detect_boxes(
            class_logits,
            box_deltas,
            proposals,
            valid,
            image_shape,
            **self.nms_settings,
            **self.box_coder,
        )
