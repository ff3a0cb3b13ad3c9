"""The padded NMS rule of tensorflow/tpu and Model Garden, batched with static shapes.

The model's default NMS is `tf.image.combined_non_max_suppression` (a box is suppressed by
a better-scored one when their IoU is > the threshold). The code that trained the published
SpineNet Mask R-CNN checkpoints uses a tiled "padded" NMS instead (tensorflow/tpu
`models/official/detection/ops/nms.py`, Model Garden `official/vision/ops/nms.py`:
`sorted_non_max_suppression_padded`), whose rules differ at the edges: a box is suppressed
at IoU >= the threshold, boxes are taken in the order of a stable descending sort (ties to
the lower index), and a box whose four coordinates are all <= 0 (a padding "dot") is never
selected. TensorFlow ships the same algorithm as `tf.image.non_max_suppression_padded`;
`padded_nms` runs it on input sorted here, so ties resolve as in the originals.
"""

from __future__ import annotations

import tensorflow as tf

#: `nms_rule` values of the proposal and detection configs.
NMS_RULES = ("combined", "padded")


#: Boxes compared at once by the tiled NMS. The result does not depend on it (tiles only
#: parallelise the greedy pass); 64 is far faster on CPU than TF's default 512 for the
#: per-class detection NMS, where most rows hold few boxes.
NMS_TILE_SIZE = 64


def padded_nms(
    boxes: tf.Tensor, scores: tf.Tensor, max_output_size: int, iou_threshold: float
) -> tuple[tf.Tensor, tf.Tensor]:
    """Greedy NMS of boxes already sorted by descending score, with the padded rule.

    Args:
        boxes: [B, N, 4] yxyx, sorted by descending `scores` within each row (N may be
            dynamic).
        scores: [B, N] float, descending (only the order matters here).
        max_output_size: K, the most boxes kept per row.
        iou_threshold: a box is dropped when its IoU with a kept, better box is >= this.
    Returns:
        indices: [B, K] int32 into N of the kept boxes in score order; rows past
            `num_valid` are 0 (padding).
        num_valid: [B] int32.
    """
    indices, num_valid = tf.image.non_max_suppression_padded(
        tf.cast(boxes, tf.float32),
        tf.cast(scores, tf.float32),
        max_output_size,
        iou_threshold=iou_threshold,
        pad_to_max_output_size=True,
        sorted_input=True,
        canonicalized_coordinates=True,
        tile_size=NMS_TILE_SIZE,
    )
    return tf.cast(indices, tf.int32), tf.cast(num_valid, tf.int32)
