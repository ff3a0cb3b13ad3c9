"""Small COCO-format folders written by the data tests themselves (no downloads, no cache)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from maskspine.config import Config

#: Categories in file order, with id gaps, not sorted: sorted they are cat(3), dog(7), zebra(20).
MESSY_CATEGORIES = [
    {"id": 20, "name": "zebra"},
    {"id": 3, "name": "cat"},
    {"id": 7, "name": "dog"},
]


def _save(image: Image.Image, path: Path, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)


def _rle_uncompressed(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE (column-major run lengths starting with zeros), in numpy."""
    flat = mask.T.reshape(-1).astype(np.uint8)
    counts, current, run = [], 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def write_labels(folder: Path, images: list, annotations: list, categories: list) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data").mkdir(exist_ok=True)
    path = folder / "labels.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return path


def make_messy_folder(folder: Path) -> Path:
    """A split folder with every kind of input the readers must cope with.

    Images: a.png (RGB, 48x64), b.jpg (RGB JPEG), gray.png (L), rgba.png (RGBA),
    palette.png (P), broken.jpg (truncated), missing.png (absent), garbage.png (not an
    image), empty.png (no annotations).
    Annotations on a.png: 1 polygon of two parts (cat), 2 uncompressed RLE (dog),
    3 compressed RLE (zebra), 4 crowd uncompressed RLE (cat), 5 zero-width box (dog),
    6 two-point polygon (dog). b.jpg: 7 (dog). gray.png: 8 (zebra), rgba.png: 10 (cat),
    palette.png: 11 (dog), broken.jpg: 9 (cat), garbage.png: 12 (cat).
    """
    data = folder / "data"
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    _save(Image.fromarray(pixels), data / "a.png")
    _save(Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)), data / "b.jpg")
    _save(Image.fromarray(rng.integers(0, 255, (30, 40), dtype=np.uint8)), data / "gray.png")
    rgba = rng.integers(0, 255, (30, 40, 4), dtype=np.uint8)
    _save(Image.fromarray(rgba, "RGBA"), data / "rgba.png")
    palette = Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).convert(
        "P", palette=Image.ADAPTIVE, colors=16
    )
    _save(palette, data / "palette.png")
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(buffer, "JPEG")
    (data / "broken.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (data / "garbage.png").write_bytes(b"this is not an image at all")
    _save(Image.fromarray(np.zeros((20, 30, 3), np.uint8)), data / "empty.png")

    blob = np.zeros((48, 64), np.uint8)
    blob[5:20, 30:50] = 1
    blob[8:12, 52:60] = 1
    crowd = np.zeros((48, 64), np.uint8)
    crowd[30:45, 2:30] = 1
    compressed = mask_utils.encode(np.asfortranarray(np.roll(blob, 20, axis=0)))
    images = [
        {"id": 101, "file_name": "a.png", "height": 48, "width": 64},
        {"id": 102, "file_name": "b.jpg", "height": 40, "width": 50},
        {"id": 103, "file_name": "gray.png", "height": 30, "width": 40},
        {"id": 104, "file_name": "rgba.png", "height": 30, "width": 40},
        {"id": 105, "file_name": "palette.png", "height": 30, "width": 40},
        {"id": 106, "file_name": "broken.jpg", "height": 40, "width": 50},
        {"id": 107, "file_name": "missing.png", "height": 40, "width": 50},
        {"id": 108, "file_name": "garbage.png", "height": 40, "width": 50},
        {"id": 109, "file_name": "empty.png", "height": 20, "width": 30},
    ]
    square = [[2.0, 2.0, 12.0, 2.0, 12.0, 12.0, 2.0, 12.0]]
    annotations = [
        {
            "id": 1,
            "image_id": 101,
            "category_id": 3,
            "segmentation": [
                [4.0, 4.0, 20.0, 4.5, 12.0, 18.0],
                [40.5, 30.0, 60.0, 32.0, 58.0, 44.0, 42.0, 40.0],
            ],
            "bbox": [4.0, 4.0, 56.0, 40.0],
            "iscrowd": 0,
        },
        {
            "id": 2,
            "image_id": 101,
            "category_id": 7,
            "segmentation": _rle_uncompressed(blob),
            "bbox": [30.0, 5.0, 30.0, 15.0],
            "iscrowd": 0,
        },
        {
            "id": 3,
            "image_id": 101,
            "category_id": 20,
            "segmentation": {"size": [48, 64], "counts": compressed["counts"].decode()},
            "bbox": [30.0, 25.0, 30.0, 15.0],
            "iscrowd": 0,
        },
        {
            "id": 4,
            "image_id": 101,
            "category_id": 3,
            "segmentation": _rle_uncompressed(crowd),
            "bbox": [2.0, 30.0, 28.0, 15.0],
            "iscrowd": 1,
        },
        {
            "id": 5,
            "image_id": 101,
            "category_id": 7,
            "segmentation": square,
            "bbox": [2.0, 2.0, 0.0, 10.0],
            "iscrowd": 0,
        },
        {
            "id": 6,
            "image_id": 101,
            "category_id": 7,
            "segmentation": [[10.0, 10.0, 20.0, 20.0]],
            "bbox": [10.0, 10.0, 10.0, 10.0],
            "iscrowd": 0,
        },
        {
            "id": 7,
            "image_id": 102,
            "category_id": 7,
            "segmentation": square,
            "bbox": [2.0, 2.0, 10.0, 10.0],
            "iscrowd": 0,
        },
    ]
    for annotation_id, image_id, category in (
        (8, 103, 20),
        (9, 106, 3),
        (10, 104, 3),
        (11, 105, 7),
        (12, 108, 3),
    ):
        annotations.append(
            {
                "id": annotation_id,
                "image_id": image_id,
                "category_id": category,
                "segmentation": square,
                "bbox": [2.0, 2.0, 10.0, 10.0],
                "iscrowd": 0,
            }
        )
    return write_labels(folder, images, annotations, MESSY_CATEGORIES)


#: Colours of the shapes in `shapes_folder` images, one per category (ids 1, 2, 3).
SHAPE_COLOURS = {1: (255, 0, 0), 2: (0, 255, 0), 3: (0, 0, 255)}


def make_colour_folder(folder: Path, num_images: int = 4, seed: int = 0) -> Path:
    """Images (120 x 160) of a red rectangle, a green triangle and a blue rectangle on a
    black ground, annotated as polygons: the colour of a pixel says which instance it is."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for index in range(num_images):
        height, width = 120, 160
        canvas = Image.new("RGB", (width, height), (0, 0, 0))
        draw = ImageDraw.Draw(canvas)
        y0, x0 = rng.integers(5, 40), rng.integers(5, 40)
        rectangle = [float(x0), float(y0), float(x0 + 40), float(y0 + 30)]
        draw.rectangle([x0, y0, x0 + 39, y0 + 29], fill=SHAPE_COLOURS[1])
        tri = [(100.0, 10.0), (150.0, 20.0), (110.0, 60.0)]
        draw.polygon(tri, fill=SHAPE_COLOURS[2])
        draw.rectangle([60, 80, 139, 109], fill=SHAPE_COLOURS[3])
        file_name = f"{index:03d}.png"
        _save(canvas, folder / "data" / file_name)
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        polygons = {
            1: [rectangle[0], rectangle[1], rectangle[2], rectangle[1], rectangle[2],
                rectangle[3], rectangle[0], rectangle[3]],
            2: [v for point in tri for v in point],
            3: [60.0, 80.0, 140.0, 80.0, 140.0, 110.0, 60.0, 110.0],
        }  # fmt: skip
        for category, polygon in polygons.items():
            xs, ys = polygon[0::2], polygon[1::2]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "segmentation": [polygon],
                    "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": 1, "name": "red"}, {"id": 2, "name": "green"}, {"id": 3, "name": "blue"}]
    return write_labels(folder, images, annotations, categories)


def make_config(**overrides) -> Config:
    """A small config for pipeline tests: 128 x 128, no augmentation, classes from the data."""
    values = {
        "img_height": 128,
        "img_width": 128,
        "divider": 32,
        "num_gts": 8,
        "mask_crop_size": 28,
        "batch_size": 2,
        "test_batch_size": 1,
        "flip_ratio": 0.0,
        "expand_ratio": 0.0,
        "aug_scale_min": 1.0,
        "aug_scale_max": 1.0,
        "coco_classes": "from_data",
        "num_parallel_workers": 2,
        "seed": 0,
    }
    values.update(overrides)
    return Config(**values)
