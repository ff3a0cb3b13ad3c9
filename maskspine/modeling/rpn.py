"""Region proposal network: the shared head and batched proposal generation.

The head runs one 3x3 conv (shared across levels) then 1x1 convs for the sigmoid
objectness of each anchor and its box deltas. Proposal generation follows the
reference (mmdetection's RPN): per level the top `nms_pre` anchors by score are
decoded, clipped to the image and filtered by size; NMS runs per level, and the
`max_per_img` best boxes over all levels are kept. Everything is batched with
static shapes: one `tf.image.combined_non_max_suppression` call treats the levels as
its "classes".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras
import tensorflow as tf
from keras import layers

from maskspine.modeling import box_ops


@keras.saving.register_keras_serializable(package="maskspine")
class RPNHead(layers.Layer):
    """Shared RPN head.

    Call: features {"P3": [B, H3, W3, C], ...} -> (objectness_logits {level: [B, H*W*A]},
    box_deltas {level: [B, H*W*A, 4]}), flattened in (y, x, anchor) order to match
    `anchors.generate_anchors`. Levels are ints (3..7).
    """

    def __init__(self, num_anchors: int, feat_channels: int = 256, **kwargs):
        super().__init__(**kwargs)
        self.num_anchors = num_anchors
        self.feat_channels = feat_channels
        init = keras.initializers.RandomNormal(stddev=0.01)
        self.conv = layers.Conv2D(
            feat_channels,
            3,
            padding="same",
            activation="relu",
            kernel_initializer=init,
            name="rpn_conv",
        )
        self.objectness = layers.Conv2D(
            num_anchors, 1, kernel_initializer=init, name="rpn_objectness"
        )
        self.deltas = layers.Conv2D(
            4 * num_anchors, 1, kernel_initializer=init, name="rpn_box_deltas"
        )

    def build(self, input_shape):
        """input_shape: one level's [B, H, W, C] (all levels share the weights)."""
        self.conv.build(input_shape)
        shape = (*input_shape[:-1], self.feat_channels)
        self.objectness.build(shape)
        self.deltas.build(shape)
        self.built = True

    def call(self, features: Mapping[str, tf.Tensor]):
        objectness, deltas = {}, {}
        for key, feature in features.items():
            level = int(str(key).lstrip("P"))
            x = self.conv(feature)
            batch = tf.shape(x)[0]
            objectness[level] = tf.reshape(self.objectness(x), [batch, -1])
            deltas[level] = tf.reshape(self.deltas(x), [batch, -1, 4])
        return objectness, deltas

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "num_anchors": self.num_anchors,
            "feat_channels": self.feat_channels,
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
        min_bbox_size: boxes whose height or width is not above this are dropped.

    Returns:
        proposals [B, max_per_img, 4] yxyx input pixels (zeros where padded),
        scores [B, max_per_img] sigmoid objectness, valid [B, max_per_img] bool.
    """
    levels = sorted(objectness_logits)
    all_boxes, all_scores = [], []
    image_shape = tf.cast(image_shape, tf.float32)
    for index, level in enumerate(levels):
        logits = tf.cast(objectness_logits[level], tf.float32)
        count = logits.shape[1] if logits.shape[1] is not None else tf.shape(logits)[1]
        k = min(nms_pre, count) if isinstance(count, int) else tf.minimum(nms_pre, count)
        top_logits, top_index = tf.math.top_k(logits, k=k, sorted=False)
        deltas = tf.gather(tf.cast(box_deltas[level], tf.float32), top_index, batch_dims=1)
        level_anchors = tf.gather(tf.cast(anchors[level], tf.float32), top_index)
        boxes = box_ops.decode_boxes(deltas, level_anchors, means, stds)
        boxes = box_ops.clip_boxes(boxes, image_shape)
        heights = boxes[..., 2] - boxes[..., 0]
        widths = boxes[..., 3] - boxes[..., 1]
        keep = (heights > min_bbox_size) & (widths > min_bbox_size)
        scores = tf.where(keep, tf.sigmoid(top_logits), 0.0)
        # One score column per level: combined NMS then suppresses within a level only.
        all_scores.append(scores[..., None] * tf.one_hot(index, len(levels), dtype=tf.float32))
        all_boxes.append(boxes)
    boxes = tf.concat(all_boxes, axis=1)
    scores = tf.concat(all_scores, axis=1)
    nmsed_boxes, nmsed_scores, _, num_valid = tf.image.combined_non_max_suppression(
        boxes[:, :, None, :],
        scores,
        max_output_size_per_class=max_per_img,
        max_total_size=max_per_img,
        iou_threshold=iou_threshold,
        score_threshold=_MIN_SCORE,
        pad_per_class=False,
        clip_boxes=False,
    )
    valid = tf.range(max_per_img)[None, :] < num_valid[:, None]
    return (
        tf.stop_gradient(nmsed_boxes),
        tf.stop_gradient(nmsed_scores),
        valid,
    )


# Scores at or below this are padding (the other levels' columns, filtered boxes).
_MIN_SCORE = 1e-8
