"""Running the model: the batched runner that `infer`, `eval`, training's evaluation and the
benchmark share, and image files -> the reference's inference JSON entries.

    model, config, _ = load_model("runs/260101_MaskRCNN_shapes_256x256")
    entries, failures = predict_images(model, config, find_images("photos/"))
    save_inference_json("predictions.json", entries)          # maskspine.formats

    for values, outputs in run_detections(model, batches):    # any batches of images
        ...

    for result in predict_frames(model, config, frames, name="clip.mp4"):   # video frames
        result.key, result.entry, result.frame                # "clip.mp4#000123", ...

Image files are read once on the host with `maskspine.data.images.read_image` (any mode to
RGB, stored pixel order, EXIF orientation not applied, as for COCO annotations), resized
and padded by `maskspine.data.pipeline.preprocess_image` inside a tf.data pipeline that
overlaps reading with the model. The model runs on fixed-size batches (the last one
padded) under one `tf.function` per model; its outputs go through `maskspine.postprocess`
(the one mask paster and RLE path `eval` uses too) and `maskspine.formats`.
"""

from __future__ import annotations

import collections
import os
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from maskspine.data.images import read_image
from maskspine.errors import DataError, InferenceError
from maskspine.formats import frame_key, to_reference_json
from maskspine.postprocess import detections_to_instances

if TYPE_CHECKING:
    import tensorflow as tf

    from maskspine.config import Config
    from maskspine.video import Frame

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
    """A Keras progress bar counting `unit`s (with the time left when `total` is known, and
    `<unit>s/s`, see `run_detections`); without a terminal, one line every 30 s."""
    import keras

    interval = 0.05 if sys.stdout.isatty() else 30.0
    return keras.utils.Progbar(
        total, interval=interval, unit_name=unit, stateful_metrics=[f"{unit}s/s"]
    )


def _rate(
    unit: str, done: int, start: float, first: tuple[int, float], now: float
) -> list[tuple[str, float]]:
    """The `<unit>s/s` value of `progress_bar`: the units done after the first batch (`first`
    = units done and the time then) over the time since; the first batch's own rate until
    there is more."""
    counted, since = (done - first[0], now - first[1]) if done > first[0] else (done, now - start)
    return [(f"{unit}s/s", counted / max(since, 1e-9))]


def run_detections(
    model: Callable,
    batches: Iterable[Mapping[str, Any]],
    *,
    progress: bool = False,
    num_images: int | None = None,
    unit: str = "image",
    batch_size: int | None = None,
) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """Runs the model over batches and yields each image's outputs, in order.

    Every batch is run at `batch_size` images, by default the size of the first batch (a
    smaller batch is padded by repeating its first image, and the padding's outputs dropped),
    so the model is traced once.

    Args:
        model: a `MaskRCNN` (or any callable taking `{"images", "image_info"}` and returning
            the detection dict of docs/architecture.md).
        batches: dicts with `images` [B, H, W, 3] float32 and `image_info` [B, 4, 2], plus any
            per-image keys (`image_id`, `index`, ...); `gt_*` keys are ignored.
        progress: show a Keras progress bar (images, images per second, time left).
        num_images: the progress bar's target, when known.
        unit: what the progress bar counts ("image", "frame").
        batch_size: the size every batch is run at (at least the largest batch's); the first
            batch's size when None.

    Yields:
        (the batch's other per-image values for this image, e.g. `image_info` [4, 2] and
        `image_id`, as numpy; this image's outputs without the batch dimension:
        `detection_boxes` [D, 4] yxyx input pixels, `detection_scores` [D],
        `detection_classes` [D], `num_detections` [], `detection_masks` [D, M, M]).
    """
    predict = predict_function(model)
    bar = progress_bar(num_images, unit) if progress else None
    size = batch_size
    done = 0
    start = time.monotonic()
    first: tuple[int, float] | None = None
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
        if bar is not None:  # finalizes itself on reaching num_images
            now = time.monotonic()
            first = first or (done, now)  # the rate leaves out the first batch (the trace)
            bar.update(done, values=_rate(unit, done, start, first, now))
    if bar is not None and (num_images is None or done < num_images):
        # fewer images than expected (unreadable ones, a video cut short or stopped)
        values = _rate(unit, done, start, first or (done, start), time.monotonic())
        bar.update(done, values=values, finalize=True)


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
    paths = list(paths)
    return _pixel_batches(lambda: _read_images(paths, failures), config, batch_size)


def _pixel_batches(
    generate: Callable[[], Iterator[tuple[np.int64, np.ndarray]]],
    config: Config,
    batch_size: int,
    prefetch: int | None = None,
) -> tf.data.Dataset:
    """A generator of (index, uint8 [h, w, 3] RGB pixels) as model batches: each image
    resized and padded by `pipeline.preprocess_image` (in parallel), `batch_size` at a time,
    `prefetch` batches ahead (default: tf.data's choice)."""
    import tensorflow as tf

    from maskspine.data.pipeline import preprocess_image

    dataset = tf.data.Dataset.from_generator(
        generate,
        output_signature=(
            tf.TensorSpec([], tf.int64),
            tf.TensorSpec([None, None, 3], tf.uint8),
        ),
    )

    def prepare(index, pixels):
        images, image_info = preprocess_image(pixels, config)
        return {"images": images, "image_info": image_info, "index": index}

    dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size).prefetch(prefetch or tf.data.AUTOTUNE)


def _output_settings(
    config: Config, batch_size: int | None, mask_threshold: float | None
) -> tuple[list[str], list[int], float, int]:
    """(class names, category ids, mask threshold, batch size) of `predict_images` and
    `predict_frames`, checked."""
    class_names = list(config.class_names)
    if len(class_names) != config.num_classes - 1:
        raise InferenceError(
            f"the config names {len(class_names)} classes but the model has "
            f"{config.num_classes - 1} (num_classes {config.num_classes} with background)"
        )
    if mask_threshold is None:
        mask_threshold = float(config.test_cfg.rcnn.mask_thr_binary)
    batch_size = int(batch_size or config.test_batch_size or 1)
    if batch_size < 1:
        raise InferenceError(f"batch size must be at least 1, got {batch_size}")
    return class_names, list(config.output_category_ids), mask_threshold, batch_size


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
    class_names, category_ids, mask_threshold, batch_size = _output_settings(
        config, batch_size, mask_threshold
    )
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


# --------------------------------------------------------------------------- video frames


def frame_batches(
    frames: Iterable[Frame],
    config: Config,
    batch_size: int,
    *,
    stride: int = 1,
    pending: collections.deque | None = None,
    errors: list[BaseException] | None = None,
) -> tf.data.Dataset:
    """Batches of `{"images" [B, H, W, 3] float32, "image_info" [B, 4, 2] float32, "index" [B]
    int64}` of every `stride`-th frame of `frames` (the 1st, the (stride + 1)-th, ...;
    `index` is `Frame.index`), in order, prepared as `image_batches` prepares image files.

    Frames are pulled from `frames` as the batches are consumed (a batch or two ahead), so a
    long video is never held. Every frame pulled, run or not, is appended to `pending` as
    (frame, run), for the caller to pair with its outputs; an exception raised by `frames`
    is appended to `errors` (and ends the batches) instead of surfacing inside tf.data.
    """

    def generate():
        try:
            for position, frame in enumerate(frames):
                run = position % stride == 0
                if pending is not None:
                    pending.append((frame, run))
                if run:
                    yield np.int64(frame.index), np.asarray(frame.pixels, np.uint8)
        except Exception as error:
            if errors is None:
                raise
            errors.append(error)

    return _pixel_batches(generate, config, batch_size, prefetch=1)


class FramePrediction(NamedTuple):
    """One frame of `predict_frames`.

    Attributes:
        key: the JSON key of the frame whose predictions `entry` holds
            (`formats.frame_key(name, index)`).
        entry: the reference's JSON entry of that frame, with `frame` (its index) and
            `time_s` (its time in seconds) added.
        frame: this frame.
        predicted: True when this frame was run through the model (`entry` is its own);
            False for a frame between two run ones, which carries the latest run frame's
            entry (for drawing every frame of a video).
    """

    key: str
    entry: dict[str, Any]
    frame: Frame
    predicted: bool


def predict_frames(
    model: Callable,
    config: Config,
    frames: Iterable[Frame],
    *,
    name: str,
    stride: int = 1,
    batch_size: int | None = None,
    score_threshold: float = 0.0,
    mask_threshold: float | None = None,
    progress: bool = False,
    num_frames: int | None = None,
) -> Iterator[FramePrediction]:
    """Runs the model over a stream of video frames: every frame back with its predictions.

    Every `stride`-th frame goes through `run_detections` in batches of `batch_size` (the
    runner of `predict_images`, the same post-processing and JSON entries); the frames in
    between come back too, in order, with the entry of the latest frame run before them.
    At most about `batch_size * stride` frames (and a prefetched batch) are held at once.

    Args:
        model, config: as for `predict_images`.
        frames: `maskspine.video.Frame`s in order (a `FrameSource`, or any iterable).
        name: the video's name in the JSON keys (its path as given, or `camera:N`).
        stride: run every N-th frame.
        batch_size, score_threshold, mask_threshold: as for `predict_images`.
        progress: show a progress bar counting the frames run, with frames/s and the time
            left when `num_frames` is given.
        num_frames: how many frames will be run, when known (the progress bar's target).

    Yields:
        A `FramePrediction` for every frame of `frames`, in order.

    Raises:
        InferenceError: as `predict_images`; or what iterating `frames` raised.
    """
    if stride < 1:
        raise InferenceError(f"the frame stride must be at least 1, got {stride}")
    class_names, category_ids, mask_threshold, batch_size = _output_settings(
        config, batch_size, mask_threshold
    )
    pending: collections.deque = collections.deque()
    errors: list[BaseException] = []
    batches = frame_batches(
        frames, config, batch_size, stride=stride, pending=pending, errors=errors
    )
    latest: FramePrediction | None = None
    outputs_in_order = run_detections(
        model,
        batches,
        progress=progress,
        num_images=num_frames,
        unit="frame",
        batch_size=batch_size,
    )
    for values, outputs in outputs_in_order:
        # Frames come back in order: those before this one are the skipped frames after the
        # previous run frame (all pulled before this one was).
        frame, run = pending.popleft()
        while not run:
            yield latest._replace(frame=frame, predicted=False)  # type: ignore[union-attr]
            frame, run = pending.popleft()
        if frame.index != int(values["index"]):
            raise RuntimeError(f"frame {frame.index} paired with outputs of {values['index']}")
        info = values["image_info"]
        instances = detections_to_instances(
            outputs, info, score_threshold=score_threshold, mask_threshold=mask_threshold
        )
        height, width = (int(round(float(v))) for v in info[0])
        entry = to_reference_json(instances, (height, width), class_names, category_ids)
        entry["frame"] = int(frame.index)
        entry["time_s"] = float(frame.time_s)
        latest = FramePrediction(frame_key(name, frame.index), entry, frame, True)
        yield latest
    while pending:  # the skipped frames after the last frame run
        frame, _ = pending.popleft()
        yield latest._replace(frame=frame, predicted=False)  # type: ignore[union-attr]
    if errors:
        raise errors[0]
