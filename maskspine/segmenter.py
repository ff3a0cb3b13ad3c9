"""The one Python entry point: a trained model that takes images and gives instances.

    import maskspine

    seg = maskspine.load("runs/260101_MaskRCNN_shapes_256x256")   # a run directory or .weights.h5
    results = seg.predict("photos/")          # paths, arrays, a folder, or a list of them
    for result in results:
        result.source, result.height, result.width
        result.class_names, result.scores     # [N] names and float32 scores
        result.boxes                          # [N, 4] float32 xyxy in the image's own pixels
        result.masks                          # [N, height, width] bool
    pixels = seg.draw("photos/a.jpg", results[0])  # uint8 [height, width, 3] RGB

`maskspine infer` and the notebooks run through it too. `load` takes the overrides a run's
saved config accepts: a CONFIG file whose keys replace the saved ones, `--set`-style strings,
and keyword arguments named like config keys (`precision="bfloat16"`, `test_batch_size=4`;
nested keys with `__`: `test_cfg__rcnn__score_thr=0.3`).

Imports: `predict` (running the model), `postprocess`, `formats`, `visualize`, `inputs`,
`checkpoints`; TensorFlow when a model is built.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from maskspine.boxes import BOX_FORMATS, convert_boxes
from maskspine.data.images import read_image
from maskspine.errors import DataError, InferenceError
from maskspine.formats import to_reference_json
from maskspine.inputs import collect_inputs
from maskspine.postprocess import detections_to_arrays, detections_to_instances, encode_rle
from maskspine.predict import (
    FramePrediction,
    output_settings,
    predict_frames,
    read_images,
    reference_entry,
    run_on_pixels,
)
from maskspine.visualize import draw_inference_entry, drawing_pixels

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from maskspine.config import Config


@dataclass
class ImagePrediction:
    """The instances found in one image, in that image's own pixels, by score (highest first).

    Attributes:
        source: the image's path as given, or `array[<index>]` for an array.
        height, width: the image's size in pixels.
        boxes: [N, 4] float32 in `box_format`, original pixels.
        box_format: "xyxy" (x1, y1, x2, y2), "yxyx" or "xywh" (COCO).
        scores: [N] float32.
        labels: [N] int64 class indices, 0-based without the background (the JSON's
            `class.label`); `class_names[i]` names instance i.
        class_names: [N] class names.
        category_ids: [N] category ids (the data set's, `Config.output_category_ids`).
        masks: [N, height, width] bool full-size masks, or None when asked for RLE.
        rles: [N] COCO compressed RLE (`{"size": [h, w], "counts": str}`), or None unless
            asked for (`predict(..., rle=True)`).
    """

    source: str
    height: int
    width: int
    boxes: np.ndarray
    box_format: str
    scores: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    category_ids: list[int]
    masks: np.ndarray | None = None
    rles: list[dict[str, Any]] | None = None

    def __len__(self) -> int:
        return len(self.scores)

    def instances(self) -> list[dict[str, Any]]:
        """One dict per instance: `class_name`, `label`, `category_id`, `score`, `box` (in
        `box_format`), and `mask` (bool [height, width]) or `rle`."""
        found = []
        for index in range(len(self)):
            instance = {
                "class_name": self.class_names[index],
                "label": int(self.labels[index]),
                "category_id": int(self.category_ids[index]),
                "score": float(self.scores[index]),
                "box": [float(v) for v in self.boxes[index]],
            }
            if self.masks is not None:
                instance["mask"] = self.masks[index]
            if self.rles is not None:
                instance["rle"] = self.rles[index]
            found.append(instance)
        return found

    def to_json(self, names: Sequence[str], category_ids: Sequence[int]) -> dict[str, Any]:
        """This image's entry of the reference's inference JSON (`maskspine.formats`), for a
        model with classes `names` (without background) and their `category_ids`."""
        rles = self.rles if self.rles is not None else encode_rle(self.masks)  # type: ignore[arg-type]
        instances = [
            {"box_yxyx": box, "score": score, "label": int(label) + 1, "rle": rle}
            for box, score, label, rle in zip(
                convert_boxes(self.boxes, self.box_format, "yxyx"), self.scores, self.labels, rles
            )
        ]
        return to_reference_json(instances, (self.height, self.width), names, category_ids)


def _image_items(images: Any, recursive: bool) -> Iterator[tuple[str, Any]]:
    """(source name, path or uint8 array) of every image `images` stands for."""
    if isinstance(images, (str, os.PathLike)):
        path = Path(images).expanduser()
        if path.is_dir():
            found = collect_inputs([path], recursive=recursive)
            if found.videos:
                names = ", ".join(str(video.path) for video in found.videos[:3])
                raise InferenceError(
                    f"{path} holds videos ({names}); predict takes images: run "
                    "predict_video on a video"
                )
            for image in found.images:
                yield str(image.path), image.path
            return
        yield str(images), path
        return
    if isinstance(images, np.ndarray) and images.ndim == 4:
        for index, image in enumerate(images):
            yield f"array[{index}]", image
        return
    if isinstance(images, np.ndarray):
        yield "array[0]", images
        return
    if isinstance(images, Iterable):
        for index, image in enumerate(images):
            if isinstance(image, (str, os.PathLike)):
                yield from _image_items(image, recursive)
            else:
                yield f"array[{index}]", image
        return
    raise InferenceError(
        f"predict takes image paths, a folder, uint8 arrays [H, W, 3] or a list of them; "
        f"got {type(images).__name__}"
    )


def as_rgb(image: Any, name: str = "image") -> np.ndarray:
    """An image array as uint8 [h, w, 3] RGB: grayscale [h, w] or [h, w, 1] replicated, RGBA
    without its alpha; values must be uint8, or numbers in [0, 255].

    Raises:
        DataError: another shape, or values outside [0, 255]; naming `name`.
    """
    pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3 or pixels.shape[-1] not in (1, 3, 4) or 0 in pixels.shape[:2]:
        raise DataError(
            f"an image array must be [height, width, 3] RGB (or [height, width] gray, "
            f"[height, width, 4] RGBA); got shape {list(pixels.shape)}",
            path=name,
        )
    if pixels.dtype != np.uint8:
        if pixels.size and (np.nanmin(pixels) < 0 or np.nanmax(pixels) > 255):
            raise DataError(
                "image values must be in [0, 255] (uint8 RGB); scale floats in [0, 1] by 255",
                path=name,
            )
        pixels = np.round(np.nan_to_num(pixels)).astype(np.uint8)
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    return np.ascontiguousarray(pixels[..., :3])


class Segmenter:
    """A model with what it takes to run it on images: its config's input size and
    normalisation, class names, category ids and thresholds (see the module docstring).

    Args:
        model: a built `MaskRCNN` (weights loaded), or any callable with its outputs.
        config: its config (classes resolved).
        weights: the weights file it was loaded from, if any.
        batch_size: images per model call (default the config's `test_batch_size`).
        score_threshold: predictions scoring below this are left out (the config's
            `test_cfg.rcnn.score_thr` applies first).
        mask_threshold: mask probability threshold (default `test_cfg.rcnn.mask_thr_binary`).
    """

    def __init__(
        self,
        model: Any,
        config: Config,
        *,
        weights: Path | None = None,
        batch_size: int | None = None,
        score_threshold: float = 0.0,
        mask_threshold: float | None = None,
    ) -> None:
        self.model = model
        self.config = config
        self.weights = weights
        self.batch_size = batch_size
        self.score_threshold = float(score_threshold)
        self.class_names, self.category_ids, self.mask_threshold = output_settings(
            config, mask_threshold
        )

    def __repr__(self) -> str:
        source = f" from {self.weights}" if self.weights else ""
        return (
            f"Segmenter({len(self.class_names)} classes, "
            f"{self.config.img_height}x{self.config.img_width}{source})"
        )

    # ------------------------------------------------------------------ images

    def iter_predict(
        self,
        images: Any,
        *,
        score_threshold: float | None = None,
        rle: bool = False,
        box_format: str = "xyxy",
        recursive: bool = False,
        progress: bool = False,
    ) -> Iterator[ImagePrediction]:
        """`predict`, one image at a time as the model gets to it (for long folders)."""
        if box_format not in BOX_FORMATS:
            raise ValueError(f"box_format must be one of {BOX_FORMATS}, got {box_format!r}")
        threshold = self.score_threshold if score_threshold is None else float(score_threshold)

        def pixels():
            for name, image in _image_items(images, recursive):
                if isinstance(image, Path):
                    yield name, read_image(image)
                else:
                    yield name, as_rgb(image, name)

        for item in run_on_pixels(
            self.model, self.config, pixels(), batch_size=self.batch_size, progress=progress
        ):
            yield self._prediction(
                item.tag, item.outputs, item.image_info, threshold, rle, box_format
            )

    def predict(
        self,
        images: Any,
        *,
        score_threshold: float | None = None,
        rle: bool = False,
        box_format: str = "xyxy",
        recursive: bool = False,
        progress: bool = False,
    ) -> list[ImagePrediction]:
        """Instances in each image.

        Args:
            images: an image path, a folder (its images; `recursive`: its sub-folders' too),
                a uint8 array [H, W, 3] RGB ([H, W] gray, [H, W, 4] RGBA, [B, H, W, 3] a
                batch), or a list of paths and arrays.
            score_threshold: leave out instances scoring below this (default the
                segmenter's).
            rle: give masks as COCO RLE (`rles`) instead of full-size arrays (`masks`).
            box_format: "xyxy" (default), "yxyx" or "xywh", in the image's own pixels.
            recursive: search sub-folders of a folder too.
            progress: show a progress line.

        Returns:
            One `ImagePrediction` per image, in order.

        Raises:
            FileNotFoundError, DataError: an image that is missing or cannot be read (named).
        """
        return list(
            self.iter_predict(
                images,
                score_threshold=score_threshold,
                rle=rle,
                box_format=box_format,
                recursive=recursive,
                progress=progress,
            )
        )

    def _prediction(
        self,
        source: str,
        outputs: dict[str, np.ndarray],
        image_info: np.ndarray,
        score_threshold: float,
        rle: bool,
        box_format: str,
    ) -> ImagePrediction:
        height, width = (int(round(float(v))) for v in image_info[0])
        settings = {"score_threshold": score_threshold, "mask_threshold": self.mask_threshold}
        if rle:
            instances = detections_to_instances(outputs, image_info, **settings)
            boxes = np.array([i["box_yxyx"] for i in instances], np.float32).reshape(-1, 4)
            scores = np.array([i["score"] for i in instances], np.float32)
            labels = np.array([i["label"] for i in instances], np.int64)
            masks, rles = None, [i["rle"] for i in instances]
        else:
            arrays = detections_to_arrays(outputs, image_info, **settings)
            boxes, scores, labels = arrays["boxes"], arrays["scores"], arrays["labels"]
            masks, rles = arrays["masks"], None
        index = labels - 1
        return ImagePrediction(
            source=source,
            height=height,
            width=width,
            boxes=convert_boxes(boxes, "yxyx", box_format).astype(np.float32),
            box_format=box_format,
            scores=scores,
            labels=index,
            class_names=[self.class_names[i] for i in index],
            category_ids=[int(self.category_ids[i]) for i in index],
            masks=masks,
            rles=rles,
        )

    def reference_entries(
        self,
        paths: Iterable[str | os.PathLike],
        failures: list[tuple[str, str]],
        *,
        score_threshold: float | None = None,
        progress: bool = False,
        total: int | None = None,
    ) -> Iterator[tuple[Path, np.ndarray, dict[str, Any]]]:
        """(path, uint8 [h, w, 3] pixels, the reference's JSON entry) of each readable image
        file, in order, read once (the pixels are there for drawing in the same pass); the
        unreadable ones go into `failures` as (path, reason)."""
        threshold = self.score_threshold if score_threshold is None else float(score_threshold)
        for item in run_on_pixels(
            self.model,
            self.config,
            read_images(paths, failures),
            batch_size=self.batch_size,
            progress=progress,
            total=total,
        ):
            entry = reference_entry(
                item.outputs,  # type: ignore[arg-type]
                item.image_info,  # type: ignore[arg-type]
                self.class_names,
                self.category_ids,
                score_threshold=threshold,
                mask_threshold=self.mask_threshold,
            )
            yield item.tag, item.pixels, entry

    # ------------------------------------------------------------------ videos

    def predict_video(
        self,
        frames: Iterable[Any],
        *,
        name: str,
        stride: int = 1,
        score_threshold: float | None = None,
        progress: bool = False,
        num_frames: int | None = None,
    ) -> Iterator[FramePrediction]:
        """Every frame of a video or camera back with the JSON entry of its predictions (the
        latest frame run, with `stride` > 1): `maskspine.predict.predict_frames`.

        Args:
            frames: `maskspine.video.open_source(...)` (a video file or `camera:N`), or any
                iterable of frames (`index`, `time_s`, `pixels` uint8 [h, w, 3]).
            name: the video's name in the JSON keys (`"<name>#<frame>"`).
            stride: run the model on every N-th frame.
            score_threshold: leave out instances scoring below this (default the
                segmenter's).
            progress, num_frames: a progress line, and its total when known.
        """
        threshold = self.score_threshold if score_threshold is None else float(score_threshold)
        return predict_frames(
            self.model,
            self.config,
            frames,
            name=name,
            stride=stride,
            batch_size=self.batch_size,
            score_threshold=threshold,
            mask_threshold=self.mask_threshold,
            progress=progress,
            num_frames=num_frames,
        )

    # ------------------------------------------------------------------ drawing

    def draw(
        self,
        image: Any,
        result: ImagePrediction | dict[str, Any],
        *,
        score_threshold: float = 0.5,
        ax: Axes | None = None,
    ) -> np.ndarray | Axes:
        """The image with `result` drawn over it: translucent masks in a colour per class,
        boxes, class names and scores (as `maskspine draw` draws them).

        Args:
            image: the image's path, or its uint8 array.
            result: its `ImagePrediction`, or its entry of the inference JSON.
            score_threshold: instances scoring below this are not drawn.
            ax: draw into these matplotlib axes and return them.

        Returns:
            uint8 [height, width, 3] RGB pixels, or `ax` when given.
        """
        pixels = read_image(image) if isinstance(image, (str, os.PathLike)) else as_rgb(image)
        entry = (
            result.to_json(self.class_names, self.category_ids)
            if isinstance(result, ImagePrediction)
            else result
        )
        drawn = draw_inference_entry(pixels, entry, score_threshold=score_threshold, ax=ax)
        if ax is not None:
            return drawn
        return drawing_pixels(drawn, pixels.shape[:2])


def _settings_as_overrides(settings: dict[str, Any]) -> list[str]:
    """Keyword arguments named like config keys (`__` for a dot) as `key=value` overrides."""
    import yaml

    overrides = []
    for key, value in settings.items():
        text = yaml.safe_dump(value, default_flow_style=True).strip()
        text = text.removesuffix("\n...").removesuffix("...").strip()
        overrides.append(f"{key.replace('__', '.')}={text}")
    return overrides


def load(
    checkpoint: str | os.PathLike,
    config: str | os.PathLike | None = None,
    *,
    overrides: Sequence[str] = (),
    batch_size: int | None = None,
    score_threshold: float = 0.0,
    mask_threshold: float | None = None,
    **settings: Any,
) -> Segmenter:
    """A trained model ready to run: `maskspine.load(RUN_OR_CHECKPOINT, **overrides)`.

    Args:
        checkpoint: a run directory (its best checkpoint, else its latest, else its imported
            weights) or a `.weights.h5` file with its run's `config.yaml` beside it.
        config: a YAML file whose keys replace the saved config's (only those it sets).
        overrides: `key=value` strings, as `--set` takes them.
        batch_size: images per model call (default the config's `test_batch_size`).
        score_threshold: leave out instances scoring below this.
        mask_threshold: mask probability threshold (default `test_cfg.rcnn.mask_thr_binary`).
        **settings: config keys as keywords, `__` for a dot: `precision="bfloat16"`,
            `test_cfg__rcnn__score_thr=0.3`.

    Raises:
        CheckpointError, ConfigError: the checkpoint or the config cannot be used (named).
    """
    from maskspine.checkpoints import load_model

    model, model_config, weights = load_model(
        checkpoint, config, [*overrides, *_settings_as_overrides(settings)]
    )
    return Segmenter(
        model,
        model_config,
        weights=weights,
        batch_size=batch_size,
        score_threshold=score_threshold,
        mask_threshold=mask_threshold,
    )
