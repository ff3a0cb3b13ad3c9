"""The files predictions are written in: the reference's inference JSON and COCO results.

    entries = {path: to_reference_json(instances, (h, w), config.class_names,
                                       config.output_category_ids)}
    save_inference_json("predictions.json", entries)
    entries = load_inference_json("predictions.json")
    with InferenceJsonWriter("video.json") as writer:        # entry by entry (videos)
        writer.add(frame_key("clip.mp4", 123), entry)        # "clip.mp4#000123"
    arrays = entry_instances(entries[path], score_threshold=0.5)   # for drawing
    records = to_coco_results(instances, image_id, config.output_category_ids)

The inference JSON is the reference's ("Inference result" in the MindSpore model zoo's
SpineNet Mask R-CNN README): an object keyed by image path, each
`{"height", "width", "predictions": [{"bbox": {"x_min", "y_min", "width", "height"},
"class": {"label", "category_id", "name"}, "mask": {"size": [h, w], "counts"}, "score"}]}`,
boxes in original pixels, `label` 0-based without background, `category_id` the data set's
id, masks COCO compressed RLE at the original size, predictions sorted by score.

Category ids follow one rule everywhere (`Config.output_category_ids`): the config's
`category_ids` (training records the data set's), or 1..K in `coco_classes` order when a
config lists none. (The reference writes `"unknown"`; a number serves eval and serving too.)

Videos and cameras (`maskspine.video`) write the same JSON with one entry per frame run
through the model, keyed `"<video>#<frame>"` (`frame_key`): the video's path as given (or
`camera:<N>`), `#`, and the frame's 0-based number in the source, zero-padded to 6 digits
(`"clip.mp4#000123"`, the 124th frame; wider past 999999). Frame entries add `"frame"` (that
number, int) and `"time_s"` (the frame's presentation time in seconds from the start of the
stream, float) to `height`, `width` and `predictions`.

COCO result records (`COCO.loadRes`): `image_id`, `category_id`, `bbox` COCO xywh in
original pixels, `score`, `segmentation` (compressed RLE, str counts); their file is
`maskspine.evaluation.save_predictions`. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

import numpy as np

from maskspine.boxes import xywh_to_yxyx, yxyx_to_xywh
from maskspine.errors import InferenceError
from maskspine.files import atomic_text_file, load_json_file, write_text_atomic

#: Digits of the frame number in a video frame's key (`frame_key`).
FRAME_KEY_DIGITS = 6


def _class_index(label: int, num_classes: int) -> int:
    if not 1 <= label <= num_classes:
        raise ValueError(
            f"detection class {label} is outside the {num_classes} known classes "
            f"(1..{num_classes}); the class names / category ids do not match the model's "
            "num_classes"
        )
    return label - 1


def _aligned(category_ids: Sequence[int], class_names: Sequence[str]) -> None:
    if len(category_ids) != len(class_names):
        raise ValueError(
            f"{len(category_ids)} category ids for {len(class_names)} class names; "
            "they must be aligned (one id per class, background excluded)"
        )


def to_reference_json(
    instances: Sequence[Mapping[str, Any]],
    image_size: tuple[int, int],
    class_names: Sequence[str],
    category_ids: Sequence[int],
) -> dict[str, Any]:
    """One image's entry of the reference's inference JSON.

    Args:
        instances: from `maskspine.postprocess.detections_to_instances`.
        image_size: original (height, width).
        class_names: names of contiguous labels 1..K (no background entry): the name of
            label k is `class_names[k - 1]`.
        category_ids: the category id of each class, aligned with `class_names`
            (`Config.output_category_ids`).

    Returns:
        `{"height", "width", "predictions": [...]}` (see the module docstring), predictions
        sorted by score (highest first).
    """
    _aligned(category_ids, class_names)
    predictions = []
    for instance in sorted(instances, key=lambda item: -float(item["score"])):
        index = _class_index(int(instance["label"]), len(class_names))
        x, y, w, h = (float(v) for v in yxyx_to_xywh(np.asarray(instance["box_yxyx"], np.float32)))
        predictions.append(
            {
                "bbox": {"x_min": x, "y_min": y, "width": w, "height": h},
                "class": {
                    "label": index,
                    "category_id": int(category_ids[index]),
                    "name": class_names[index],
                },
                "mask": {
                    "size": [int(v) for v in instance["rle"]["size"]],
                    "counts": instance["rle"]["counts"],
                },
                "score": float(instance["score"]),
            }
        )
    height, width = (int(v) for v in image_size)
    return {"height": height, "width": width, "predictions": predictions}


def to_coco_results(
    instances: Sequence[Mapping[str, Any]],
    image_id: Any,
    category_ids: Sequence[int],
) -> list[dict[str, Any]]:
    """COCO result records (`COCO.loadRes` format) of one image's instances.

    Args:
        instances: from `maskspine.postprocess.detections_to_instances`.
        image_id: the image's id in the ground-truth labels.json.
        category_ids: the category id of contiguous labels 1..K (`category_ids[label - 1]`).

    Returns:
        One dict per instance (see the module docstring).
    """
    results = []
    for instance in instances:
        index = _class_index(int(instance["label"]), len(category_ids))
        xywh = yxyx_to_xywh(np.asarray(instance["box_yxyx"], np.float32))
        results.append(
            {
                "image_id": image_id,
                "category_id": int(category_ids[index]),
                "bbox": [float(v) for v in xywh],
                "score": float(instance["score"]),
                "segmentation": {
                    "size": [int(v) for v in instance["rle"]["size"]],
                    "counts": instance["rle"]["counts"],
                },
            }
        )
    return results


# --------------------------------------------------------------------------- the JSON file


def save_inference_json(path: str | os.PathLike, entries: Mapping[str, Any]) -> Path:
    """Writes inference entries as the reference does (indent 1), atomically.

    Returns:
        The path written.
    """
    return write_text_atomic(Path(path), json.dumps(dict(entries), indent=1) + "\n")


def frame_key(video: str | os.PathLike, index: int) -> str:
    """The JSON key of a video frame: `"<video>#<index>"`, the index (0-based, in the source)
    zero-padded to `FRAME_KEY_DIGITS` digits, e.g. `frame_key("clip.mp4", 123)` ->
    `"clip.mp4#000123"`."""
    return f"{video}#{int(index):0{FRAME_KEY_DIGITS}d}"


def parse_frame_key(key: str) -> tuple[str, int] | None:
    """(video, frame index) of a key made by `frame_key`; None for an image's key."""
    video, separator, number = str(key).rpartition("#")
    if not separator or not video or not number.isdigit() or len(number) < FRAME_KEY_DIGITS:
        return None
    return video, int(number)


class InferenceJsonWriter:
    """Writes the inference JSON entry by entry, so that a long video's predictions are never
    all held in memory; the file is the one `save_inference_json` writes for the same entries.

    The entries go to a temporary file, renamed onto `path` by `close` (or at the end of a
    `with` block that raises nothing; one that raises leaves `path` as it was):

        with InferenceJsonWriter("video.json") as writer:
            for key, entry in ...:
                writer.add(key, entry)

    With `atomic=False` the entries go straight to `path` (a temporary name already, such as
    one of `maskspine.files.StagedOutputs`, whose owner renames it).
    """

    def __init__(self, path: str | os.PathLike, *, atomic: bool = True):
        self.path = Path(path)
        self.count = 0
        self._context: Any = (
            atomic_text_file(self.path)
            if atomic
            else open(self.path, "w", encoding="utf-8", newline="")  # noqa: SIM115
        )
        self._file: TextIO | None = self._context.__enter__()
        self._file.write("{")

    def add(self, key: str, entry: Mapping[str, Any]) -> None:
        """Appends one entry (keys must be unique: a JSON object cannot repeat them)."""
        if self._file is None:
            raise ValueError(f"{self.path} is already closed")
        # json.dumps(entries, indent=1) nests each entry one space deeper than on its own.
        text = json.dumps(dict(entry), indent=1).replace("\n", "\n ")
        self._file.write(("," if self.count else "") + f"\n {json.dumps(str(key))}: {text}")
        self.count += 1

    def close(self) -> Path:
        """Finishes the JSON object and puts the file in place; returns its path."""
        if self._file is not None:
            self._file.write("\n}\n" if self.count else "}\n")
            self._file = None
            self._context.__exit__(None, None, None)
        return self.path

    def abort(self, error: BaseException | None = None) -> None:
        """Drops the temporary file; `path` stays as it was."""
        if self._file is not None:
            self._file = None
            error = error or RuntimeError("aborted")
            try:
                self._context.__exit__(type(error), error, error.__traceback__)
            except BaseException as raised:
                if raised is not error:
                    raise

    def __enter__(self) -> InferenceJsonWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if error is None:
            self.close()
        else:
            self.abort(error)


def load_inference_json(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Reads a JSON written by `maskspine infer` (`save_inference_json`).

    Raises:
        FileNotFoundError: naming the file.
        InferenceError: naming the file and the first entry that is not in the format.
    """
    path = Path(path)
    entries = load_json_file(path, "predictions file", InferenceError)
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


def entry_instances(entry: Mapping[str, Any], score_threshold: float = 0.0) -> dict[str, Any]:
    """One JSON entry's predictions scoring at least `score_threshold`, as arrays.

    Returns:
        `boxes` [N, 4] float32 yxyx original pixels, `masks` [N, height, width] uint8
        (decoded RLE), `names` [N], `scores` [N] float32, `labels` [N] contiguous labels
        (JSON label + 1, the numbering ground-truth drawings use, so a class keeps its colour).

    Raises:
        InferenceError: a mask whose size is not the entry's, or that does not decode.
    """
    from pycocotools import mask as mask_utils

    height, width = int(entry["height"]), int(entry["width"])
    kept = [p for p in entry["predictions"] if float(p["score"]) >= score_threshold]
    xywh = np.array(
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
        try:
            decoded = mask_utils.decode(rle)
        except (ValueError, TypeError) as error:
            raise InferenceError(f"a mask that is not a COCO RLE ({error})") from None
        if decoded.shape != (height, width):
            raise InferenceError(
                f"a mask of size {list(decoded.shape)} in an entry of size {[height, width]}"
            )
        masks[index] = decoded
    return {
        "boxes": xywh_to_yxyx(xywh),
        "masks": masks,
        "names": [str(p["class"]["name"]) for p in kept],
        "scores": np.array([float(p["score"]) for p in kept], np.float32),
        "labels": [int(p["class"]["label"]) + 1 for p in kept],
    }
