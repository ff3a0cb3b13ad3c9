"""Running the model: the batched runner that `infer`, `eval`, training's evaluation and the
benchmark share, over image files, pixel arrays and video frames alike.

    for values, outputs in run_detections(model, batches):      # any batches of images
        ...
    for item in run_on_pixels(model, config, pixels_in_order):  # host pixels in, in order
        item.tag, item.pixels, item.outputs, item.image_info
    entries, failures = predict_images(model, config, ["photos/a.jpg", "photos/b.png"])
    for result in predict_frames(model, config, frames, name="clip.mp4"):   # video frames
        result.key, result.entry, result.frame

Pixels (uint8 [h, w, 3] RGB: image files read once on the host with
`maskspine.data.images.read_image`, arrays, or decoded video frames) are resized and padded
by `maskspine.data.pipeline.preprocess_image` inside a tf.data pipeline that overlaps the
host with the model, and pulled from their source only as batches are consumed. The model
runs on fixed-size batches (the last one padded) under one `tf.function` per model; its
outputs go through `maskspine.postprocess` (the one mask paster and RLE path `eval` uses
too) and `maskspine.formats`.

Imports: this module uses `data.images`, `postprocess`, `formats` and `progress`; it imports
neither `maskspine.video` (frames are any objects with `index`, `time_s`, `pixels`) nor
`maskspine.visualize`. TensorFlow is imported when a model runs.
"""

from __future__ import annotations

import collections
import math
import os
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from maskspine.data.images import read_image
from maskspine.errors import DataError, InferenceError
from maskspine.formats import frame_key, to_reference_json
from maskspine.postprocess import detections_to_instances
from maskspine.progress import ProgressBar

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

# model -> its predict function. The function holds the model only through a weak reference,
# so that the cache never keeps a model alive (a value that referred to its key would).
_PREDICT_FUNCTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def predict_function(model: Callable) -> Callable[[tf.Tensor, tf.Tensor], dict[str, tf.Tensor]]:
    """A `tf.function` (images [B, H, W, 3], image_info [B, 4, 2]) -> the model's detection
    dict (`OUTPUT_KEYS`), cached per model so repeated evaluations reuse its trace;
    compiled with XLA when the model was built for it (`MaskRCNN.xla`: config
    `jit_compile`)."""
    import tensorflow as tf

    function = _PREDICT_FUNCTIONS.get(model)
    if function is None:
        reference = weakref.ref(model)

        # No AutoGraph (as in the export): the model has no Python control flow on tensors.
        @tf.function(jit_compile=bool(getattr(model, "xla", False)), autograph=False)
        def function(images, image_info):
            outputs = reference()({"images": images, "image_info": image_info}, training=False)
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
        progress: show a progress line (`maskspine.progress.ProgressBar`: count, rate, time
            left; plain lines when standard output is not a terminal).
        num_images: the progress line's total, when known.
        unit: what the progress line counts ("image", "frame").
        batch_size: the size every batch is run at (at least the largest batch's); the first
            batch's size when None.

    Yields:
        (the batch's other per-image values for this image, e.g. `image_info` [4, 2] and
        `image_id`, as numpy; this image's outputs without the batch dimension:
        `detection_boxes` [D, 4] yxyx input pixels, `detection_scores` [D],
        `detection_classes` [D], `num_detections` [], `detection_masks` [D, M, M]).
    """
    predict = predict_function(model)
    bar = ProgressBar(num_images, unit) if progress else None
    size = batch_size
    done = 0
    try:
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
                bar.update(done)
    finally:
        if bar is not None:
            bar.finish(done)


# --------------------------------------------------------------------------- host pixels


class PixelsOut(NamedTuple):
    """One item of `run_on_pixels`, back in the order it went in.

    Attributes:
        tag: what the caller gave with the pixels (a path, a frame, an index).
        pixels: uint8 [h, w, 3] RGB as given.
        outputs: the model's outputs for it (see `run_detections`), or None for an item
            passed through without running (`run` False).
        image_info: [4, 2] of its pre-processing (original, scaled, scale, offset), or None.
    """

    tag: Any
    pixels: np.ndarray
    outputs: dict[str, np.ndarray] | None
    image_info: np.ndarray | None


def pixel_batches(
    generate: Callable[[], Iterator[tuple[np.int64, np.ndarray]]],
    config: Config,
    batch_size: int,
    prefetch: int | None = None,
) -> tf.data.Dataset:
    """A generator of (index, uint8 [h, w, 3] RGB pixels) as model batches of
    `{"images" [B, H, W, 3] float32, "image_info" [B, 4, 2] float32, "index" [B] int64}`:
    each image resized and padded by `pipeline.preprocess_image` (`batch_size` in parallel),
    `batch_size` at a time, `prefetch` batches ahead (default: tf.data's choice)."""
    import tensorflow as tf

    from maskspine.data.pipeline import preprocess_image

    dataset = tf.data.Dataset.from_generator(
        generate,
        output_signature=(
            tf.TensorSpec([], tf.int64),
            tf.TensorSpec([None, None, 3], tf.uint8),
        ),
    )

    @tf.autograph.experimental.do_not_convert  # no control flow on tensors (pipeline.py)
    def prepare(index, pixels):
        images, image_info = preprocess_image(pixels, config)
        return {"images": images, "image_info": image_info, "index": index}

    # At most a batch prepared in parallel: tf.data's autotuning raises a map's parallelism
    # on a busy machine, and each call pulls one more item from the generator ahead.
    dataset = dataset.map(prepare, num_parallel_calls=batch_size, deterministic=True)
    return dataset.batch(batch_size).prefetch(prefetch or tf.data.AUTOTUNE)


def run_on_pixels(
    model: Callable,
    config: Config,
    items: Iterable[tuple[Any, np.ndarray] | tuple[Any, np.ndarray, bool]],
    *,
    batch_size: int | None = None,
    progress: bool = False,
    total: int | None = None,
    unit: str = "image",
    prefetch: int | None = None,
) -> Iterator[PixelsOut]:
    """Runs the model over host pixels and gives every item back, in order, with its outputs.

    Items are pulled from `items` only as batches are consumed (a batch or two ahead), so a
    long stream is never held: at most about `batch_size` items plus a prefetched batch.
    An exception raised by `items` (in tf.data's thread) ends the stream after the items
    before it have come back, and is raised then, in the caller's thread.

    Args:
        model, config: the model and its config (input size, normalisation).
        items: (tag, uint8 [h, w, 3] RGB pixels) or (tag, pixels, run): with run False the item
            is passed through without running the model (a video frame between two strided
            ones).
        batch_size: images per model call (default `config.test_batch_size`).
        progress, total, unit: a progress line counting the items run (see `run_detections`).
        prefetch: batches prepared ahead (default: tf.data's choice).

    Yields:
        A `PixelsOut` for every item.
    """
    batch_size = _batch_size(config, batch_size)
    pending: collections.deque = collections.deque()
    errors: list[BaseException] = []

    def generate():
        try:
            for position, item in enumerate(items):
                tag, pixels = item[0], np.asarray(item[1], np.uint8)
                run = bool(item[2]) if len(item) > 2 else True
                pending.append((tag, pixels, run))
                if run:
                    yield np.int64(position), pixels
        except BaseException as error:  # KeyboardInterrupt too: raised again below, here
            errors.append(error)

    batches = pixel_batches(generate, config, batch_size, prefetch=prefetch)
    outputs_in_order = run_detections(
        model, batches, progress=progress, num_images=total, unit=unit, batch_size=batch_size
    )
    for values, outputs in outputs_in_order:
        # Items come back in order: those before this one were passed through, all pulled
        # before this one was.
        tag, pixels, run = pending.popleft()
        while not run:
            yield PixelsOut(tag, pixels, None, None)
            tag, pixels, run = pending.popleft()
        yield PixelsOut(tag, pixels, outputs, values["image_info"])
    while pending:  # the items passed through after the last one run
        tag, pixels, _ = pending.popleft()
        yield PixelsOut(tag, pixels, None, None)
    if errors:
        raise errors[0]


def _batch_size(config: Config, batch_size: int | None) -> int:
    batch_size = int(batch_size or config.test_batch_size or 1)
    if batch_size < 1:
        raise InferenceError(f"batch size must be at least 1, got {batch_size}")
    return batch_size


# --------------------------------------------------------------------------- image files


def read_images(
    paths: Iterable[str | os.PathLike], failures: list[tuple[str, str]]
) -> Iterator[tuple[Path, np.ndarray]]:
    """(path, uint8 [h, w, 3] pixels) of the readable images among `paths`, read one at a
    time as they are pulled; the others go into `failures` as (path, reason)."""
    for path in map(Path, paths):
        try:
            pixels = read_image(path)
        except DataError as error:
            failures.append((str(path), error.reason))
            continue
        except FileNotFoundError:
            failures.append((str(path), "not found"))
            continue
        yield path, pixels


def output_settings(
    config: Config, mask_threshold: float | None = None
) -> tuple[list[str], list[int], float]:
    """(class names, category ids, mask threshold) of a model's outputs, checked.

    Raises:
        ConfigError: the config's classes are not resolved (`coco_classes: from_data`).
        InferenceError: the config's class names do not match the model's classes.
    """
    class_names = list(config.class_names)
    if len(class_names) != config.num_classes - 1:
        raise InferenceError(
            f"the config names {len(class_names)} classes but the model has "
            f"{config.num_classes - 1} (num_classes {config.num_classes} with background)"
        )
    if mask_threshold is None:
        mask_threshold = float(config.test_cfg.rcnn.mask_thr_binary)
    return class_names, list(config.output_category_ids), mask_threshold


def reference_entry(
    outputs: Mapping[str, np.ndarray],
    image_info: np.ndarray,
    class_names: Sequence[str],
    category_ids: Sequence[int],
    *,
    score_threshold: float = 0.0,
    mask_threshold: float = 0.5,
) -> dict[str, Any]:
    """One image's model outputs as its entry of the reference's inference JSON
    (`maskspine.formats`): boxes and masks in the original image's pixels."""
    instances = detections_to_instances(
        outputs, image_info, score_threshold=score_threshold, mask_threshold=mask_threshold
    )
    height, width = (int(round(float(v))) for v in image_info[0])
    return to_reference_json(instances, (height, width), class_names, category_ids)


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
        inputs: image paths (see `maskspine.inputs.collect_inputs`).
        batch_size: images per model call (default `config.test_batch_size`).
        score_threshold: predictions scoring below this are left out (the model's own
            `test_cfg.rcnn.score_thr` has applied already).
        mask_threshold: mask probability threshold (default `test_cfg.rcnn.mask_thr_binary`).
        progress: show a progress line.

    Returns:
        (`{str(path): entry}` in input order for every image that was read, see
        `maskspine.formats`; `[(str(path), reason)]` of the images that could not be read).

    Raises:
        ConfigError: the config's classes are not resolved (`coco_classes: from_data`).
        InferenceError: the config's class names do not match the model's classes.
    """
    class_names, category_ids, mask_threshold = output_settings(config, mask_threshold)
    paths = [Path(p) for p in inputs]
    failures: list[tuple[str, str]] = []
    entries: dict[str, dict[str, Any]] = {}
    for item in run_on_pixels(
        model,
        config,
        read_images(paths, failures),
        batch_size=batch_size,
        progress=progress,
        total=len(paths),
    ):
        entries[str(item.tag)] = reference_entry(
            item.outputs,  # type: ignore[arg-type]
            item.image_info,  # type: ignore[arg-type]
            class_names,
            category_ids,
            score_threshold=score_threshold,
            mask_threshold=mask_threshold,
        )
    return entries, failures


# --------------------------------------------------------------------------- video frames


class FramePrediction(NamedTuple):
    """One frame of `predict_frames`.

    Attributes:
        key: the JSON key of the frame whose predictions `entry` holds
            (`formats.frame_key(name, index)`).
        entry: the reference's JSON entry of that frame, with `frame` (its index) and
            `time_s` (its time in seconds) added.
        frame: this frame (`maskspine.video.Frame`: index, time_s, pixels).
        predicted: True when this frame was run through the model (`entry` is its own);
            False for a frame between two run ones, which carries the latest run frame's
            entry (for drawing every frame of a video).
    """

    key: str
    entry: dict[str, Any]
    frame: Any
    predicted: bool


def frames_to_run(
    frame_count: int | None, duration_s: float | None, frame_rate: float, stride: int,
    max_frames: int | None,
) -> int | None:  # fmt: skip
    """Frames the model will run on (a progress line's total): every `stride`-th of the
    announced frames (or of duration x rate), at most `max_frames`; None when unknown."""
    total = frame_count
    if total is None and duration_s is not None:
        total = int(round(duration_s * float(frame_rate)))
    count = None if total is None else math.ceil(total / stride)
    if max_frames is not None:
        count = max_frames if count is None else min(count, max_frames)
    return count


def predict_frames(
    model: Callable,
    config: Config,
    frames: Iterable[Any],
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

    Every `stride`-th frame (the 1st, the (stride + 1)-th, ...) goes through `run_on_pixels`
    in batches of `batch_size` (the runner of images, the same post-processing and JSON
    entries); the frames in between come back too, in order, with the entry of the latest
    frame run before them. At most about `batch_size * stride` frames (and a prefetched
    batch) are held at once.

    Args:
        model, config: as for `predict_images`.
        frames: `maskspine.video.Frame`s in order (a `FrameSource`, or any iterable of
            objects with `index`, `time_s` and `pixels` uint8 [h, w, 3] RGB).
        name: the video's name in the JSON keys (its path as given, or `camera:N`).
        stride: run every N-th frame.
        batch_size, score_threshold, mask_threshold: as for `predict_images`.
        progress: show a progress line counting the frames run.
        num_frames: how many frames will be run, when known (the progress line's total).

    Yields:
        A `FramePrediction` for every frame of `frames`, in order.

    Raises:
        InferenceError: as `predict_images`; or what iterating `frames` raised.
    """
    if stride < 1:
        raise InferenceError(f"the frame stride must be at least 1, got {stride}")
    class_names, category_ids, mask_threshold = output_settings(config, mask_threshold)
    items = ((frame, frame.pixels, position % stride == 0) for position, frame in enumerate(frames))
    latest: FramePrediction | None = None
    for item in run_on_pixels(
        model,
        config,
        items,
        batch_size=batch_size,
        progress=progress,
        total=num_frames,
        unit="frame",
        prefetch=1,
    ):
        frame = item.tag
        if item.outputs is None:
            yield latest._replace(frame=frame, predicted=False)  # type: ignore[union-attr]
            continue
        entry = reference_entry(
            item.outputs,
            item.image_info,  # type: ignore[arg-type]
            class_names,
            category_ids,
            score_threshold=score_threshold,
            mask_threshold=mask_threshold,
        )
        entry["frame"] = int(frame.index)
        entry["time_s"] = float(frame.time_s)
        latest = FramePrediction(frame_key(name, frame.index), entry, frame, True)
        yield latest
