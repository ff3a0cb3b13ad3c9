"""After the model: boxes back to the original image, masks pasted and RLE-encoded, JSON.

This is the one place that turns the model's fixed-shape outputs into per-image instances,
shared by `infer`, `eval` and the serving signature's full masks:

- `boxes_to_original` undoes the resize / shift recorded in `image_info`;
- `paste_masks` is the one mask paster (box-relative probabilities -> full-image binary masks);
- `encode_rle` is the one RLE path (pycocotools compressed RLE, counts as `str`);
- `detections_to_instances` runs the three on one image's outputs.

`maskspine.formats` turns the instances into the reference's inference JSON and COCO result
records. Everything here is numpy on the host (after the model), never TensorFlow:
`maskspine.postprocess_tf` is the graph twin of `boxes_to_original` and `paste_masks` for
the serving signatures, tested equal to these.

Model outputs (one image): `detection_boxes` [D, 4] yxyx in network-input pixels,
`detection_scores` [D], `detection_classes` [D] int32 contiguous 1-based (0 = padding),
`num_detections` [] int, `detection_masks` [D, M, M] probabilities relative to each box.
`image_info` [4, 2] rows: original (h, w); scaled (h, w); scale (y, x) = scaled / original;
offset (y, x), the pixels cropped off the scaled image's top-left corner (Model Garden's
convention, negative when the image was shifted right / down), so that
`input pixel = original pixel * scale - offset`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

#: Upper bound on the bytes of full-image masks held at once by `detections_to_instances`
#: (large photos times 100 detections would otherwise need gigabytes).
_MAX_PASTE_BYTES = 64 * 1024 * 1024


# --------------------------------------------------------------------------- boxes


def boxes_to_original(boxes_yxyx: np.ndarray, image_info: np.ndarray) -> np.ndarray:
    """Boxes from network-input pixels to original-image pixels, clipped to the image.

    Args:
        boxes_yxyx: [D, 4] (or [..., 4]) yxyx in network-input pixels.
        image_info: [4, 2] rows original (h, w); scaled (h, w); scale (y, x); offset (y, x).

    Returns:
        [D, 4] float32 yxyx in original pixels, `(input + offset) / scale`, clipped to
        [0, h] x [0, w] of the original image.

    Raises:
        ValueError: if `image_info` is not [4, 2] or a scale is not positive.
    """
    boxes = np.asarray(boxes_yxyx, dtype=np.float32)
    info = np.asarray(image_info, dtype=np.float32)
    if info.shape != (4, 2):
        raise ValueError(f"image_info must be [4, 2] for one image, got shape {info.shape}")
    if not np.all(info[2] > 0):
        raise ValueError(f"image_info scale (row 2) must be positive, got {info[2].tolist()}")
    scale = np.tile(info[2], 2)  # (y, x, y, x)
    offset = np.tile(info[3], 2)
    limits = np.tile(info[0], 2)
    original = (boxes + offset) / scale
    return np.clip(original, 0.0, limits).astype(np.float32)


# --------------------------------------------------------------------------- masks


def _axis_weights(
    pixel_start: int, pixel_end: int, box_start: float, box_end: float, mask_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear sampling of one axis: mask cells and weights for the pixels [start, end).

    The mask spans the box's continuous extent [box_start, box_end]; mask cell i's centre is at
    box_start + (i + 0.5) * extent / mask_size and image pixel p's centre at p + 0.5 (the
    `grid_sample(align_corners=False)` geometry Detectron2 / mmdet paste with). Pixel p reads
    cells floor(u) and floor(u) + 1 at u = (p + 0.5 - box_start) / extent * mask_size - 0.5;
    cells outside the mask count as 0 (their weight is set to 0).

    Returns:
        low, high: [n] int cell indices (clipped into the mask), low_weight, high_weight: [n]
        float32, n = pixel_end - pixel_start.
    """
    centres = np.arange(pixel_start, pixel_end, dtype=np.float64) + 0.5
    u = (centres - box_start) / (box_end - box_start) * mask_size - 0.5
    low = np.floor(u)
    high_weight = u - low
    low_weight = 1.0 - high_weight
    low = low.astype(np.int64)
    high = low + 1
    low_weight[(low < 0) | (low >= mask_size)] = 0.0
    high_weight[(high < 0) | (high >= mask_size)] = 0.0
    return (
        np.clip(low, 0, mask_size - 1),
        np.clip(high, 0, mask_size - 1),
        low_weight.astype(np.float32),
        high_weight.astype(np.float32),
    )


def _pixel_range(start: float, end: float, mask_size: int, limit: int) -> tuple[int, int]:
    """Pixels [first, last) whose value can be non-zero: the box plus half a mask cell."""
    halo = (end - start) / (2.0 * mask_size)
    first = max(int(math.floor(start - halo)), 0)
    last = min(int(math.ceil(end + halo)), limit)
    return first, last


def paste_masks(
    masks: np.ndarray,
    boxes_yxyx: np.ndarray,
    image_size: tuple[int, int],
    threshold: float = 0.5,
) -> np.ndarray:
    """Paste box-relative mask probabilities into full-image binary masks.

    Each mask is resized bilinearly onto its box's continuous extent (Detectron2 / mmdet
    `paste_masks_in_image` semantics: pixel centres at +0.5, mask cells spread evenly over the
    box, zero outside the mask) and thresholded with `>= threshold`. Only the pixels of each
    box (plus half a mask cell) are computed. A constant-1 mask in an integer box fills exactly
    the box's pixels.

    Args:
        masks: [D, Mh, Mw] float probabilities relative to each box.
        boxes_yxyx: [D, 4] yxyx in pixels of the output image (original pixels after
            `boxes_to_original`); parts outside the image are cut off.
        image_size: (height, width) of the output masks.
        threshold: a pixel is foreground when its interpolated probability is >= this,
            0 < threshold <= 1.

    Returns:
        [D, height, width] uint8 in {0, 1}. Empty masks for boxes with zero or negative size
        or non-finite coordinates. (The array is a transposed view of a [D, width, height]
        buffer, the layout `encode_rle` needs, so encoding does not copy it.)

    Raises:
        ValueError: on mismatched shapes or a threshold outside (0, 1].
    """
    masks = np.asarray(masks, dtype=np.float32)
    boxes = np.asarray(boxes_yxyx, dtype=np.float64)
    height, width = (int(v) for v in image_size)
    if masks.ndim != 3:
        raise ValueError(f"masks must be [D, M, M], got shape {masks.shape}")
    if boxes.shape != (masks.shape[0], 4):
        raise ValueError(f"boxes must be [{masks.shape[0]}, 4] to match masks, got {boxes.shape}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"mask threshold must be in (0, 1], got {threshold}")
    count, mask_height, mask_width = masks.shape
    pasted = np.zeros((count, width, height), dtype=np.uint8)  # transposed: see Returns
    for index in range(count):
        y1, x1, y2, x2 = boxes[index]
        if not (np.all(np.isfinite(boxes[index])) and y2 > y1 and x2 > x1):
            continue
        row0, row1 = _pixel_range(y1, y2, mask_height, height)
        col0, col1 = _pixel_range(x1, x2, mask_width, width)
        if row1 <= row0 or col1 <= col0:
            continue
        # Separable bilinear interpolation with gathers: no BLAS call, whose threads cost more
        # than they save on these small products when the cores are busy.
        row_low, row_high, row_low_w, row_high_w = _axis_weights(row0, row1, y1, y2, mask_height)
        col_low, col_high, col_low_w, col_high_w = _axis_weights(col0, col1, x1, x2, mask_width)
        mask = masks[index]
        by_rows = (  # [r, Mw] -> [Mw, r]
            mask[row_low] * row_low_w[:, None] + mask[row_high] * row_high_w[:, None]
        ).T
        region = (  # [c, r], the layout of the transposed buffer
            by_rows[col_low] * col_low_w[:, None] + by_rows[col_high] * col_high_w[:, None]
        )
        pasted[index, col0:col1, row0:row1] = region >= threshold
    return pasted.transpose(0, 2, 1)


def encode_rle(masks: np.ndarray) -> list[dict[str, Any]]:
    """COCO compressed RLE of binary masks (pycocotools, column-major).

    Args:
        masks: [D, height, width] binary (uint8 or bool).

    Returns:
        D dicts `{"size": [height, width], "counts": str}`, JSON-serialisable and accepted by
        `pycocotools.mask.decode` / `COCO.loadRes` as they are.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be [D, height, width], got shape {masks.shape}")
    if masks.shape[0] == 0:
        return []
    # [h, w, D] column-major: free for the layout paste_masks returns.
    stacked = np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8, copy=False))
    encoded = mask_utils.encode(stacked)
    return [
        {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
        for rle in encoded
    ]


# --------------------------------------------------------------------------- instances


def _kept_detections(
    outputs: Mapping[str, Any], image_info: np.ndarray, score_threshold: float
) -> dict[str, Any]:
    """The valid detections of one image scoring at least `score_threshold`, by score
    (highest first): `boxes` [N, 4] yxyx original pixels, `scores` [N], `labels` [N]
    (contiguous 1-based), `masks` [N, M, M] box-relative probabilities, `size` (h, w)."""
    missing = [
        key
        for key in ("detection_boxes", "detection_scores", "detection_classes", "detection_masks")
        if key not in outputs
    ]
    if missing:
        raise KeyError(f"model outputs lack {missing}; got keys {sorted(outputs)}")
    boxes = np.asarray(outputs["detection_boxes"], dtype=np.float32)
    scores = np.asarray(outputs["detection_scores"], dtype=np.float32)
    classes = np.asarray(outputs["detection_classes"]).astype(np.int64)
    masks = np.asarray(outputs["detection_masks"], dtype=np.float32)
    if boxes.ndim != 2:
        raise ValueError(f"detection_boxes must be [D, 4] for one image, got {boxes.shape}")
    count = len(boxes)
    if "num_detections" in outputs:
        count = min(count, int(np.asarray(outputs["num_detections"]).reshape(())))
    keep = np.zeros(len(boxes), dtype=bool)
    keep[:count] = True
    keep &= (classes > 0) & (scores >= score_threshold)
    indices = np.flatnonzero(keep)
    indices = indices[np.argsort(-scores[indices], kind="stable")]
    info = np.asarray(image_info, dtype=np.float32)
    height, width = (int(round(float(v))) for v in info[0])
    return {
        "boxes": boxes_to_original(boxes[indices], info).reshape(-1, 4),
        "scores": scores[indices],
        "labels": classes[indices],
        "masks": masks[indices],
        "size": (height, width),
    }


def detections_to_arrays(
    outputs: Mapping[str, Any],
    image_info: np.ndarray,
    *,
    score_threshold: float = 0.0,
    mask_threshold: float = 0.5,
) -> dict[str, Any]:
    """One image's model outputs -> arrays in original pixels with full-size masks.

    Args: as `detections_to_instances`.

    Returns:
        `boxes` [N, 4] float32 yxyx original pixels (clipped to the image), `scores` [N]
        float32, `labels` [N] int64 (contiguous 1-based), `masks` [N, height, width] bool
        at the original size; sorted by score (highest first).
    """
    kept = _kept_detections(outputs, image_info, score_threshold)
    masks = paste_masks(kept["masks"], kept["boxes"], kept["size"], mask_threshold)
    return {
        "boxes": kept["boxes"],
        "scores": kept["scores"],
        "labels": kept["labels"],
        "masks": np.ascontiguousarray(masks, dtype=bool),
    }


def detections_to_instances(
    outputs: Mapping[str, Any],
    image_info: np.ndarray,
    *,
    score_threshold: float = 0.0,
    mask_threshold: float = 0.5,
) -> list[dict[str, Any]]:
    """One image's model outputs -> instances in original pixels with RLE masks.

    Args:
        outputs: numpy (or tensors) for ONE image: `detection_boxes` [D, 4] yxyx input pixels,
            `detection_scores` [D], `detection_classes` [D] (contiguous 1-based, 0 = padding),
            `num_detections` [] and `detection_masks` [D, M, M] box-relative probabilities.
        image_info: [4, 2] of this image (see the module docstring).
        score_threshold: detections with a score below this are dropped.
        mask_threshold: probability threshold of `paste_masks`.

    Returns:
        Instances sorted by score (highest first), each a dict with `box_yxyx` (4 floats,
        original pixels, clipped to the image), `score` (float), `label` (int, contiguous
        1-based) and `rle` (`{"size": [h, w], "counts": str}` at the original size).
    """
    kept = _kept_detections(outputs, image_info, score_threshold)
    height, width = kept["size"]
    chunk = max(1, _MAX_PASTE_BYTES // max(height * width, 1))
    rles: list[dict[str, Any]] = []
    for start in range(0, len(kept["boxes"]), chunk):
        part = slice(start, start + chunk)
        pasted = paste_masks(
            kept["masks"][part], kept["boxes"][part], (height, width), mask_threshold
        )
        rles.extend(encode_rle(pasted))
    return [
        {
            "box_yxyx": [float(v) for v in box],
            "score": float(score),
            "label": int(label),
            "rle": rle,
        }
        for box, score, label, rle in zip(kept["boxes"], kept["scores"], kept["labels"], rles)
    ]
