"""Running the model: the batched runner that `infer`, `eval`, training's evaluation and the
benchmark share, and image files -> the reference's inference JSON entries.

    model, config, _ = load_model("runs/260101_MaskRCNN_shapes_256x256")
    entries, failures = predict_images(model, config, find_images("photos/"))
    save_inference_json("predictions.json", entries)          # maskspine.formats

    for values, outputs in run_detections(model, batches):    # any batches of images
        ...

Image files are read once on the host with `maskspine.data.images.read_image` (any mode to
RGB, stored pixel order, EXIF orientation not applied, as for COCO annotations), resized
and padded by `maskspine.data.pipeline.preprocess_image` inside a tf.data pipeline that
overlaps reading with the model. The model runs on fixed-size batches (the last one
padded) under one `tf.function` per model; its outputs go through `maskspine.postprocess`
(the one mask paster and RLE path `eval` uses too) and `maskspine.formats`.
"""

from __future__ import annotations

import os
import sys
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from maskspine.data.images import read_image
from maskspine.errors import DataError, InferenceError
from maskspine.formats import to_reference_json
from maskspine.postprocess import detections_to_instances

if TYPE_CHECKING:
    import tensorflow as tf

    from maskspine.config import Config

#: The model outputs the post-processing reads.
OUTPUT_KEYS = (
    "detection_boxes",
    "detection_scores",
    "detection_classes",
    "num_detections",
    "detection_masks",
)

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


def progress_bar(total: int | None, unit: str = "image"):
    """A Keras progress bar counting `unit`s; without a terminal, one line every 30 s."""
    import keras

    interval = 0.05 if sys.stdout.isatty() else 30.0
    return keras.utils.Progbar(total, interval=interval, unit_name=unit)


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
            the detection dict of docs/architecture.md).
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
    bar = progress_bar(num_images) if progress else None
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


# --------------------------------------------------------------------------- image files


def _read_images(paths: Sequence[Path], failures: list[tuple[str, str]]):
    """Yields (index, uint8 [h, w, 3] pixels) of the readable images; the others go into
    `failures` as (path, reason)."""
    for index, path in enumerate(paths):
        try:
            pixels = read_image(path)
        except DataError as error:
            failures.append((str(path), error.reason))
            continue
        except FileNotFoundError:
            failures.append((str(path), "not found"))
            continue
        yield np.int64(index), pixels


def image_batches(
    paths: Sequence[Path], config: Config, batch_size: int, failures: list[tuple[str, str]]
) -> tf.data.Dataset:
    """Batches of `{"images" [B, H, W, 3] float32, "image_info" [B, 4, 2] float32, "index" [B]
    int64}` of the readable images among `paths` (index into `paths`), in order.

    Files are read on the host as the batches are consumed; an unreadable one is appended to
    `failures` as (path, reason) and left out.
    """
    import tensorflow as tf

    from maskspine.data.pipeline import preprocess_image

    paths = list(paths)
    dataset = tf.data.Dataset.from_generator(
        lambda: _read_images(paths, failures),
        output_signature=(
            tf.TensorSpec([], tf.int64),
            tf.TensorSpec([None, None, 3], tf.uint8),
        ),
    )

    def prepare(index, pixels):
        images, image_info = preprocess_image(pixels, config)
        return {"images": images, "image_info": image_info, "index": index}

    dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


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
            `output_category_ids`, `test_cfg.rcnn.mask_thr_binary`, `test_batch_size`.
        inputs: image paths (see `maskspine.data.images.find_images`).
        batch_size: images per model call (default `config.test_batch_size`).
        score_threshold: predictions scoring below this are left out (the model's own
            `test_cfg.rcnn.score_thr` has applied already).
        mask_threshold: mask probability threshold (default `test_cfg.rcnn.mask_thr_binary`).
        progress: show a progress bar.

    Returns:
        (`{str(path): entry}` in input order for every image that was read, see
        `maskspine.formats`; `[(str(path), reason)]` of the images that could not be read).

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
    category_ids = config.output_category_ids
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
