"""Box arithmetic of the model (graph code): areas, IoU, delta coding, clipping.

Inside the model boxes are `yxyx` in absolute pixels of the network input, float32, with
any number of leading dimensions: `[..., 4]` = (y1, x1, y2, x2). Heights and widths are
`y2 - y1` and `x2 - x1` (continuous coordinates, no "+1"); the delta coding and clipping
take `legacy_plus_one=True` for the pixel-index convention of tensorflow/tpu
(`models/official/detection/utils/box_utils.py`: height y2 - y1 + 1, clipping to H - 1).
Files use COCO `xywh`; the converters between the two are host code, in `maskspine.boxes`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import tensorflow as tf

from maskspine.choices import DHDW_CLIPS
from maskspine.modeling.part import Part

#: mmdetection's default bound on |dh|, |dw| when decoding: exp(max_ratio) = 1000 / 16.
DEFAULT_MAX_RATIO = abs(math.log(16.0 / 1000.0))

# Smallest height/width used when dividing by or taking the log of a box size, so that
# degenerate (zero-size or padding) boxes give finite numbers instead of inf/NaN.
_MIN_SIZE = 1e-6


def box_area(boxes: tf.Tensor) -> tf.Tensor:
    """Areas of yxyx boxes.

    Args:
        boxes: [..., 4] yxyx.
    Returns:
        [...] float, (y2 - y1) * (x2 - x1), 0 for boxes with negative height or width.
    """
    boxes = tf.convert_to_tensor(boxes)
    y1, x1, y2, x2 = tf.unstack(boxes, 4, axis=-1)
    return tf.maximum(y2 - y1, 0.0) * tf.maximum(x2 - x1, 0.0)


def pairwise_intersection(boxes1: tf.Tensor, boxes2: tf.Tensor) -> tf.Tensor:
    """Intersection areas of every pair of boxes.

    Args:
        boxes1: [..., N, 4] yxyx.
        boxes2: [..., M, 4] yxyx; leading dimensions broadcast with those of `boxes1`.
    Returns:
        [..., N, M] float intersection areas (pixels squared).
    """
    boxes1 = tf.convert_to_tensor(boxes1)
    boxes2 = tf.convert_to_tensor(boxes2, dtype=boxes1.dtype)
    a = boxes1[..., :, None, :]
    b = boxes2[..., None, :, :]
    top_left = tf.maximum(a[..., :2], b[..., :2])
    bottom_right = tf.minimum(a[..., 2:], b[..., 2:])
    size = tf.maximum(bottom_right - top_left, 0.0)
    return size[..., 0] * size[..., 1]


def pairwise_overlaps(boxes1: tf.Tensor, boxes2: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Intersection over union and intersection over the first box's area of every pair,
    from one intersection.

    The second is what pycocotools calls IoU with a crowd region (mmdetection's "iof"); the
    assigners use it to ignore anchors and proposals inside crowd regions.

    Args:
        boxes1: [..., N, 4] yxyx.
        boxes2: [..., M, 4] yxyx; leading dimensions broadcast with those of `boxes1`.
    Returns:
        (iou, ioa): [..., N, M] each, in [0, 1]; 0 where the union (the first box's area)
        is empty.
    """
    boxes1 = tf.convert_to_tensor(boxes1)
    boxes2 = tf.convert_to_tensor(boxes2, dtype=boxes1.dtype)
    intersection = pairwise_intersection(boxes1, boxes2)
    areas1 = box_area(boxes1)[..., :, None]
    union = areas1 + box_area(boxes2)[..., None, :] - intersection
    return tf.math.divide_no_nan(intersection, union), tf.math.divide_no_nan(intersection, areas1)


#: `dhdw_clip` values of `decode_boxes`: clip dh, dw on both sides or from above only.


def _centres_and_sizes(
    boxes: tf.Tensor, legacy_plus_one: bool = False
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    y1, x1, y2, x2 = tf.unstack(boxes, 4, axis=-1)
    height = y2 - y1
    width = x2 - x1
    if legacy_plus_one:
        height += 1.0
        width += 1.0
    return y1 + 0.5 * height, x1 + 0.5 * width, height, width


def encode_boxes(
    boxes: tf.Tensor,
    anchors: tf.Tensor,
    means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
    stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    *,
    legacy_plus_one: bool = False,
) -> tf.Tensor:
    """Regression targets that move `anchors` onto `boxes` (Faster R-CNN parametrisation).

    dy = (cy - acy) / ah, dx = (cx - acx) / aw, dh = log(h / ah), dw = log(w / aw), each
    then normalised as (d - mean) / std.

    Args:
        boxes: [..., 4] yxyx target boxes, float32.
        anchors: [..., 4] yxyx reference boxes (anchors or proposals), broadcastable.
        means, stds: 4 floats each, in (dy, dx, dh, dw) order.
        legacy_plus_one: heights and widths are y2 - y1 + 1, x2 - x1 + 1 and centres
            y1 + h / 2 (tensorflow/tpu `utils/box_utils.py`).
    Returns:
        [..., 4] float32 deltas (dy, dx, dh, dw). Heights and widths are floored at 1e-6
        pixels, so degenerate or padding boxes give large but finite numbers.
    """
    boxes = tf.convert_to_tensor(boxes, dtype=tf.float32)
    anchors = tf.convert_to_tensor(anchors, dtype=tf.float32)
    cy, cx, h, w = _centres_and_sizes(boxes, legacy_plus_one)
    acy, acx, ah, aw = _centres_and_sizes(anchors, legacy_plus_one)
    ah = tf.maximum(ah, _MIN_SIZE)
    aw = tf.maximum(aw, _MIN_SIZE)
    deltas = tf.stack(
        [
            (cy - acy) / ah,
            (cx - acx) / aw,
            tf.math.log(tf.maximum(h, _MIN_SIZE) / ah),
            tf.math.log(tf.maximum(w, _MIN_SIZE) / aw),
        ],
        axis=-1,
    )
    return (deltas - tf.constant(means, tf.float32)) / tf.constant(stds, tf.float32)


def decode_boxes(
    deltas: tf.Tensor,
    anchors: tf.Tensor,
    means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
    stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    max_ratio: float = DEFAULT_MAX_RATIO,
    *,
    legacy_plus_one: bool = False,
    dhdw_clip: str = "both",
) -> tf.Tensor:
    """Inverse of `encode_boxes`: apply deltas to anchors.

    Args:
        deltas: [..., 4] (dy, dx, dh, dw), normalised with `means` / `stds`.
        anchors: [..., 4] yxyx reference boxes, broadcastable with `deltas`.
        means, stds: 4 floats each, in (dy, dx, dh, dw) order.
        max_ratio: dh and dw are clipped to [-max_ratio, max_ratio] before exp (after
            de-normalisation), so a box grows or shrinks by at most exp(max_ratio) = 62.5x
            by default, as in mmdetection.
        legacy_plus_one: anchor sizes are y2 - y1 + 1 and a decoded box of height h spans
            [y1, y1 + h - 1] (tensorflow/tpu `utils/box_utils.py`).
        dhdw_clip: "both" clips dh, dw to [-max_ratio, max_ratio]; "upper" only from
            above (tensorflow/tpu and Model Garden `decode_boxes`).
    Returns:
        [..., 4] float32 yxyx boxes in the anchors' pixels (not clipped to the image).
    """
    if dhdw_clip not in DHDW_CLIPS:
        raise ValueError(f"dhdw_clip must be one of {DHDW_CLIPS}, got {dhdw_clip!r}")
    deltas = tf.convert_to_tensor(deltas, dtype=tf.float32)
    anchors = tf.convert_to_tensor(anchors, dtype=tf.float32)
    deltas = deltas * tf.constant(stds, tf.float32) + tf.constant(means, tf.float32)
    dy, dx, dh, dw = tf.unstack(deltas, 4, axis=-1)
    lower = -max_ratio if dhdw_clip == "both" else -math.inf
    dh = tf.clip_by_value(dh, lower, max_ratio)
    dw = tf.clip_by_value(dw, lower, max_ratio)
    acy, acx, ah, aw = _centres_and_sizes(anchors, legacy_plus_one)
    cy = acy + dy * ah
    cx = acx + dx * aw
    h = ah * tf.exp(dh)
    w = aw * tf.exp(dw)
    if legacy_plus_one:
        y1 = cy - 0.5 * h
        x1 = cx - 0.5 * w
        return tf.stack([y1, x1, y1 + h - 1.0, x1 + w - 1.0], axis=-1)
    return tf.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)


def clip_boxes(boxes: tf.Tensor, image_shape, *, legacy_plus_one: bool = False) -> tf.Tensor:
    """Clip yxyx boxes to [0, height] x [0, width].

    Args:
        boxes: [..., 4] yxyx.
        image_shape: (height, width) in pixels: a python pair, or a tensor [..., 2] whose
            leading dimensions are a prefix of the boxes' leading dimensions (e.g. [B, 2]
            for boxes [B, N, 4]; [2] for any boxes).
        legacy_plus_one: clip to [0, height - 1] x [0, width - 1] instead (the last pixel's
            index: tensorflow/tpu `utils/box_utils.py`).
    Returns:
        boxes of the same shape and dtype, clipped.
    """
    boxes = tf.convert_to_tensor(boxes)
    image_shape = tf.cast(tf.convert_to_tensor(image_shape), boxes.dtype)
    extra_axes = boxes.shape.rank - image_shape.shape.rank
    if extra_axes < 0:
        raise ValueError(
            f"clip_boxes: image_shape of rank {image_shape.shape.rank} does not fit boxes "
            f"of rank {boxes.shape.rank}; pass [..., 2] with at most the boxes' leading dims"
        )
    for _ in range(extra_axes):
        image_shape = tf.expand_dims(image_shape, -2)
    if legacy_plus_one:
        image_shape = image_shape - 1.0
    limits = tf.concat([image_shape, image_shape], axis=-1)  # (h, w, h, w)
    return tf.minimum(tf.maximum(boxes, 0.0), limits)


@keras.saving.register_keras_serializable(package="maskspine")
class ImageWindow(Part):
    """The [B, 2] (height, width) region of the input that proposals and detections are
    clipped to and anchors are kept in.

    Args:
        input_size: (height, width) of the network input.
        clip_boxes_to: "image": the scaled image inside the padded input (image_info row 1,
            the reference's); "input": the whole input, as tensorflow/tpu
            (`models/official/detection/modeling/maskrcnn_model.py`) and Model Garden
            (`official/vision/ops/preprocess_ops.py`: image_info row 1 is the desired size)
            clip. Without image_info, the whole input.

    Call: (images [B, H, W, 3], image_info [B, 4, 2] or None) -> [B, 2] float32.
    """

    def __init__(self, *, input_size: Sequence[int], clip_boxes_to: str = "image", **kwargs):
        super().__init__(
            {"input_size": [int(v) for v in input_size], "clip_boxes_to": clip_boxes_to},
            **kwargs,
        )
        self.input_size = [float(v) for v in input_size]
        self.use_image_info = clip_boxes_to == "image"

    def call(self, images, image_info=None):
        if image_info is not None and self.use_image_info:
            return tf.cast(image_info[:, 1, :], tf.float32)
        return tf.tile(tf.constant([self.input_size], tf.float32), [tf.shape(images)[0], 1])
