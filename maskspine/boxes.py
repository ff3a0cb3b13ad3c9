"""Box format converters, numpy, on the host: the one way between the model's boxes and the
files' boxes.

Inside the model boxes are `yxyx` (y1, x1, y2, x2) in absolute pixels; files (COCO
annotations and results, the reference's inference JSON) use COCO `xywh` (x, y, width,
height). Graph code (`maskspine.modeling.box_ops`) never converts: conversion happens at
the edges, after the model or when reading a file. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import numpy as np


def _as_float_array(boxes) -> np.ndarray:
    boxes = np.asarray(boxes)
    if not np.issubdtype(boxes.dtype, np.floating):
        boxes = boxes.astype(np.float32)
    if boxes.shape[-1:] != (4,):
        raise ValueError(f"boxes must be [..., 4], got shape {boxes.shape}")
    return boxes


def yxyx_to_xywh(boxes) -> np.ndarray:
    """(y1, x1, y2, x2) -> COCO (x, y, width, height).

    Args:
        boxes: [..., 4] array-like. Float inputs keep their dtype; others become float32.
    Returns:
        [..., 4] numpy array.
    """
    boxes = _as_float_array(boxes)
    y1, x1, y2, x2 = (boxes[..., i] for i in range(4))
    return np.stack([x1, y1, x2 - x1, y2 - y1], axis=-1)


def xywh_to_yxyx(boxes) -> np.ndarray:
    """COCO (x, y, width, height) -> (y1, x1, y2, x2).

    Args:
        boxes: [..., 4] array-like. Float inputs keep their dtype; others become float32.
    Returns:
        [..., 4] numpy array.
    """
    boxes = _as_float_array(boxes)
    x, y, w, h = (boxes[..., i] for i in range(4))
    return np.stack([y, x, y + h, x + w], axis=-1)


#: Box formats of the public API (`maskspine.load(...).predict`, `visualize.draw_instances`):
#: yxyx (the model's), xyxy (x1, y1, x2, y2: torchvision, Detectron2) and COCO's xywh.
BOX_FORMATS = ("yxyx", "xyxy", "xywh")


def convert_boxes(boxes, source: str, target: str) -> np.ndarray:
    """Boxes from one of `BOX_FORMATS` to another (through yxyx).

    Args:
        boxes: [..., 4] array-like in `source` format.
    Returns:
        [..., 4] numpy array in `target` format.
    """
    for box_format in (source, target):
        if box_format not in BOX_FORMATS:
            raise ValueError(f"box_format must be one of {BOX_FORMATS}, got {box_format!r}")
    boxes = _as_float_array(boxes)
    if source == target:
        return boxes
    if source != "yxyx":  # to yxyx
        boxes = xywh_to_yxyx(boxes) if source == "xywh" else boxes[..., [1, 0, 3, 2]]
    if target != "yxyx":  # from yxyx (xyxy swaps the axes both ways)
        boxes = yxyx_to_xywh(boxes) if target == "xywh" else boxes[..., [1, 0, 3, 2]]
    return boxes


def box_overlaps(boxes1, boxes2) -> tuple[np.ndarray, np.ndarray]:
    """IoU and intersection over the area of `boxes1`, host numpy (the graph's is
    `maskspine.modeling.box_ops.pairwise_overlaps`).

    Args:
        boxes1: [N, 4] yxyx; boxes2: [M, 4] yxyx (any units, the same in both).
    Returns:
        (iou [N, M], ioa [N, M]) float64; 0 where the union (the area) is 0.
    """
    a = _as_float_array(boxes1).reshape(-1, 4).astype(np.float64)
    b = _as_float_array(boxes2).reshape(-1, 4).astype(np.float64)
    top = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom - top, 0, None), axis=-1)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=-1)[:, None]
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=-1)[None, :]
    union = area_a + area_b - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
        ioa = np.where(area_a > 0, inter / area_a, 0.0)
    return iou, ioa
