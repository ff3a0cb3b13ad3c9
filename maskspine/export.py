"""SavedModel export for TF Serving: pre-processing, the model and post-processing in one graph.

    model, config, _ = load_model("runs/shapes")
    path = export_saved_model(model, config, "exports/shapes", full_masks=True)
    # exports/shapes/1/saved_model.pb + variables/ + assets/labels.json

The export is written in TF Serving's layout, `DIR/<version>/`, version 1 or the next free
number (written under a hidden name and renamed at the end, so a server watching DIR never
loads half a model). Loading it needs TensorFlow only:

    loaded = tf.saved_model.load("exports/shapes/1")
    outputs = loaded.signatures["serving_default"](images=uint8_images)

Signatures (input types; `batch` is any size unless `batch_size` is given):

| signature | input | meaning |
| --- | --- | --- |
| `serving_default` | `images` uint8 [batch, height, width, 3] | RGB images of one size, any size |
| `serving_image_bytes` | `image_bytes` string [batch] | encoded JPEG / PNG / BMP / GIF |
| `serving_tf_example` | `examples` string [batch] | serialized `tf.train.Example`s with `image/encoded` |
| `labels` | none | `category_ids` int32 [K], `class_names` string [K], `labels` int32 [K] |

(With one input type only, `serving_default` takes that type.) Pre-processing inside the
graph is `maskspine.data.pipeline.preprocess_image`, the function `maskspine infer` uses:
resize keeping the aspect ratio, pad, normalise. Images of a bytes / Example batch may differ
in size.

Outputs of the serving signatures (D = `test_cfg.rcnn.max_per_img`); detections are sorted by
score, entries at index >= `num_detections` are padding (boxes and scores 0, classes -1,
masks 0):

| output | shape, dtype | meaning |
| --- | --- | --- |
| `num_detections` | [B] int32 | detections kept (score >= the score threshold) |
| `detection_boxes` | [B, D, 4] float32 | ymin, xmin, ymax, xmax in original-image pixels |
| `detection_scores` | [B, D] float32 | |
| `detection_classes` | [B, D] int32 | the data set's category ids |
| `detection_masks` | [B, D, 28, 28] float32 | probabilities relative to each box |
| `image_info` | [B, 4, 2] float32 | original (h, w); scaled (h, w); scale (y, x); offset (y, x) |
| `detection_masks_image` | [B, D, H, W] uint8 | with `full_masks`: 0 / 1 masks in the original image (H, W the largest image of the batch) |

The class names and category ids travel with the export in `assets/labels.json` and the
`labels` signature; the config the model was built from is `assets/config.yaml`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import tensorflow as tf

from maskspine import postprocess_tf
from maskspine.config import Config, save_config
from maskspine.data.pipeline import decode_image, padded_size, preprocess_image
from maskspine.errors import ExportError

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)

#: The input types of `maskspine export --input-type` (plus "all").
IMAGE_TENSOR = "image_tensor"
IMAGE_BYTES = "image_bytes"
TF_EXAMPLE = "tf_example"
INPUT_TYPES = (IMAGE_TENSOR, IMAGE_BYTES, TF_EXAMPLE)
ALL_INPUT_TYPES = "all"

#: Signature names per input type (the first type exported is also `serving_default`).
SIGNATURE_NAMES = {
    IMAGE_TENSOR: "serving_image_tensor",
    IMAGE_BYTES: "serving_image_bytes",
    TF_EXAMPLE: "serving_tf_example",
}
DEFAULT_SIGNATURE = "serving_default"
LABELS_SIGNATURE = "labels"

#: Input names of the serving signatures.
INPUT_NAMES = {IMAGE_TENSOR: "images", IMAGE_BYTES: "image_bytes", TF_EXAMPLE: "examples"}
#: The feature of a `tf.train.Example` holding the encoded image (the TF Object Detection key).
EXAMPLE_IMAGE_KEY = "image/encoded"

LABELS_ASSET = "labels.json"
CONFIG_ASSET = "config.yaml"

#: Padding value of `detection_classes` after `num_detections`.
CLASS_PADDING = -1


@dataclass
class ExportResult:
    """What `export_saved_model` wrote."""

    path: Path  # DIR/<version>
    version: int
    signatures: list[str]
    seconds: float
    size_bytes: int


# --------------------------------------------------------------------------- options


def resolve_input_types(input_types: str | Sequence[str]) -> list[str]:
    """`"all"`, one type or several -> a list of distinct types from INPUT_TYPES, in order.

    Raises:
        ExportError: an unknown type (names the valid ones).
    """
    names = [input_types] if isinstance(input_types, str) else list(input_types)
    resolved: list[str] = []
    for name in names:
        expanded = list(INPUT_TYPES) if name == ALL_INPUT_TYPES else [name]
        for item in expanded:
            if item not in INPUT_TYPES:
                raise ExportError(
                    f"unknown input type {item!r}: choose from "
                    f"{', '.join((*INPUT_TYPES, ALL_INPUT_TYPES))}"
                )
            if item not in resolved:
                resolved.append(item)
    if not resolved:
        raise ExportError("no input type given: choose from " + ", ".join(INPUT_TYPES))
    return resolved


def existing_versions(output_dir: str | Path) -> list[int]:
    """The numeric version folders (TF Serving's layout) in `output_dir`, sorted."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(output_dir: str | Path) -> int:
    """1 for a new or empty `output_dir`, else one more than its highest version."""
    versions = existing_versions(output_dir)
    return versions[-1] + 1 if versions else 1


def free_version(output_dir: str | Path, version: int | None = None) -> int:
    """The version folder an export will write: `version`, or the next free number.

    Raises:
        ExportError: `version` is not positive, or its folder exists already.
    """
    output_dir = Path(output_dir).expanduser()
    if version is None:
        return next_version(output_dir)
    if version < 1:
        raise ExportError(f"version must be a positive integer, got {version}")
    target = output_dir / str(version)
    if target.exists():
        raise ExportError(
            f"{target} exists already: choose another --version, or leave it out to write "
            f"version {next_version(output_dir)}"
        )
    return version


def class_table(config: Config) -> tuple[list[int], list[str]]:
    """(category ids, class names) of contiguous labels 1..K, background excluded; the ids
    are `Config.output_category_ids` (the config's, else 1..K)."""
    return config.output_category_ids, list(config.class_names)


# --------------------------------------------------------------------------- graph pieces


class ServingModel(tf.Module):
    """The exported object: the Keras model's variables and the assets; its `functions`, one
    `tf.function` per signature (see the module docstring), are saved as the signatures'
    concrete functions only."""

    def __init__(
        self,
        model: keras.Model,
        config: Config,
        *,
        input_types: Sequence[str] = INPUT_TYPES,
        batch_size: int | None = None,
        score_threshold: float | None = None,
        full_masks: bool = False,
        assets: dict[str, Path] | None = None,
    ):
        super().__init__(name="maskspine_serving")
        self._model = _Untracked(model)
        self._config = config
        self._score_threshold = score_threshold
        self._full_masks = full_masks
        self._mask_threshold = float(config.test_cfg.rcnn.mask_thr_binary)
        self._padded_size = padded_size(config)
        category_ids, class_names = class_table(config)
        self._category_ids = category_ids
        self._class_names = class_names
        # Filled by `signatures()` with the variables the traced functions read.
        self.model_variables: list[tf.Variable] = []
        self.assets = {
            name: tf.saved_model.Asset(str(path)) for name, path in (assets or {}).items()
        }

        height, width = self._padded_size
        # The model is traced once, in this function, which every signature calls: one copy of
        # its graph in the SavedModel however many input types there are.
        # With the model built for XLA (config jit_compile), this function is compiled:
        # decoding and resizing (outside it) stay in the graph.
        # These tf.functions are held out of TF's tracking (`_Untracked`): `tf.saved_model.save`
        # traces every tracked tf.function again in its own context (a new cache key), which
        # put a second copy of the model's graph in the SavedModel; it saves the signatures'
        # concrete functions, traced once by `signatures()`.
        detect_function = tf.function(
            self.detect,
            input_signature=[
                tf.TensorSpec([batch_size, height, width, 3], tf.float32),
                tf.TensorSpec([batch_size, 4, 2], tf.float32),
            ],
            autograph=False,
            jit_compile=bool(getattr(model, "xla", False)),
        )
        self._detect_function = _Untracked(detect_function)
        functions: dict[str, tf.types.experimental.PolymorphicFunction] = {}
        specs = {
            IMAGE_TENSOR: tf.TensorSpec(
                [batch_size, None, None, 3], tf.uint8, name=INPUT_NAMES[IMAGE_TENSOR]
            ),
            IMAGE_BYTES: tf.TensorSpec([batch_size], tf.string, name=INPUT_NAMES[IMAGE_BYTES]),
            TF_EXAMPLE: tf.TensorSpec([batch_size], tf.string, name=INPUT_NAMES[TF_EXAMPLE]),
        }
        bodies: dict[str, Callable] = {
            IMAGE_TENSOR: self._serve_image_tensor,
            IMAGE_BYTES: self._serve_image_bytes,
            TF_EXAMPLE: self._serve_tf_example,
        }
        for input_type in input_types:
            functions[SIGNATURE_NAMES[input_type]] = tf.function(
                bodies[input_type], input_signature=[specs[input_type]], autograph=False
            )
        functions[LABELS_SIGNATURE] = tf.function(self._labels, input_signature=[], autograph=False)
        self._functions = _Untracked(functions)

    @property
    def functions(self) -> dict[str, tf.types.experimental.PolymorphicFunction]:
        """{signature name: tf.function}, in the order of the input types, `labels` last."""
        return self._functions.value

    # ------------------------------------------------------------------ inputs

    def _serve_image_tensor(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        return self.detect_images(images)

    def _serve_image_bytes(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        return self.detect_encoded(image_bytes)

    def _serve_tf_example(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        features = tf.io.parse_example(
            examples, {EXAMPLE_IMAGE_KEY: tf.io.FixedLenFeature([], tf.string)}
        )
        return self.detect_encoded(features[EXAMPLE_IMAGE_KEY])

    def _labels(self) -> dict[str, tf.Tensor]:
        return {
            "category_ids": tf.constant(self._category_ids, tf.int32),
            "class_names": tf.constant(self._class_names, tf.string),
            "labels": tf.range(len(self._class_names), dtype=tf.int32),
        }

    # ------------------------------------------------------------------ detection

    def _preprocess_spec(self) -> tuple[tf.TensorSpec, tf.TensorSpec]:
        height, width = self._padded_size
        return tf.TensorSpec([height, width, 3], tf.float32), tf.TensorSpec([4, 2], tf.float32)

    def detect_images(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """uint8 [B, h, w, 3] RGB images of one size -> the serving outputs."""
        inputs, image_info = tf.map_fn(
            lambda image: preprocess_image(image, self._config),
            images,
            fn_output_signature=self._preprocess_spec(),
        )
        return self._detect_function.value(inputs, image_info)

    def detect_encoded(self, encoded: tf.Tensor) -> dict[str, tf.Tensor]:
        """string [B] encoded images (JPEG, PNG, ...) of any sizes -> the serving outputs."""
        inputs, image_info = tf.map_fn(
            lambda data: preprocess_image(decode_image(data), self._config),
            encoded,
            fn_output_signature=self._preprocess_spec(),
        )
        return self._detect_function.value(inputs, image_info)

    def detect(self, inputs: tf.Tensor, image_info: tf.Tensor) -> dict[str, tf.Tensor]:
        """Pre-processed float32 [B, H, W, 3] + image_info [B, 4, 2] -> the serving outputs
        (the module docstring's table)."""
        raw = self._model.value({"images": inputs, "image_info": image_info}, training=False)
        scores = tf.cast(raw["detection_scores"], tf.float32)
        classes = tf.cast(raw["detection_classes"], tf.int32)
        detections = scores.shape[1]
        keep = (tf.range(detections)[None, :] < raw["num_detections"][:, None]) & (classes > 0)
        if self._score_threshold is not None:
            keep &= scores >= self._score_threshold
        # Kept detections first, by score (NMS already sorts them; a stable sort keeps ties).
        order = tf.argsort(
            tf.where(keep, scores, -1.0), axis=1, direction="DESCENDING", stable=True
        )
        keep = tf.gather(keep, order, batch_dims=1)
        scores = tf.gather(scores, order, batch_dims=1)
        classes = tf.gather(classes, order, batch_dims=1)
        boxes = tf.gather(tf.cast(raw["detection_boxes"], tf.float32), order, batch_dims=1)
        masks = tf.gather(tf.cast(raw["detection_masks"], tf.float32), order, batch_dims=1)

        boxes = postprocess_tf.boxes_to_original(boxes, image_info)
        category_ids = tf.gather(
            tf.constant(self._category_ids, tf.int32), tf.maximum(classes - 1, 0)
        )
        outputs = {
            "num_detections": tf.reduce_sum(tf.cast(keep, tf.int32), axis=1),
            "detection_boxes": tf.where(keep[..., None], boxes, 0.0),
            "detection_scores": tf.where(keep, scores, 0.0),
            "detection_classes": tf.where(keep, category_ids, CLASS_PADDING),
            "detection_masks": tf.where(keep[..., None, None], masks, 0.0),
            "image_info": image_info,
        }
        if self._full_masks:
            image_sizes = tf.cast(tf.round(image_info[:, 0, :]), tf.int32)  # [B, 2]
            output_size = tf.reduce_max(image_sizes, axis=0)
            outputs["detection_masks_image"] = postprocess_tf.paste_masks(
                outputs["detection_masks"],
                outputs["detection_boxes"],
                image_sizes,
                output_size,
                threshold=self._mask_threshold,
            )
        return outputs

    def signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        """{signature name: concrete function}, `serving_default` being the first input type."""
        concrete = {name: fn.get_concrete_function() for name, fn in self.functions.items()}
        # Track the tf.Variables the graphs capture (not the Keras variables wrapping them):
        # the TF1-style loader of TF Serving and saved_model_cli restores exactly those.
        seen: set[int] = set()
        for function in concrete.values():
            for variable in function.variables:
                if id(variable) not in seen:
                    seen.add(id(variable))
                    self.model_variables.append(variable)
        first = next(iter(self.functions))
        return {DEFAULT_SIGNATURE: concrete[first], **concrete}


class _Untracked:
    """Holds an object out of sight of TF's tracking (the Keras model itself is not saved;
    its variables are, through `ServingModel.model_variables`)."""

    def __init__(self, value):
        self.value = value


# --------------------------------------------------------------------------- export


def export_saved_model(
    model: keras.Model,
    config: Config,
    output_dir: str | Path,
    *,
    version: int | None = None,
    input_types: str | Sequence[str] = ALL_INPUT_TYPES,
    batch_size: int | None = None,
    score_threshold: float | None = None,
    full_masks: bool = False,
) -> ExportResult:
    """Writes `model` as a SavedModel for TF Serving in `output_dir/<version>/`.

    Args:
        model: a built MaskRCNN (weights loaded).
        config: its config (sizes, normalisation, classes and category ids).
        output_dir: the model's base folder for TF Serving.
        version: the version folder; default the next free number (1 for a new folder).
        input_types: "all" or some of "image_tensor", "image_bytes", "tf_example"; the first
            one is `serving_default` too.
        batch_size: a fixed batch size in the signatures (default: any).
        score_threshold: drop detections scoring below this (default: keep what the model's
            `test_cfg.rcnn.score_thr` kept).
        full_masks: also output `detection_masks_image`, masks pasted into the original image.

    Returns:
        An ExportResult (path of the version folder, signatures, seconds, bytes on disk).

    Raises:
        ExportError: the version folder exists already, or a bad option.
    """
    start = time.perf_counter()
    types = resolve_input_types(input_types)
    if batch_size is not None and batch_size < 1:
        raise ExportError(f"batch size must be at least 1, got {batch_size}")
    if score_threshold is not None and not 0.0 <= score_threshold <= 1.0:
        raise ExportError(f"score threshold must be in [0, 1], got {score_threshold}")
    output_dir = Path(output_dir).expanduser()
    version = free_version(output_dir, version)
    target = output_dir / str(version)
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = output_dir / f".tmp-{version}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with tempfile.TemporaryDirectory(prefix="maskspine-export-") as scratch:
            # The graph's precision is fixed now: the config asset records what `auto` was.
            resolved = dataclasses.replace(config, precision=getattr(model, "precision", "float32"))
            assets = _write_assets(resolved, Path(scratch))
            serving = ServingModel(
                model,
                config,
                input_types=types,
                batch_size=batch_size,
                score_threshold=score_threshold,
                full_masks=full_masks,
                assets=assets,
            )
            signatures = serving.signatures()
            tf.saved_model.save(serving, str(staging), signatures=signatures)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    seconds = time.perf_counter() - start
    result = ExportResult(
        path=target,
        version=version,
        signatures=sorted(signatures),
        seconds=seconds,
        size_bytes=directory_size(target),
    )
    logger.info(
        "exported %s (signatures %s) in %.1f s, %.1f MB",
        target,
        ", ".join(result.signatures),
        seconds,
        result.size_bytes / 1e6,
    )
    return result


def _write_assets(config: Config, folder: Path) -> dict[str, Path]:
    """labels.json ([{"label", "category_id", "name"}], label 0-based as in the reference's
    JSON) and the config, to be copied into the SavedModel's assets/."""
    category_ids, class_names = class_table(config)
    labels = [
        {"label": index, "category_id": category_id, "name": name}
        for index, (category_id, name) in enumerate(zip(category_ids, class_names))
    ]
    labels_path = folder / LABELS_ASSET
    labels_path.write_text(json.dumps(labels, indent=1))
    config_path = folder / CONFIG_ASSET
    save_config(config, config_path)
    return {"labels": labels_path, "config": config_path}


def directory_size(path: str | Path) -> int:
    """Bytes of all files under `path`."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
