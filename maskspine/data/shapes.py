"""The synthetic shapes data set: the embedded default, made locally from a seed.

Images of circles, squares and triangles with random sizes, colours, overlaps and
backgrounds (flat, gradients, noise, blotches), written as COCO-format folders in the
reference's layout so the same code path reads them as any user data:

    <root>/train/data/000001.png        <root>/train/labels.json
    <root>/validation/data/000001.png   <root>/validation/labels.json

Masks are exact: every shape is painted through its own mask, and a shape painted later
cuts the visible mask of the shapes under it (occlusion). Instances are stored as COCO
compressed RLE with `iscrowd` 0, boxes (`xywh`) are the tight boxes of the visible masks.

Everything depends only on the seed and the `ShapesSpec`: image `i` of a split comes from
its own random generator seeded by (seed, split, i), so the files are identical from run to
run, and the first images do not change when the split grows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from maskspine.threads import host_cores

logger = logging.getLogger(__name__)

#: The classes, in category id order (ids 1, 2, 3).
SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle")

#: Split folder names, in the reference's layout.
TRAIN_SPLIT = "train"
VALIDATION_SPLIT = "validation"

_FORMAT_VERSION = 1  # bump when the drawing changes, so old caches are not reused

#: Images per task when a split is drawn by several processes; below two chunks' worth of
#: images in all, one process draws everything (starting workers costs about 0.3 s).
_CHUNK = 50


@dataclass(frozen=True)
class ShapesSpec:
    """What the generator draws. Sizes are pixels.

    Attributes:
        num_train: images in the train split.
        num_validation: images in the validation split.
        min_image_size, max_image_size: range of each image's height and width (drawn
            independently, so aspect ratios vary).
        min_shapes, max_shapes: shapes per image.
        min_shape_size: smallest shape diameter (circle) or side (square, triangle).
        max_shape_fraction: largest shape size as a fraction of the image's shorter side.
        min_visible_fraction: a shape is redrawn elsewhere when a later one would leave less
            than this fraction of an earlier shape visible.
    """

    num_train: int = 600
    num_validation: int = 100
    min_image_size: int = 240
    max_image_size: int = 320
    min_shapes: int = 1
    max_shapes: int = 6
    min_shape_size: int = 24
    max_shape_fraction: float = 0.45
    min_visible_fraction: float = 0.5

    def fingerprint(self) -> str:
        """A short hash of the spec, naming its cache directory."""
        text = json.dumps(
            {**dataclasses.asdict(self), "format": _FORMAT_VERSION}, sort_keys=True
        ).encode()
        return hashlib.sha1(text).hexdigest()[:8]


def shapes_categories() -> list[tuple[int, str]]:
    """The shapes set's categories as (category_id, name), sorted by id."""
    return [(index + 1, name) for index, name in enumerate(SHAPE_CLASSES)]


def default_data_root() -> Path:
    """Where generated and prepared data live: `$MASKSPINE_DATA_DIR`, else
    `~/.cache/maskspine`."""
    configured = os.environ.get("MASKSPINE_DATA_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "maskspine"


def shapes_directory(seed: int = 0, spec: ShapesSpec | None = None, data_dir=None) -> Path:
    """The folder that holds (or will hold) the shapes set for `seed` and `spec`."""
    spec = spec or ShapesSpec()
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_root()
    return root / "shapes" / f"seed{seed}-{spec.fingerprint()}"


def ensure_shapes(
    seed: int = 0, spec: ShapesSpec | None = None, *, data_dir: str | Path | None = None
) -> Path:
    """Generates the shapes set once and returns its root (with `train/`, `validation/`).

    Safe to call from several processes at once: each writes into its own temporary
    folder and the first to finish renames it into place.
    """
    spec = spec or ShapesSpec()
    target = shapes_directory(seed, spec, data_dir)
    if (target / VALIDATION_SPLIT / "labels.json").is_file() and (
        target / TRAIN_SPLIT / "labels.json"
    ).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info(
        "generating the shapes data set (%d train, %d validation images, seed %d) in %s",
        spec.num_train,
        spec.num_validation,
        seed,
        target,
    )
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    # the CPUs this process may use: a container's CPU quota counts (maskspine.threads)
    workers = min(host_cores(), (spec.num_train + spec.num_validation) // _CHUNK)
    pool = _worker_pool(workers) if workers > 1 else None
    try:
        for split_index, (split, count) in enumerate(
            ((TRAIN_SPLIT, spec.num_train), (VALIDATION_SPLIT, spec.num_validation))
        ):
            write_shapes_split(
                staging / split,
                count,
                seed=seed,
                split_index=split_index,
                spec=spec,
                executor=pool,
            )
        try:
            staging.rename(target)
        except OSError:
            if not (target / VALIDATION_SPLIT / "labels.json").is_file():
                raise
            # Another process finished first; its copy is identical.
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def write_shapes_split(
    folder: str | Path,
    num_images: int,
    *,
    seed: int = 0,
    split_index: int = 0,
    spec: ShapesSpec | None = None,
    executor: Executor | None = None,
) -> Path:
    """Writes one split: `folder/data/NNNNNN.png` and `folder/labels.json`.

    Args:
        executor: draws the images in chunks of `_CHUNK` when given (a process pool:
            drawing and PNG encoding hold the GIL); the files are the same either way,
            since every image has its own generator and the annotation ids are given in
            image order afterwards.

    Returns:
        The labels.json path.
    """
    spec = spec or ShapesSpec()
    folder = Path(folder)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    chunks = [(start, min(start + _CHUNK, num_images)) for start in range(0, num_images, _CHUNK)]
    if executor is None:
        parts = [_draw_images(folder, first, end, seed, split_index, spec) for first, end in chunks]
    else:
        futures = [
            executor.submit(_draw_images, folder, first, end, seed, split_index, spec)
            for first, end in chunks
        ]
        parts = [future.result() for future in futures]
    images = [image for part_images, _ in parts for image in part_images]
    annotations = [
        {"id": number, **annotation}
        for number, annotation in enumerate(
            (annotation for _, part_annotations in parts for annotation in part_annotations),
            start=1,
        )
    ]
    labels = {
        "info": {
            "description": "maskspine synthetic shapes",
            "seed": seed,
            "split_index": split_index,
            "spec": dataclasses.asdict(spec),
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": category_id, "name": name, "supercategory": "shape"}
            for category_id, name in shapes_categories()
        ],
    }
    path = folder / "labels.json"
    path.write_text(json.dumps(labels))
    return path


def _draw_images(
    folder: Path, first: int, end: int, seed: int, split_index: int, spec: ShapesSpec
) -> tuple[list[dict], list[dict]]:
    """Draws and writes images `first` .. `end - 1` of a split; returns their COCO image
    entries and annotations (without ids), in order."""
    images, annotations = [], []
    for index in range(first, end):
        rng = np.random.default_rng([seed, split_index, index])
        pixels, instances = render_shapes_image(rng, spec)
        image_id = index + 1
        file_name = f"{image_id:06d}.png"
        Image.fromarray(pixels).save(folder / "data" / file_name, compress_level=1)
        height, width = pixels.shape[:2]
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for class_index, mask in instances:
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            annotations.append(
                {
                    "image_id": image_id,
                    "category_id": class_index + 1,
                    "segmentation": {"size": [height, width], "counts": rle["counts"].decode()},
                    "area": float(mask_utils.area(rle)),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": 0,
                }
            )
    return images, annotations


def _worker_pool(workers: int) -> ProcessPoolExecutor:
    """Processes for drawing, started fresh ("spawn"): the caller may hold TensorFlow's
    threads, which a forked child would inherit in whatever state they were."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


# --------------------------------------------------------------------------- drawing


def render_shapes_image(
    rng: np.random.Generator, spec: ShapesSpec | None = None
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Draws one image.

    Returns:
        pixels: uint8 [H, W, 3] RGB.
        instances: (class index into SHAPE_CLASSES, visible mask bool [H, W]) per shape,
            in painting order; every mask has at least one pixel.
    """
    spec = spec or ShapesSpec()
    height = int(rng.integers(spec.min_image_size, spec.max_image_size + 1))
    width = int(rng.integers(spec.min_image_size, spec.max_image_size + 1))
    pixels = _background(rng, height, width)
    visible: list[np.ndarray] = []
    classes: list[int] = []
    full_areas: list[int] = []
    num_shapes = int(rng.integers(spec.min_shapes, spec.max_shapes + 1))
    max_size = max(spec.min_shape_size + 1, int(spec.max_shape_fraction * min(height, width)))
    for _ in range(num_shapes):
        for _attempt in range(20):
            class_index = int(rng.integers(len(SHAPE_CLASSES)))
            size = float(rng.uniform(spec.min_shape_size, max_size))
            mask = _shape_mask(rng, class_index, size, height, width)
            area = int(mask.sum())
            if area == 0:
                continue
            remaining = [int((earlier & ~mask).sum()) for earlier in visible]
            if all(
                left >= spec.min_visible_fraction * full
                for left, full in zip(remaining, full_areas, strict=True)
            ):
                break
        else:
            continue  # no room left for another shape
        visible = [earlier & ~mask for earlier in visible]
        visible.append(mask)
        classes.append(class_index)
        full_areas.append(area)
        pixels[mask] = _contrasting_colour(rng, pixels[mask])
    noise = float(rng.uniform(0.0, 6.0))
    if noise > 0.5:
        pixels = np.clip(pixels + rng.normal(0.0, noise, pixels.shape), 0, 255)
    return pixels.astype(np.uint8), list(zip(classes, visible, strict=True))


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """float64 [H, W, 3] in 0..255: flat, a linear gradient, noise or smooth blotches."""
    kind = int(rng.integers(4))
    first = rng.uniform(0, 255, 3)
    if kind == 0:
        return np.broadcast_to(first, (height, width, 3)).copy()
    if kind == 1:
        second = rng.uniform(0, 255, 3)
        angle = rng.uniform(0, 2 * np.pi)
        ys, xs = np.mgrid[0:height, 0:width]
        along = np.cos(angle) * xs / width + np.sin(angle) * ys / height
        along = (along - along.min()) / max(float(np.ptp(along)), 1e-6)
        return first + along[..., None] * (second - first)
    if kind == 2:
        sigma = rng.uniform(10, 30)
        return np.clip(first + rng.normal(0, sigma, (height, width, 3)), 0, 255)
    coarse = rng.uniform(0, 255, (int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3))
    smooth = Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.BICUBIC)
    return np.asarray(smooth, dtype=np.float64)


def _shape_mask(
    rng: np.random.Generator, class_index: int, size: float, height: int, width: int
) -> np.ndarray:
    """bool [H, W]: a shape of `size` (diameter / side) lying inside the image."""
    half = size / 2
    cy = rng.uniform(half, height - half)
    cx = rng.uniform(half, width - half)
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    name = SHAPE_CLASSES[class_index]
    if name == "circle":
        draw.ellipse([cx - half, cy - half, cx + half, cy + half], fill=1)
    else:
        corners = 4 if name == "square" else 3
        # Circumradius of a square of side s is s / sqrt(2); of a triangle s / sqrt(3).
        radius = size / np.sqrt(2.0) if corners == 4 else size / np.sqrt(3.0)
        start = rng.uniform(0, 2 * np.pi)
        angles = start + np.arange(corners) * 2 * np.pi / corners
        points = [(cx + radius * np.cos(a), cy + radius * np.sin(a)) for a in angles]
        draw.polygon(points, fill=1)
    return np.asarray(canvas, dtype=bool)


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """An RGB colour (float64 [3]) that stands out against the pixels it will cover."""
    reference = under.mean(axis=0) if len(under) else np.full(3, 127.0)
    best, best_distance = None, -1.0
    for _ in range(20):
        colour = rng.uniform(0, 255, 3)
        distance = float(np.linalg.norm(colour - reference))
        if distance > best_distance:
            best, best_distance = colour, distance
        if distance >= 110:
            break
    return best
