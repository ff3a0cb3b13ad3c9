"""The graph (TensorFlow) backend of `maskspine.postprocess`: the same box un-scaling and the
same mask paster, batched and with static shapes, for code that runs inside a SavedModel.

`maskspine.postprocess` (numpy, on the host) is the reference: `boxes_to_original` and
`paste_masks` compute the same numbers with TF ops (up to float32 rounding, which can flip
a pixel whose interpolated probability is within ~1e-6 of the threshold). The tests compare
the two on random boxes and masks.

`image_info` [B, 4, 2] rows: original (h, w); scaled (h, w); scale (y, x); offset (y, x), with
`input pixel = original pixel * scale - offset` (the data pipeline's and Model Garden's sign).
"""

from __future__ import annotations

import tensorflow as tf


def boxes_to_original(boxes_yxyx: tf.Tensor, image_info: tf.Tensor) -> tf.Tensor:
    """Boxes from network-input pixels to original-image pixels, clipped to each image.

    Args:
        boxes_yxyx: [B, D, 4] float yxyx in network-input pixels.
        image_info: [B, 4, 2] float (see the module docstring).

    Returns:
        [B, D, 4] float32 yxyx in original pixels, `(input + offset) / scale` clipped to
        [0, h] x [0, w] of each original image (`postprocess.boxes_to_original` per image).
    """
    boxes = tf.cast(boxes_yxyx, tf.float32)
    info = tf.cast(image_info, tf.float32)
    scale = tf.tile(info[:, 2:3, :], [1, 1, 2])  # [B, 1, 4] as (y, x, y, x)
    offset = tf.tile(info[:, 3:4, :], [1, 1, 2])
    limits = tf.tile(info[:, 0:1, :], [1, 1, 2])
    original = (boxes + offset) / scale
    return tf.clip_by_value(original, 0.0, limits)


def _axis_weights(start: tf.Tensor, end: tf.Tensor, mask_size: int, length: tf.Tensor) -> tf.Tensor:
    """Bilinear resampling matrix of one axis: [N, length, mask_size] float32.

    Row p holds the weights with which output pixel p (centre p + 0.5) reads the mask cells
    when the mask's `mask_size` cells are spread evenly over [start, end] (cell i's centre at
    start + (i + 0.5) * extent / mask_size): cells floor(u) and floor(u) + 1 at
    u = (p + 0.5 - start) / extent * mask_size - 0.5. A cell outside the mask has no column in
    the matrix (one_hot of an out-of-range index is all zeros), i.e. it reads as 0 — the rule
    of `postprocess._axis_weights`.

    Args:
        start, end: [N] float32 box extent along the axis, in output pixels.
        mask_size: cells of the mask along the axis.
        length: scalar int32, pixels of the output along the axis.
    """
    centres = tf.cast(tf.range(length), tf.float32) + 0.5  # [L]
    extent = (end - start)[:, None]
    # Degenerate boxes are emptied by the caller; keep the division finite meanwhile.
    safe_extent = tf.where(extent > 0, extent, tf.ones_like(extent))
    u = (centres[None, :] - start[:, None]) / safe_extent * mask_size - 0.5  # [N, L]
    low = tf.floor(u)
    high_weight = u - low
    low_weight = 1.0 - high_weight
    low = tf.cast(low, tf.int32)
    return (
        tf.one_hot(low, mask_size, dtype=tf.float32) * low_weight[..., None]
        + tf.one_hot(low + 1, mask_size, dtype=tf.float32) * high_weight[..., None]
    )


def _paste_one_image(
    masks: tf.Tensor,
    boxes: tf.Tensor,
    image_size: tf.Tensor,
    output_size: tf.Tensor,
    threshold: float,
) -> tf.Tensor:
    """[D, Mh, Mw] masks, [D, 4] boxes, int32 [2] own size, int32 [2] output size ->
    uint8 [D, out_h, out_w]; pixels beyond the image's own size stay 0."""
    masks = tf.cast(masks, tf.float32)
    boxes = tf.cast(boxes, tf.float32)
    mask_height, mask_width = masks.shape[-2], masks.shape[-1]
    y1, x1, y2, x2 = tf.unstack(boxes, 4, axis=-1)
    rows = _axis_weights(y1, y2, mask_height, output_size[0])  # [D, H, Mh]
    cols = _axis_weights(x1, x2, mask_width, output_size[1])  # [D, W, Mw]
    # Rows first, then columns: the order of the numpy paster.
    by_rows = tf.matmul(rows, masks)  # [D, H, Mw]
    pasted = tf.matmul(by_rows, cols, transpose_b=True)  # [D, H, W]
    finite = tf.reduce_all(tf.math.is_finite(boxes), axis=-1)
    usable = finite & (y2 > y1) & (x2 > x1)  # [D]
    inside_rows = tf.range(output_size[0]) < image_size[0]
    inside_cols = tf.range(output_size[1]) < image_size[1]
    inside = inside_rows[:, None] & inside_cols[None, :]  # [H, W]
    foreground = (pasted >= threshold) & usable[:, None, None] & inside[None]
    return tf.cast(foreground, tf.uint8)


def paste_masks(
    masks: tf.Tensor,
    boxes_yxyx: tf.Tensor,
    image_sizes: tf.Tensor,
    output_size: tf.Tensor | tuple[int, int],
    threshold: float = 0.5,
) -> tf.Tensor:
    """Paste box-relative mask probabilities into full-image binary masks, batched.

    The semantics of `postprocess.paste_masks` (Detectron2 / mmdet `paste_masks_in_image`):
    each mask is resized bilinearly onto its box's continuous extent, pixel centres at +0.5,
    zero outside the mask, thresholded with `>= threshold`.

    Args:
        masks: [B, D, Mh, Mw] float probabilities relative to each box.
        boxes_yxyx: [B, D, 4] float yxyx in pixels of the original image (after
            `boxes_to_original`).
        image_sizes: int [B, 2] (height, width) of each original image.
        output_size: int (height, width) of the output, at least every image's size (images
            of a batch may differ in size: each is pasted in the top-left corner).
        threshold: a pixel is foreground when its interpolated probability is >= this.

    Returns:
        [B, D, out_h, out_w] uint8 in {0, 1}; empty masks for boxes with zero or negative
        size or non-finite coordinates, and 0 beyond each image's own size.

    Memory: one image at a time, about 4 * D * out_h * out_w bytes of float32 work space.
    """
    image_sizes = tf.cast(image_sizes, tf.int32)
    output_size = tf.cast(tf.convert_to_tensor(output_size), tf.int32)
    return tf.map_fn(
        lambda args: _paste_one_image(args[0], args[1], args[2], output_size, threshold),
        (masks, boxes_yxyx, image_sizes),
        fn_output_signature=tf.TensorSpec([masks.shape[1], None, None], tf.uint8),
    )
