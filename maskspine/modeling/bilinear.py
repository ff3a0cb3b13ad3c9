"""Bilinear sampling by gathers: the XLA-compilable kernel under RoIAlign's and the mask
targets' `method="gather"`.

`tf.image.crop_and_resize` has no XLA kernel. Here a sample grid is read from a flat
table of pixels with `tf.gather`: each sample's value is the weighted sum of its four
neighbouring pixels, the weights and pixel indices computed per axis (a sample grid is
the outer product of a row of y samples and a row of x samples, so every box needs only
its P y and Q x coordinates). Gathers, their gradient (a scatter-add into the table) and
the arithmetic all compile with `tf.function(jit_compile=True)`, with static shapes.

The technique is that of Model Garden's `multilevel_crop_and_resize`
(`official/vision/ops/spatial_transform_ops.py`: feature levels flattened into one
table, per-box corner indices and interpolation kernels, one gather); the border rules
are chosen by the caller: torchvision's RoIAlign (`roi_align_samples`) or
`tf.image.crop_and_resize`'s (`crop_and_resize_samples`).

Memory and speed: a grid averaged over g x g blocks is 4 g^2 gathers of [K, P/g, Q/g, C]
(four reads per sample, as crop_and_resize does), summed term by term. XLA fuses them into
one pass; TensorFlow's graph executor holds each term. The gradient is a scatter-add per
term, which XLA runs serially on CPU (see `roi_align.multilevel_roi_align` for figures).
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

__all__ = ["AxisSamples", "crop_and_resize_samples", "gather_bilinear", "roi_align_samples"]


class AxisSamples(NamedTuple):
    """Where the samples along one axis read, [K, P] each: the lower and upper pixel
    indices (int32, within [0, size - 1]) and their weights (float32; both 0 for a
    sample that reads nothing)."""

    low: tf.Tensor
    high: tf.Tensor
    low_weight: tf.Tensor
    high_weight: tf.Tensor


def roi_align_samples(
    coords: tf.Tensor, size: tf.Tensor, valid: tf.Tensor | None = None
) -> AxisSamples:
    """torchvision's RoIAlign border rule (`bilinear_interpolate` of roi_align_kernel.cpp).

    Args:
        coords: [K, P] float32 sample coordinates in pixels of the map, pixel centres at
            integers.
        size: [K, 1] float32, the map's size along the axis (H or W).
        valid: [K, P] float32, 1 where a sample reads, 0 where it is zero; None: the rule
            below on `coords` (a caller gives its own when it decides on other rounding).

    A sample below -1 or above `size` reads nothing (zero); one in [-1, 0] reads pixel 0;
    one in [size - 1, size] reads pixel size - 1.
    """
    if valid is None:
        valid = tf.cast((coords >= -1.0) & (coords <= size), tf.float32)
    clamped = tf.clip_by_value(coords, 0.0, size - 1.0)
    low = tf.floor(clamped)
    high = tf.minimum(low + 1.0, size - 1.0)
    fraction = clamped - low
    return AxisSamples(
        tf.cast(low, tf.int32),
        tf.cast(high, tf.int32),
        (1.0 - fraction) * valid,
        fraction * valid,
    )


def crop_and_resize_samples(coords: tf.Tensor, size: tf.Tensor) -> AxisSamples:
    """`tf.image.crop_and_resize`'s bilinear border rule (extrapolation value 0).

    Args:
        coords: [K, P] float32 sample coordinates in pixels of the image (crop_and_resize's
            `in_y`: box corner * (size - 1) + j * scale).
        size: [K, 1] float32, the image's size along the axis.

    A sample outside [0, size - 1] reads nothing; inside, it blends pixels floor and ceil.
    """
    valid = (coords >= 0.0) & (coords <= size - 1.0)
    safe = tf.where(valid, coords, 0.0)
    low = tf.floor(safe)
    high = tf.math.ceil(safe)
    fraction = safe - low
    valid = tf.cast(valid, tf.float32)
    return AxisSamples(
        tf.cast(low, tf.int32),
        tf.cast(high, tf.int32),
        (1.0 - fraction) * valid,
        fraction * valid,
    )


def gather_bilinear(
    table: tf.Tensor,
    offset: tf.Tensor,
    row_length: tf.Tensor,
    y: AxisSamples,
    x: AxisSamples,
    *,
    group: int = 1,
) -> tf.Tensor:
    """The P x Q grid of bilinear samples of each of K maps stored row-major in `table`,
    averaged over blocks of `group` x `group` samples.

    Args:
        table: [R, C] float32, every map's pixels one per row (row-major per map).
        offset: [K] int32, the table row of pixel (0, 0) of each sample grid's map.
        row_length: [K] int32, the width of that map (table rows per map row).
        y: AxisSamples [K, P] along the map's rows.
        x: AxisSamples [K, Q] along its columns.
        group: g, static; P and Q multiples of it.

    Returns:
        [K, P / g, Q / g, C] float32: per block, the mean over its g x g samples of the sum
        over each sample's four neighbours of weight_y * weight_x * pixel. The blocks are
        summed term by term (one gather of [K, P / g, Q / g] pixels per sample offset and
        neighbour), which XLA fuses into one pass without a strided reduction.
        Differentiable with respect to `table` (a scatter-add per term).
    """
    num_rows = y.low.shape[1] // group
    num_cols = x.low.shape[1] // group
    base = offset[:, None, None]
    stride = row_length[:, None, None]
    scale = 1.0 / float(group * group)

    def by_block(values, count):  # [K, count * g] -> g tensors [K, count]
        return tf.unstack(tf.reshape(values, [-1, count, group]), axis=2)

    row_terms = [
        (rows, weight * scale)
        for pair in ((y.low, y.low_weight), (y.high, y.high_weight))
        for rows, weight in zip(by_block(pair[0], num_rows), by_block(pair[1], num_rows))
    ]
    col_terms = [
        (cols, weight)
        for pair in ((x.low, x.low_weight), (x.high, x.high_weight))
        for cols, weight in zip(by_block(pair[0], num_cols), by_block(pair[1], num_cols))
    ]
    result = None
    for rows, row_weight in row_terms:
        for cols, col_weight in col_terms:
            index = base + rows[:, :, None] * stride + cols[:, None, :]  # [K, P / g, Q / g]
            weight = row_weight[:, :, None, None] * col_weight[:, None, :, None]
            term = weight * tf.gather(table, index)
            result = term if result is None else result + term
    return result
