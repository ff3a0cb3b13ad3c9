"""Image files -> predictions in the reference's inference JSON, and drawing them.

    model, config, _ = load_model("runs/260101_MaskRCNN_shapes_256x256")
    entries, failures = predict_images(model, config, find_images("photos/"))
    save_inference_json("predictions.json", entries)
    ax = draw_inference_entry(image, entries["photos/a.jpg"], score_threshold=0.5)

Images are read as the evaluation pipeline reads them (`maskspine.data.coco.read_image_bytes`
then `pipeline.decode_image`: JPEG / PNG in any mode, RGB, grayscale, RGBA without its alpha,
palette; pixel rows as stored, EXIF orientation not applied, as for COCO annotations) and
resized and padded by `pipeline.preprocess_image`. The model runs on fixed-size batches (the
last one padded); its outputs go through `maskspine.postprocess` (the one mask paster and the
one RLE path `eval` uses too).

The JSON is the reference's (its "Inference result" section): an object keyed by image path,
each `{"height", "width", "predictions": [{"bbox": {"x_min", "y_min", "width", "height"},
"class": {"label", "category_id", "name"}, "mask": {"size": [h, w], "counts"}, "score"}]}`,
boxes in original pixels, `label` 0-based without background, `category_id` the data set's id
(or `"unknown"` when the config has no `category_ids`), masks COCO compressed RLE at the
original size, predictions sorted by score.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from maskspine.postprocess import (
    UNKNOWN_CATEGORY_ID,
    detections_to_instances,
    to_reference_json,
)

if TYPE_CHECKING:
    import tensorflow as tf
    from matplotlib.axes import Axes

    from maskspine.config import Config

#: File name endings (case-insensitive) of the images taken from a folder.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
#: The model outputs the post-processing reads.
OUTPUT_KEYS = (
    "detection_boxes",
    "detection_scores",
    "detection_classes",
    "num_detections",
    "detection_masks",
)
#: Drawings of small images are scaled up by an integer factor to at least this many pixels
#: on the longer side, so that class names and scores stay legible.
MIN_DRAWING_SIZE = 480


#: PIL names the in-memory buffer it could not identify; that says nothing to a user.
_IN_MEMORY_FILE = re.compile(r" <_io\.BytesIO object at 0x[0-9a-fA-F]+>")


class InferenceError(ValueError):
    """Input that inference or drawing cannot use; the message names the file and the fix."""


# --------------------------------------------------------------------------- inputs


def find_images(path: str | os.PathLike) -> list[Path]:
    """The images to run on: a file as given, or every JPEG / PNG in a folder's top level.

    In a folder, files ending in .jpg, .jpeg or .png (any case) are taken, sorted by name;
    sub-folders, other files and hidden files (names starting with ".", such as macOS `._*`
    copies) are ignored. Whether each file really is a readable image is found out when it
    is read (`predict_images` reports it).

    Raises:
        FileNotFoundError: `path` does not exist.
        InferenceError: a folder without any JPEG / PNG file.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        images = sorted(
            child
            for child in path.iterdir()
            if child.suffix.lower() in IMAGE_SUFFIXES
            and not child.name.startswith(".")
            and child.is_file()
        )
        if not images:
            raise InferenceError(
                f"no JPEG or PNG images in {path} (only the folder's top level is searched; "
                f"names must end in {', '.join(IMAGE_SUFFIXES)})"
            )
        return images
    if path.is_file():
        return [path]
    raise FileNotFoundError(f"input not found: {path} (give an image file or a folder of images)")


def _read_encoded(paths: Sequence[Path], failures: list[tuple[str, str]]):
    """Yields (index, encoded bytes) of the readable images; the others go into `failures`."""
    from maskspine.data.coco import DataError, read_image_bytes

    for index, path in enumerate(paths):
        try:
            data, _, _ = read_image_bytes(path)
        except DataError as error:
            reason = str(error).split(": ", 1)[-1]
            failures.append((str(path), _IN_MEMORY_FILE.sub("", reason)))
            continue
        except OSError as error:  # missing, a folder, no permission
            failures.append((str(path), error.strerror or str(error)))
            continue
        yield np.int64(index), data


def image_batches(
    paths: Sequence[Path], config: Config, batch_size: int, failures: list[tuple[str, str]]
) -> tf.data.Dataset:
    """Batches of `{"images" [B, H, W, 3] float32, "image_info" [B, 4, 2] float32, "index" [B]
    int64}` of the readable images among `paths` (index into `paths`), in order.

    Files are read and checked on the host as the batches are consumed; an unreadable one is
    appended to `failures` as (path, reason) and left out.
    """
    import tensorflow as tf

    from maskspine.data.pipeline import decode_image, preprocess_image

    paths = list(paths)
    dataset = tf.data.Dataset.from_generator(
        lambda: _read_encoded(paths, failures),
        output_signature=(
            tf.TensorSpec([], tf.int64),
            tf.TensorSpec([], tf.string),
        ),
    )

    def prepare(index, encoded):
        images, image_info = preprocess_image(decode_image(encoded), config)
        return {"images": images, "image_info": image_info, "index": index}

    dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------- running the model

_PREDICT_FUNCTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def predict_function(model: Callable) -> Callable[[tf.Tensor, tf.Tensor], dict[str, tf.Tensor]]:
    """A `tf.function` (images [B, H, W, 3], image_info [B, 4, 2]) -> the model's detection
    dict (`OUTPUT_KEYS`), cached per model so repeated evaluations reuse its trace."""
    import tensorflow as tf

    function = _PREDICT_FUNCTIONS.get(model)
    if function is None:

        @tf.function
        def function(images, image_info):
            outputs = model({"images": images, "image_info": image_info}, training=False)
            return {key: outputs[key] for key in OUTPUT_KEYS}

        _PREDICT_FUNCTIONS[model] = function
    return function


def _pad_batch(tensor: tf.Tensor, size: int) -> tf.Tensor:
    """Pads the leading dimension to `size` by repeating the first element."""
    import tensorflow as tf

    missing = size - int(tensor.shape[0])
    if missing <= 0:
        return tensor
    return tf.concat([tensor, tf.repeat(tensor[:1], missing, axis=0)], axis=0)


def _progress_bar(num_images: int | None):
    import keras

    # Without a terminal, one line every 30 s instead of one per batch.
    interval = 0.05 if sys.stdout.isatty() else 30.0
    return keras.utils.Progbar(num_images, interval=interval, unit_name="image")


def run_detections(
    model: Callable,
    batches: Iterable[Mapping[str, Any]],
    *,
    progress: bool = False,
    num_images: int | None = None,
) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """Runs the model over batches and yields each image's outputs, in order.

    Every batch is run at the size of the first (a smaller last batch is padded by repeating
    its first image, and the padding's outputs dropped), so the model is traced once.

    Args:
        model: a `MaskRCNN` (or any callable taking `{"images", "image_info"}` and returning
            the detection dict of ARCHITECTURE.md).
        batches: dicts with `images` [B, H, W, 3] float32 and `image_info` [B, 4, 2], plus any
            per-image keys (`image_id`, `index`, ...); `gt_*` keys are ignored.
        progress: show a Keras progress bar (counting images).
        num_images: the progress bar's target, when known.

    Yields:
        (the batch's other per-image values for this image, e.g. `image_info` [4, 2] and
        `image_id`, as numpy; this image's outputs without the batch dimension:
        `detection_boxes` [D, 4] yxyx input pixels, `detection_scores` [D],
        `detection_classes` [D], `num_detections` [], `detection_masks` [D, M, M]).
    """
    predict = predict_function(model)
    bar = _progress_bar(num_images) if progress else None
    size = None
    done = 0
    for batch in batches:
        images, image_info = batch["images"], batch["image_info"]
        count = int(images.shape[0])
        size = size or count
        outputs = predict(_pad_batch(images, size), _pad_batch(image_info, size))
        outputs = {key: np.asarray(value)[:count] for key, value in outputs.items()}
        extras = {
            key: np.asarray(value)
            for key, value in batch.items()
            if key != "images" and not key.startswith("gt_")
        }
        for index in range(count):
            yield (
                {key: value[index] for key, value in extras.items()},
                {key: value[index] for key, value in outputs.items()},
            )
        done += count
        if bar is not None:
            bar.update(done)  # finalizes itself on reaching num_images
    if bar is not None and (num_images is None or done < num_images):
        bar.update(done, finalize=True)  # fewer images than expected (unreadable ones)


# --------------------------------------------------------------------------- predictions


def predict_images(
    model: Callable,
    config: Config,
    inputs: Sequence[str | os.PathLike],
    *,
    batch_size: int | None = None,
    score_threshold: float = 0.0,
    mask_threshold: float | None = None,
    progress: bool = False,
) -> tuple[dict[str, dict[str, Any]], list[tuple[str, str]]]:
    """Runs the model over image files: the reference's inference JSON entries.

    Args:
        model: the model (`maskspine.checkpoints.load_model`), built for `config`.
        config: its config: input size and normalisation, `coco_classes` (names),
            `category_ids` (empty: `"unknown"` in the JSON), `test_cfg.rcnn.mask_thr_binary`,
            `test_batch_size`.
        inputs: image paths (see `find_images`).
        batch_size: images per model call (default `config.test_batch_size`).
        score_threshold: predictions scoring below this are left out (the model's own
            `test_cfg.rcnn.score_thr` has applied already).
        mask_threshold: mask probability threshold (default `test_cfg.rcnn.mask_thr_binary`).
        progress: show a progress bar.

    Returns:
        (`{str(path): entry}` in input order for every image that was read, see the module
        docstring; `[(str(path), reason)]` of the images that could not be read).

    Raises:
        ConfigError: the config's classes are not resolved (`coco_classes: from_data`).
        InferenceError: the config's class names do not match the model's classes.
    """
    class_names = config.class_names
    if len(class_names) != config.num_classes - 1:
        raise InferenceError(
            f"the config names {len(class_names)} classes but the model has "
            f"{config.num_classes - 1} (num_classes {config.num_classes} with background)"
        )
    category_ids = list(config.category_ids) or None
    if mask_threshold is None:
        mask_threshold = float(config.test_cfg.rcnn.mask_thr_binary)
    batch_size = int(batch_size or config.test_batch_size or 1)
    if batch_size < 1:
        raise InferenceError(f"batch size must be at least 1, got {batch_size}")
    paths = [Path(p) for p in inputs]
    failures: list[tuple[str, str]] = []
    batches = image_batches(paths, config, batch_size, failures)
    entries: dict[str, dict[str, Any]] = {}
    for values, outputs in run_detections(model, batches, progress=progress, num_images=len(paths)):
        info = values["image_info"]
        instances = detections_to_instances(
            outputs, info, score_threshold=score_threshold, mask_threshold=mask_threshold
        )
        height, width = (int(round(float(v))) for v in info[0])
        key = str(paths[int(values["index"])])
        entries[key] = to_reference_json(instances, (height, width), class_names, category_ids)
    return entries, failures


# --------------------------------------------------------------------------- the JSON file


def save_inference_json(path: str | os.PathLike, entries: Mapping[str, Any]) -> Path:
    """Writes inference entries as the reference does (indent 1), atomically.

    Returns:
        The path written.
    """
    from maskspine.files import write_text_atomic

    path = Path(path)
    write_text_atomic(path, json.dumps(dict(entries), indent=1) + "\n")
    return path


def load_inference_json(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Reads a JSON written by `maskspine infer` (`save_inference_json`).

    Raises:
        FileNotFoundError: naming the file.
        InferenceError: naming the file and the first entry that is not in the format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InferenceError(f"{path}: not valid JSON ({error})") from None
    if isinstance(entries, list):
        raise InferenceError(
            f"{path} is a list of COCO results (the file `maskspine eval --predictions` "
            "writes); drawing takes the JSON written by `maskspine infer`"
        )
    if not isinstance(entries, dict):
        raise InferenceError(f"{path}: expected a JSON object keyed by image path")
    for key, entry in entries.items():
        problem = _entry_problem(entry)
        if problem:
            raise InferenceError(f"{path}: entry {key!r} {problem}")
    return entries


def _entry_problem(entry: Any) -> str | None:
    if not isinstance(entry, dict) or not {"height", "width", "predictions"} <= set(entry):
        return "needs height, width and predictions"
    for index, prediction in enumerate(entry["predictions"]):
        if not isinstance(prediction, dict) or not {"bbox", "class", "mask", "score"} <= set(
            prediction
        ):
            return f"prediction {index} needs bbox, class, mask and score"
    return None


# --------------------------------------------------------------------------- drawing


def entry_instances(entry: Mapping[str, Any], score_threshold: float = 0.0) -> dict[str, Any]:
    """One JSON entry's predictions scoring at least `score_threshold`, as arrays.

    Returns:
        `boxes` [N, 4] float32 COCO xywh original pixels, `masks` [N, height, width] uint8
        (decoded RLE), `names` [N], `scores` [N] float32, `labels` [N] contiguous labels
        (JSON label + 1, the numbering ground-truth drawings use, so a class keeps its colour).
    """
    from pycocotools import mask as mask_utils

    height, width = int(entry["height"]), int(entry["width"])
    kept = [p for p in entry["predictions"] if float(p["score"]) >= score_threshold]
    boxes = np.array(
        [
            [p["bbox"]["x_min"], p["bbox"]["y_min"], p["bbox"]["width"], p["bbox"]["height"]]
            for p in kept
        ],
        np.float32,
    ).reshape(-1, 4)
    masks = np.zeros((len(kept), height, width), np.uint8)
    for index, prediction in enumerate(kept):
        rle = dict(prediction["mask"])
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
        decoded = mask_utils.decode(rle)
        if decoded.shape != (height, width):
            raise InferenceError(
                f"a mask of size {list(decoded.shape)} in an entry of size {[height, width]}"
            )
        masks[index] = decoded
    return {
        "boxes": boxes,
        "masks": masks,
        "names": [str(p["class"]["name"]) for p in kept],
        "scores": np.array([float(p["score"]) for p in kept], np.float32),
        "labels": [int(p["class"]["label"]) + 1 for p in kept],
    }


def draw_inference_entry(
    image: np.ndarray,
    entry: Mapping[str, Any],
    *,
    score_threshold: float = 0.0,
    title: str | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Draws one image's predictions (an inference JSON entry) with `visualize.draw_instances`:
    translucent masks in a colour per class, boxes, class names and scores.

    Args:
        image: uint8 [height, width, 3] RGB, the size the entry gives.
        entry: `{"height", "width", "predictions"}` (see the module docstring).
        score_threshold: predictions scoring below this are not drawn.
        title: axes title.
        ax: draw into these axes; a new figure sized to the image otherwise.

    Raises:
        InferenceError: the image's size is not the entry's.
    """
    from maskspine.visualize import draw_instances

    image = np.asarray(image)
    expected = (int(entry["height"]), int(entry["width"]))
    if tuple(image.shape[:2]) != expected:
        raise InferenceError(
            f"the image is {image.shape[0]}x{image.shape[1]} but its predictions were made "
            f"for {expected[0]}x{expected[1]} (height x width)"
        )
    found = entry_instances(entry, score_threshold)
    return draw_instances(
        image,
        found["boxes"],
        found["masks"],
        found["names"],
        found["scores"],
        labels=found["labels"],
        box_format="xywh",
        title=title,
        ax=ax,
    )


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as uint8 [height, width, 3] RGB, read as inference reads it.

    Raises:
        FileNotFoundError / DataError: missing or unreadable, naming the file.
    """
    import io

    from PIL import Image

    from maskspine.data.coco import read_image_bytes

    data, _, _ = read_image_bytes(path)
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def drawing_scale(height: int, width: int) -> int:
    """The integer factor a drawing of a `height` x `width` image is saved at (1 for images
    at least `MIN_DRAWING_SIZE` pixels on their longer side)."""
    return max(1, math.ceil(MIN_DRAWING_SIZE / max(height, width, 1)))


def save_drawing(ax: Axes, path: str | os.PathLike, image_size: tuple[int, int]) -> Path:
    """Saves a `draw_instances` figure (without title) as a PNG of exactly the image's size
    times `drawing_scale`."""
    height, width = image_size
    figure = ax.figure
    scale = drawing_scale(height, width)
    figure_width = figure.get_size_inches()[0]
    # The figure's width in inches times dpi is the PNG's width in pixels.
    figure.savefig(path, dpi=width * scale / figure_width, format="png")
    return Path(path)


def _image_for(key: str, images_dir: Path | None) -> Path:
    if images_dir is not None:
        candidate = images_dir / Path(key).name
        if candidate.is_file():
            return candidate
    return Path(key)


def draw_predictions(
    entries: Mapping[str, Mapping[str, Any]],
    output_dir: str | os.PathLike,
    *,
    score_threshold: float = 0.5,
    images_dir: str | os.PathLike | None = None,
) -> tuple[list[Path], list[tuple[str, str]]]:
    """One PNG per image of an inference JSON, its predictions drawn over it.

    Args:
        entries: `load_inference_json(...)`.
        output_dir: folder for `<image name>.png` (created; a name taken by an earlier image
            of the same name from another folder gets `_2`, `_3`, ...).
        score_threshold: predictions scoring below this are not drawn.
        images_dir: look for each image here by file name first, then at its path in the JSON
            (for JSON written on another machine or before the images moved).

    Returns:
        (the PNGs written, [(image path, reason)] of the images that could not be drawn:
        missing, unreadable, or not the size the predictions were made for).
    """
    from maskspine.data.coco import DataError

    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    folder = Path(images_dir).expanduser() if images_dir is not None else None
    written: list[Path] = []
    failures: list[tuple[str, str]] = []
    used: set[str] = set()
    for key, entry in entries.items():
        path = _image_for(key, folder)
        try:
            image = read_image(path)
            ax = draw_inference_entry(image, entry, score_threshold=score_threshold)
        except FileNotFoundError:
            where = f" (nor in {folder})" if folder is not None else " (use --images DIR)"
            failures.append((key, f"image not found: {path}{where}"))
            continue
        except (DataError, InferenceError, OSError) as error:
            failures.append((key, str(error)))
            continue
        stem = Path(key).stem or "image"
        name, number = f"{stem}.png", 1
        while name in used:
            number += 1
            name = f"{stem}_{number}.png"
        used.add(name)
        written.append(save_drawing(ax, output / name, image.shape[:2]))
    return written, failures


__all__ = [
    "IMAGE_SUFFIXES",
    "UNKNOWN_CATEGORY_ID",
    "InferenceError",
    "draw_inference_entry",
    "draw_predictions",
    "entry_instances",
    "find_images",
    "image_batches",
    "load_inference_json",
    "predict_function",
    "predict_images",
    "read_image",
    "run_detections",
    "save_drawing",
    "save_inference_json",
]
