"""A tiny COCO ground truth written to disk, and hand-built predictions for it.

Three images, three categories with non-contiguous ids (3 cat / 5 dog in supercategory
"animal", 7 car in "vehicle"), every object an axis-aligned rectangle with integer corners,
given as a polygon, a compressed RLE or an uncompressed RLE. A polygon rectangle with integer
corners rasterises (pycocotools) to exactly the pixels [y0, y1) x [x0, x1), so box and mask
IoUs of rectangles are the same hand-computable numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils

IMAGES = {1: (60, 80), 2: (50, 50), 3: (40, 70)}  # id -> (height, width)
CATEGORIES = [
    {"id": 3, "name": "cat", "supercategory": "animal"},
    {"id": 5, "name": "dog", "supercategory": "animal"},
    {"id": 7, "name": "car", "supercategory": "vehicle"},
]
# annotation id -> (image id, category id, (y0, y1, x0, x1), segmentation kind)
OBJECTS = {
    1: (1, 3, (10, 30, 10, 40), "polygon"),
    2: (1, 7, (35, 55, 45, 75), "rle"),
    3: (2, 5, (5, 25, 5, 45), "polygon"),
    4: (3, 7, (10, 30, 20, 60), "uncompressed"),
}


def rectangle_mask(image_id: int, rect) -> np.ndarray:
    height, width = IMAGES[image_id]
    y0, y1, x0, x1 = rect
    mask = np.zeros((height, width), np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def rectangle_rle(image_id: int, rect) -> dict:
    rle = mask_utils.encode(np.asfortranarray(rectangle_mask(image_id, rect)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def uncompressed_rle(mask: np.ndarray) -> dict:
    flat = mask.flatten(order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def xywh(rect) -> list[float]:
    y0, y1, x0, x1 = rect
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def ground_truth(*, supercategories: bool = True) -> dict:
    annotations = []
    for annotation_id, (image_id, category_id, rect, kind) in OBJECTS.items():
        y0, y1, x0, x1 = rect
        if kind == "polygon":
            segmentation = [[x0, y0, x1, y0, x1, y1, x0, y1]]
        elif kind == "rle":
            segmentation = rectangle_rle(image_id, rect)
        else:
            segmentation = uncompressed_rle(rectangle_mask(image_id, rect))
        annotations.append(
            {
                "id": annotation_id,
                "image_id": image_id,
                "category_id": category_id,
                "bbox": xywh(rect),
                "area": float((y1 - y0) * (x1 - x0)),
                "iscrowd": 0,
                "segmentation": segmentation,
            }
        )
    categories = [dict(c) for c in CATEGORIES]
    if not supercategories:
        for category in categories:
            del category["supercategory"]
    return {
        "images": [
            {"id": i, "file_name": f"{i:06d}.jpg", "height": h, "width": w}
            for i, (h, w) in IMAGES.items()
        ],
        "categories": categories,
        "annotations": annotations,
    }


def write_ground_truth(folder: Path, **kwargs) -> Path:
    path = Path(folder) / "labels.json"
    path.write_text(json.dumps(ground_truth(**kwargs)))
    return path


def result(image_id: int, category_id: int, rect, score: float) -> dict:
    """A COCO result record whose box and mask are the rectangle."""
    return {
        "image_id": image_id,
        "category_id": category_id,
        "bbox": xywh(rect),
        "score": score,
        "segmentation": rectangle_rle(image_id, rect),
    }


def perfect_results() -> list[dict]:
    return [
        result(image_id, category_id, rect, 0.9 - 0.1 * index)
        for index, (image_id, category_id, rect, _) in enumerate(OBJECTS.values())
    ]
