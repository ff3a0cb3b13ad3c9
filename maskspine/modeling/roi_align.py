"""RoIAlign on `tf.image.crop_and_resize`, single level and multilevel.

Semantics are torchvision's `roi_align(aligned=True, spatial_scale=1/stride,
sampling_ratio=g)`, exactly, border rule included:

- a box (yxyx, input-image pixels) is scaled by 1/stride and shifted by -0.5, so
  feature pixel i has its centre at coordinate i;
- the box is split into S x S bins and each bin is sampled at g x g sub-bin
  centres with bilinear interpolation; the bin's value is the mean of its g*g
  samples (samples that fall outside count as zeros in the mean);
- a sample with y < -1 or y > H (x < -1 or x > W) is zero; one in [-1, 0] reads
  row 0, one in [H-1, H] reads row H-1 (the clamp of torchvision's kernel).

How: the S*g sample coordinates along each axis are evenly spaced, with the first
at `start + step/2` and the last at `end - step/2` (step = box size / (S*g)).
`crop_and_resize` samples its box corners inclusively, so the normalised box
whose corners are exactly the first and the last sample puts its (S*g)^2
samples on the sub-bin centres; a g x g mean then gives the bins. The clamp to
the border row is obtained by padding every feature map with a copy of its edge
rows and columns (bilinear interpolation between a row and its copy is that
row); samples beyond [-1, H] are zeroed with a per-sample mask, which makes the
border rule exact rather than `crop_and_resize`'s own (which would zero
everything outside [0, H-1]).

Multilevel RoIAlign packs the edge-padded levels of each image into one "atlas"
image (the finest level in one column, the others stacked in a second column)
and calls `crop_and_resize` once for all boxes, each box pointing at the part of
the atlas that holds its level. This costs one crop per box instead of one per
box and level (see `multilevel_roi_align`).

`CropAndResize` has no XLA kernel. `method="gather"` computes the same RoIAlign without
it, for `tf.function(jit_compile=True)`: every level is flattened into one table of
pixels and each sample's four neighbours are gathered from it with the torchvision border
rule written out (`modeling/bilinear.py`, the technique of Model Garden's
`multilevel_crop_and_resize`, `official/vision/ops/spatial_transform_ops.py`). It equals
the default `method="crop_and_resize"` up to float rounding (1e-5 on unit-scale
features), gradients included. On CPU it is faster forward under XLA, slower backward
(figures in `multilevel_roi_align`).

With `aligned=False` the -0.5 shift is left out (as in torchvision's `aligned=False`,
without its enlarging of boxes smaller than one feature pixel): bin centres are then where tensorflow/tpu and Model Garden (`multilevel_crop_and_resize`,
sample_offset 0.5, `sampling_ratio=1`) sample, and for boxes inside the image (clipped,
as theirs are) the border rules agree too. `level_assignment="canonical"` picks levels
as they do (`assign_box_levels`).

Gradients flow to the features; none flow to the boxes (as in torchvision,
whose RoIAlign has no box gradient). Features of any float dtype are accepted;
the arithmetic is float32 and the result is cast back to the features' dtype.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import keras
import tensorflow as tf

from maskspine.choices import LEVEL_ASSIGNMENTS, ROI_METHODS
from maskspine.modeling.bilinear import gather_bilinear, roi_align_samples
from maskspine.modeling.part import Part

__all__ = ["ROI_ALIGN_METHODS", "assign_box_levels", "multilevel_roi_align", "roi_align"]

#: `method` values of `roi_align` / `multilevel_roi_align` (the default first).
ROI_ALIGN_METHODS = ROI_METHODS


def roi_align(
    features: tf.Tensor,
    boxes: tf.Tensor,
    *,
    stride: int,
    output_size: int,
    sampling_ratio: int = 2,
    aligned: bool = True,
    method: str = "crop_and_resize",
) -> tf.Tensor:
    """RoIAlign of one feature map (torchvision `roi_align`, `aligned=True` by default).

    Args:
        features: [B, H, W, C] float feature map whose pixel i covers input pixels
            [i * stride, (i + 1) * stride).
        boxes: [B, N, 4] float, yxyx in input-image pixels. Degenerate or padding
            boxes (e.g. all -1) give finite values that callers should ignore.
        stride: input pixels per feature pixel (spatial_scale = 1 / stride).
        output_size: S, bins per side of the output.
        sampling_ratio: g >= 1, samples per bin side (g x g samples per bin).
        aligned: shift boxes by -0.5 feature pixel (torchvision's `aligned=True`); False:
            no shift (and no minimum box size).
        method: "crop_and_resize" (one `tf.image.crop_and_resize`, no XLA kernel) or
            "gather" (bilinear gathers, compiles with XLA; see the module docstring).

    Returns:
        [B, N, S, S, C] pooled features, the dtype of `features`.
    """
    _check_sizes(output_size, sampling_ratio)
    _check_method(method)
    boxes = tf.stop_gradient(tf.cast(boxes, tf.float32))
    level = tf.zeros(_dims(boxes)[:2], tf.int32)
    if method == "gather":
        return _align_by_gather(
            [features],
            [int(stride)],
            boxes,
            level,
            output_size=output_size,
            sampling_ratio=sampling_ratio,
            aligned=aligned,
        )
    atlas, offsets, sizes = _build_atlas([features])
    return _align_on_atlas(
        atlas,
        offsets,
        sizes,
        tf.constant([float(stride)]),
        boxes,
        level,
        output_size=output_size,
        sampling_ratio=sampling_ratio,
        dtype=features.dtype,
        aligned=aligned,
    )


#: `level_assignment` values of `assign_box_levels` / `multilevel_roi_align`.
#: The FPN paper's canonical box size and level (Lin et al. 2017, eq. 1).
CANONICAL_SIZE, CANONICAL_LEVEL = 224.0, 4


def assign_box_levels(
    boxes: tf.Tensor,
    *,
    num_levels: int,
    finest_scale: int = 56,
    rule: str = "finest_scale",
    first_level: int = 3,
) -> tf.Tensor:
    """Level index of each box.

    "finest_scale" (mmdetection's `SingleRoIExtractor.map_roi_levels`): scale =
    sqrt(w * h); index = floor(log2(scale / finest_scale + 1e-6)), clamped to
    [0, num_levels - 1]. With finest_scale 56: boxes up to 111 px go to index 0,
    112..223 to 1, 224..447 to 2, and so on. The floor of the log is computed with
    comparisons against powers of two, so the boundaries are exact in float32.

    "canonical" (tensorflow/tpu and Model Garden `multilevel_crop_and_resize`): level =
    floor(log(sqrt(w * h) / 224) / log(2)) + 4 in float32 exactly as they compute it
    (`tf.math.floordiv` of the logs), index = level - `first_level`, clamped to
    [0, num_levels - 1].

    Args:
        boxes: [..., 4] float, yxyx in input-image pixels. Boxes with negative width
            or height (padding) count as zero area and go to index 0 ("finest_scale").
        num_levels: number of levels to choose from.
        finest_scale: box scale (pixels) that maps to the boundary of index 0 and 1
            divided by two ("finest_scale").
        rule: "finest_scale" or "canonical".
        first_level: pyramid level of index 0 ("canonical"), log2 of the finest stride.

    Returns:
        [...] int32 level indices in [0, num_levels - 1].
    """
    if rule not in LEVEL_ASSIGNMENTS:
        raise ValueError(f"level_assignment must be one of {LEVEL_ASSIGNMENTS}, got {rule!r}")
    boxes = tf.cast(boxes, tf.float32)
    if rule == "canonical":
        areas_sqrt = tf.sqrt((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]))
        level = tf.cast(
            tf.math.floordiv(
                tf.math.log(tf.math.divide_no_nan(areas_sqrt, CANONICAL_SIZE)),
                tf.math.log(2.0),
            )
            + float(CANONICAL_LEVEL),
            tf.int32,
        )
        # Clamp before subtracting: a NaN or -inf log (empty box) casts to INT_MIN.
        return tf.clip_by_value(level, first_level, first_level + num_levels - 1) - first_level
    height = tf.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
    width = tf.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    ratio = tf.sqrt(height * width) / float(finest_scale) + 1e-6
    level = tf.zeros(tf.shape(ratio), tf.int32)
    for index in range(1, num_levels):
        level += tf.cast(ratio >= float(2**index), tf.int32)
    return level


def multilevel_roi_align(
    features: Mapping[str | int, tf.Tensor],
    boxes: tf.Tensor,
    *,
    output_size: int,
    featmap_strides: Sequence[int],
    finest_scale: int = 56,
    sampling_ratio: int = 2,
    aligned: bool = True,
    level_assignment: str = "finest_scale",
    method: str = "crop_and_resize",
) -> tf.Tensor:
    """RoIAlign of each box on the level `assign_box_levels` picks for it.

    Args:
        features: feature maps by level, keys "P3".."P7" (as the backbone gives) or
            ints 3..7; level l is [B, H_l, W_l, C] with stride 2**l. Only the levels
            of `featmap_strides` are read.
        boxes: [B, N, 4] float, yxyx in input-image pixels; padding boxes (all -1,
            zero area) go to the finest level and give finite values.
        output_size: S, bins per side.
        featmap_strides: strides of the levels to pool from, finest first
            (e.g. [8, 16, 32, 64] -> P3..P6); level index 0 is the first.
        finest_scale: see `assign_box_levels`.
        sampling_ratio: g, samples per bin side.
        aligned: shift boxes by -0.5 feature pixel (torchvision's `aligned=True`); False:
            no shift (and no minimum box size).
        level_assignment: the `rule` of `assign_box_levels`.
        method: "crop_and_resize" (the packed atlas below, no XLA kernel) or "gather"
            (bilinear gathers from the flattened levels, compiles with XLA; see the module
            docstring).

    Returns:
        [B, N, S, S, C] pooled features, the dtype of the features.

    Speed (CPU, 2 cores, B=1, N=1000, C=256, 640x640 input, P3..P6, g=2): one
    `crop_and_resize` over the packed atlas takes 180 ms forward (S=7; 630 ms at
    S=14), against 670 ms (2.6 s) for RoIAlign on every level followed by a per-box
    gather, and 680 ms (2.7 s) for per-level calls with off-level boxes moved off
    the map; forward + backward 220 ms against 840 ms / 780 ms at S=7.

    `method="gather"` (same case, another 2-core host, whose crop_and_resize took 55 ms
    forward at S=7, 530 ms at S=14, 80-120 ms / 290 ms forward + backward): compiled with
    `jit_compile=True` 19 ms forward (46 ms at S=14), 450-520 ms forward + backward
    (1.2-1.6 s at S=14: XLA's scatter-add of the gradient runs serially on CPU); in
    TensorFlow's graph executor 130 ms (430 ms) forward, 300-330 ms (1.1 s) forward +
    backward.
    """
    _check_sizes(output_size, sampling_ratio)
    _check_method(method)
    strides = [int(s) for s in featmap_strides]
    if not strides:
        raise ValueError(
            "featmap_strides is empty: give at least one stride, e.g. [8, 16, 32, 64]."
        )
    maps = [_feature_map_for_stride(features, s) for s in strides]
    boxes = tf.stop_gradient(tf.cast(boxes, tf.float32))
    level = assign_box_levels(
        boxes,
        num_levels=len(strides),
        finest_scale=finest_scale,
        rule=level_assignment,
        first_level=strides[0].bit_length() - 1,
    )
    if method == "gather":
        return _align_by_gather(
            maps,
            strides,
            boxes,
            level,
            output_size=output_size,
            sampling_ratio=sampling_ratio,
            aligned=aligned,
        )
    atlas, offsets, sizes = _build_atlas(maps)
    return _align_on_atlas(
        atlas,
        offsets,
        sizes,
        tf.constant([float(s) for s in strides]),
        boxes,
        level,
        output_size=output_size,
        sampling_ratio=sampling_ratio,
        dtype=maps[0].dtype,
        aligned=aligned,
    )


def _check_sizes(output_size: int, sampling_ratio: int) -> None:
    if int(output_size) < 1:
        raise ValueError(f"output_size must be >= 1, got {output_size}.")
    if int(sampling_ratio) < 1:
        raise ValueError(
            f"sampling_ratio must be >= 1, got {sampling_ratio} (the adaptive "
            "sampling_ratio=0 of torchvision needs a data-dependent grid and is not supported)."
        )


def _check_method(method: str) -> None:
    if method not in ROI_ALIGN_METHODS:
        raise ValueError(f"RoIAlign method must be one of {ROI_ALIGN_METHODS}, got {method!r}")


def _feature_map_for_stride(features: Mapping[str | int, tf.Tensor], stride: int) -> tf.Tensor:
    level = stride.bit_length() - 1
    if stride < 1 or 2**level != stride:
        raise ValueError(f"featmap_strides must be powers of two, got {stride}.")
    for key in (f"P{level}", level):
        if key in features:
            return features[key]
    raise KeyError(
        f"No feature map for stride {stride}: expected key 'P{level}' or {level}, "
        f"features has {sorted(map(str, features))}."
    )


def _atlas_layout(shapes: Sequence[tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
    """Where `_build_atlas` puts each level: offsets [L, 2] float32, the atlas (y, x) of
    pixel (0, 0) of each level, and the atlas size [2] int32 (Ha, Wa)."""
    heights = [s[0] + 2 for s in shapes]
    widths = [s[1] + 2 for s in shapes]
    if len(shapes) == 1:
        return tf.ones([1, 2], tf.float32), tf.stack([heights[0], widths[0]])
    column_height = tf.add_n(heights[1:])
    column_width = tf.reduce_max(tf.stack(widths[1:]))
    tops = [tf.constant(0, tf.int32)]
    for h in heights[1:-1]:
        tops.append(tops[-1] + h)
    offsets = [tf.stack([0, 0])] + [tf.stack([top, widths[0]]) for top in tops]
    size = tf.stack([tf.maximum(heights[0], column_height), widths[0] + column_width])
    return tf.cast(tf.stack(offsets), tf.float32) + 1.0, size


def _build_atlas(maps: Sequence[tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Packs edge-padded feature maps of each image into one float32 image.

    Each map [B, H_l, W_l, C] is padded by one copied edge row/column on every
    side. The first (finest) goes in the top-left corner, the others are stacked
    top to bottom in a column to its right; the rest is zeros (`_atlas_layout`).

    Returns:
        atlas [B, Ha, Wa, C] float32; offsets [L, 2] float32, the atlas (y, x) of
        pixel (0, 0) of each level; sizes [L, 2] float32, (H_l, W_l).
    """
    padded = [
        tf.pad(tf.cast(m, tf.float32), [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
        for m in maps
    ]
    shapes = [tf.shape(m)[1:3] for m in maps]
    sizes = tf.cast(tf.stack(shapes), tf.float32)
    offsets, atlas_size = _atlas_layout(shapes)
    first = padded[0]
    if len(padded) == 1:
        return first, offsets, sizes

    heights = [s[0] + 2 for s in shapes]
    widths = [s[1] + 2 for s in shapes]
    column_height = tf.add_n(heights[1:])
    column_width = atlas_size[1] - widths[0]
    column = tf.concat(
        [
            tf.pad(p, [[0, 0], [0, 0], [0, column_width - w], [0, 0]])
            for p, w in zip(padded[1:], widths[1:], strict=True)
        ],
        axis=1,
    )
    column = tf.pad(column, [[0, 0], [0, atlas_size[0] - column_height], [0, 0], [0, 0]])
    first = tf.pad(first, [[0, 0], [0, atlas_size[0] - heights[0]], [0, 0], [0, 0]])
    return tf.concat([first, column], axis=2), offsets, sizes


def _dims(tensor: tf.Tensor) -> list:
    """Static dimensions where known, dynamic scalars elsewhere."""
    dynamic = tf.shape(tensor)
    return [d if d is not None else dynamic[i] for i, d in enumerate(tensor.shape)]


class _Samples(NamedTuple):
    """The sample grid of M boxes on the atlas: `normalized` [M, 4] crop_and_resize boxes
    (their corners are the first and last samples), `mask` [M, samples, 2] float32, 1 for
    samples inside [-1, H] (y) and [-1, W] (x) of the box's level, 0 beyond."""

    normalized: tf.Tensor
    mask: tf.Tensor


def _samples_on_atlas(
    boxes: tf.Tensor,
    level: tf.Tensor,
    offsets: tf.Tensor,
    sizes: tf.Tensor,
    atlas_size: tf.Tensor,
    strides: tf.Tensor,
    *,
    samples: int,
    aligned: bool,
) -> _Samples:
    """Sample positions of `boxes` [B, N, 4] on their `level` [B, N], as crop_and_resize boxes
    on the atlas of `_atlas_layout` (both methods sample there, so they agree to rounding)."""
    flat_boxes = tf.reshape(boxes, [-1, 4])
    flat_level = tf.reshape(level, [-1])
    stride = tf.gather(strides, flat_level)[:, None]
    offset = tf.tile(tf.gather(offsets, flat_level), [1, 2])  # [M, 4] y, x, y, x
    size = tf.gather(sizes, flat_level)  # [M, 2] H, W

    # Box corners in the level's pixel coordinates (pixel centres at integers).
    corners = flat_boxes / stride - (0.5 if aligned else 0.0)
    start, end = corners[:, :2], corners[:, 2:]
    step = (end - start) / float(samples)
    first_sample = start + 0.5 * step
    last_sample = end - 0.5 * step

    # torchvision: a sample outside [-1, H] x [-1, W] contributes zero.
    index = tf.range(samples, dtype=tf.float32)[None, :, None] + 0.5
    coords = start[:, None, :] + index * step[:, None, :]  # [M, samples, 2]
    mask = tf.cast((coords >= -1.0) & (coords <= size[:, None, :]), tf.float32)

    atlas_extent = tf.maximum(tf.tile(tf.cast(atlas_size, tf.float32) - 1.0, [2]), 1.0)
    normalized = (tf.concat([first_sample, last_sample], axis=1) + offset) / atlas_extent
    return _Samples(normalized, mask)


def _align_on_atlas(
    atlas: tf.Tensor,
    offsets: tf.Tensor,
    sizes: tf.Tensor,
    strides: tf.Tensor,
    boxes: tf.Tensor,
    level: tf.Tensor,
    *,
    output_size: int,
    sampling_ratio: int,
    dtype: tf.DType,
    aligned: bool = True,
) -> tf.Tensor:
    """RoIAlign of `boxes` [B, N, 4] on their `level` [B, N] parts of `atlas`."""
    batch, num_boxes = _dims(boxes)[:2]
    channels = _dims(atlas)[-1]
    samples = output_size * sampling_ratio
    grid = _samples_on_atlas(
        boxes,
        level,
        offsets,
        sizes,
        tf.shape(atlas)[1:3],
        strides,
        samples=samples,
        aligned=aligned,
    )
    mask = grid.mask[:, :, None, 0:1] * grid.mask[:, None, :, 1:2]  # [M, samples, samples, 1]
    box_indices = tf.repeat(tf.range(batch), num_boxes)
    crops = tf.image.crop_and_resize(
        atlas,
        grid.normalized,
        box_indices,
        crop_size=(samples, samples),
        method="bilinear",
        extrapolation_value=0.0,
    )
    pooled = _masked_bin_means(crops, mask, sampling_ratio)
    pooled = tf.reshape(pooled, [batch, num_boxes, output_size, output_size, channels])
    return tf.cast(pooled, dtype)


def _masked_bin_means(crops: tf.Tensor, mask: tf.Tensor, sampling_ratio: int) -> tf.Tensor:
    """The mean of each bin's g x g samples, those outside the box's level zeroed.

    Args:
        crops: [M, S*g, S*g, C] samples (crop_and_resize's output), in the compute dtype.
        mask: [M, S*g, S*g, 1] of the same dtype, 1 for samples inside the level, 0 beyond.
        sampling_ratio: g.

    Returns:
        [M, S, S, C] bin values, in the dtype of `crops`.

    Forward: an average pool of the masked samples (several times faster on CPU than a
    reduce_mean over the strided sample axes). Backward, to `crops` only (the mask is a
    step function of the boxes, which get no gradient): each bin's gradient / g^2 spread
    over its samples and masked, in one broadcast product. Autodiff would run the pool's
    gradient and then the mask's product over [M, S*g, S*g, C] twice; the profile of the
    640 training step showed AvgPoolGrad alone at 5-10 % of its op time.
    """

    @tf.custom_gradient
    def bin_means(crops: tf.Tensor) -> tuple[tf.Tensor, object]:
        pooled = tf.nn.avg_pool2d(crops * mask, sampling_ratio, sampling_ratio, "VALID")

        def gradient(upstream: tf.Tensor) -> tf.Tensor:
            m, bins_y, bins_x, c = _dims(upstream)
            spread = tf.reshape(upstream, [m, bins_y, 1, bins_x, 1, c]) * tf.reshape(
                mask * (1.0 / sampling_ratio**2),
                [m, bins_y, sampling_ratio, bins_x, sampling_ratio, 1],
            )
            return tf.reshape(spread, [m, bins_y * sampling_ratio, bins_x * sampling_ratio, c])

        return pooled, gradient

    return bin_means(crops)


def _align_by_gather(
    maps: Sequence[tf.Tensor],
    strides: Sequence[int],
    boxes: tf.Tensor,
    level: tf.Tensor,
    *,
    output_size: int,
    sampling_ratio: int,
    aligned: bool,
) -> tf.Tensor:
    """RoIAlign of `boxes` [B, N, 4] on their `level` [B, N] of `maps` by bilinear gathers.

    The maps [B, H_l, W_l, C] of each image are flattened one after the other into one
    table [B * T, C] (T = sum of H_l * W_l). The samples are placed exactly as the
    crop_and_resize method places them on its atlas (`_samples_on_atlas`, crop_and_resize's
    own arithmetic: first corner * (Ha - 1) + j * scale), moved back to the level's pixels
    (subtracting the level's integer offset, exact) and read with the torchvision border
    rule (`bilinear.roi_align_samples`: the clamp the atlas's copied edges give).
    """
    batch, num_boxes = _dims(boxes)[:2]
    channels = _dims(maps[0])[-1]
    samples = output_size * sampling_ratio
    shapes = [tf.shape(m)[1:3] for m in maps]
    offsets, atlas_size = _atlas_layout(shapes)
    sizes = tf.cast(tf.stack(shapes), tf.float32)
    grid = _samples_on_atlas(
        boxes,
        level,
        offsets,
        sizes,
        atlas_size,
        tf.constant([float(s) for s in strides]),
        samples=samples,
        aligned=aligned,
    )
    # crop_and_resize's sample j: in = corner * (size - 1) + j * (far - near) * (size - 1)
    # / (samples - 1), in atlas pixels; back to the level's pixels.
    extent = tf.cast(atlas_size, tf.float32) - 1.0  # [2]
    flat_level = tf.reshape(level, [-1])
    near, far = grid.normalized[:, :2], grid.normalized[:, 2:]
    if samples > 1:
        scale = (far - near) * extent / float(samples - 1)
        positions = (
            near[:, None, :] * extent
            + tf.range(samples, dtype=tf.float32)[None, :, None] * scale[:, None, :]
        )
    else:
        positions = (0.5 * (near + far) * extent)[:, None, :]
    positions -= tf.gather(offsets, flat_level)[:, None, :]  # [M, samples, 2]

    pixels = [s[0] * s[1] for s in shapes]
    per_image = tf.add_n(pixels) if len(pixels) > 1 else pixels[0]
    starts = tf.stack(
        [tf.constant(0, tf.int32)] + [tf.add_n(pixels[: i + 1]) for i in range(len(pixels) - 1)]
    )
    table = tf.concat(
        [tf.reshape(tf.cast(m, tf.float32), [batch, -1, channels]) for m in maps], axis=1
    )
    table = tf.reshape(table, [-1, channels])
    image = tf.repeat(tf.range(batch), num_boxes)
    size = tf.gather(tf.stack(shapes), flat_level)  # [M, 2] H, W int32
    size_float = tf.cast(size, tf.float32)
    y = roi_align_samples(positions[:, :, 0], size_float[:, 0:1], grid.mask[:, :, 0])
    x = roi_align_samples(positions[:, :, 1], size_float[:, 1:2], grid.mask[:, :, 1])
    # Each bin: the mean of its g x g samples, summed term by term in the gathers.
    pooled = gather_bilinear(
        table,
        image * per_image + tf.gather(starts, flat_level),
        size[:, 1],
        y,
        x,
        group=sampling_ratio,
    )  # [M, S, S, C]
    pooled = tf.reshape(pooled, [batch, num_boxes, output_size, output_size, channels])
    return tf.cast(pooled, maps[0].dtype)


@keras.saving.register_keras_serializable(package="maskspine")
class RoIAligner(Part):
    """Multilevel RoIAlign of boxes on the backbone's features (`multilevel_roi_align`).

    Args:
        output_size, featmap_strides, finest_scale, sampling_ratio: see
            `multilevel_roi_align`.
        aligned: torchvision's `aligned=True` (the reference); False: one unaligned sample
            per bin as tensorflow/tpu `models/official/detection/ops/spatial_transform_ops.py`
            and Model Garden `official/vision/ops/spatial_transform_ops.py` sample.
        level_assignment: "finest_scale" (mmdetection, the reference) or "canonical" (the
            FPN paper's rule of both originals' `multilevel_crop_and_resize`).
        method: "crop_and_resize", or "gather" (XLA).

    Call: (features {"P3".. or 3..: [B, H_l, W_l, C]}, boxes [B, N, 4] yxyx input pixels)
    -> [B, N, S, S, C] in the features' dtype.
    """

    def __init__(
        self,
        *,
        output_size: int,
        featmap_strides: Sequence[int],
        finest_scale: int = 56,
        sampling_ratio: int = 2,
        aligned: bool = True,
        level_assignment: str = "finest_scale",
        method: str = "crop_and_resize",
        **kwargs,
    ) -> None:
        self.settings = {
            "output_size": int(output_size),
            "featmap_strides": [int(v) for v in featmap_strides],
            "finest_scale": finest_scale,
            "sampling_ratio": int(sampling_ratio),
            "aligned": bool(aligned),
            "level_assignment": level_assignment,
            "method": method,
        }
        super().__init__(self.settings, **kwargs)

    def call(self, features, boxes):
        return multilevel_roi_align(features, boxes, **self.settings)
