"""TFDS preparation: a COCO-format source turned once into TFRecord shards.

`prepare(source)` reads every image and annotation of a `CocoSource` (checking that each
image decodes, decoding every polygon and RLE), and writes TFDS shards under the data
directory; later runs read the shards. One prepared data set per source, in
`<data dir>/prepared/<name>-<hash>/coco_folder/1.0.0/`, where the hash covers the paths
and the annotations file's size and modification time (edit labels.json and it is
prepared again; `force=True` or `maskspine data prepare --force` after changing images).

Each example holds:

| feature | stored as | meaning |
| --- | --- | --- |
| `image` | JPEG / PNG bytes | the image as on disk (exotic modes re-encoded as PNG) |
| `image_id` | int64 | the data set's image id |
| `file_name` | text | as in labels.json |
| `objects/id` | int64 [N] | annotation ids |
| `objects/box` | float32 [N, 4] | yxyx, original image pixels |
| `objects/category_id` | int64 [N] | the data set's category ids (not labels) |
| `objects/is_crowd` | bool [N] | COCO `iscrowd` |
| `objects/mask` | PNG [N] | one 0/1 mask per instance at the image's size |

The data set's metadata (`metadata.json`) keeps the categories, the images skipped with
their reasons, the instance count of every stored image and the source paths.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import logging
import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from maskspine.data.coco import (
    CocoLabels,
    CocoSource,
    DataError,
    ImageExample,
    ReadSummary,
    iter_examples,
    log_problems,
)
from maskspine.data.shapes import default_data_root

logger = logging.getLogger(__name__)

#: The single TFDS split of a prepared source (a source is already one split).
PREPARED_SPLIT = "data"
_BUILDER_NAME = "coco_folder"
_VERSION = "1.0.0"


class CocoFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """TFDS builder over one COCO-format source (images folder + annotations file)."""

    VERSION = tfds.core.Version(_VERSION)
    RELEASE_NOTES = {_VERSION: "Images as on disk, PNG instance masks, yxyx pixel boxes."}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> None:
        # TFDS looks for checksum files beside the builder's code through
        # `importlib_resources`, which is not installed; a local folder has no checksums.
        return None

    def __init__(self, *, source: CocoSource | None = None, **kwargs: Any):
        self._source = source
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="A COCO-format folder prepared by maskspine.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "image_id": np.int64,
                    "file_name": tfds.features.Text(),
                    "objects": tfds.features.Sequence(
                        {
                            "id": np.int64,
                            "box": tfds.features.Tensor(shape=(4,), dtype=np.float32),
                            "category_id": np.int64,
                            "is_crowd": np.bool_,
                            "mask": tfds.features.Image(
                                shape=(None, None, 1), encoding_format="png"
                            ),
                        }
                    ),
                }
            ),
            # Keep labels.json order, so `train_dataset_num` takes the first images.
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # nothing is downloaded
        if self._source is None:
            raise DataError("CocoFolder needs a source to prepare")
        return {PREPARED_SPLIT: self._generate_examples()}

    def _generate_examples(self) -> Iterator[tuple[int, dict[str, Any]]]:
        source = self._source
        labels = CocoLabels(source.annotations_file)
        summary = ReadSummary()
        counts: list[int] = []
        non_crowd: list[int] = []
        for index, example in enumerate(iter_examples(source, summary, labels=labels)):
            counts.append(len(example.instances))
            non_crowd.append(sum(not instance.is_crowd for instance in example.instances))
            yield index, _features(example)
        log_problems(summary.problems, source.name)
        self.info.metadata.update(
            {
                "images_dir": str(source.images_dir),
                "annotations_file": str(source.annotations_file),
                "categories": [[cid, name] for cid, name in labels.categories],
                "num_images_listed": len(labels.images),
                "skipped_images": [list(item) for item in summary.skipped_images],
                "dropped_annotations": summary.dropped_annotations,
                "instance_counts": counts,
                "non_crowd_counts": non_crowd,
            }
        )


def _encode_mask(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _features(example: ImageExample) -> dict[str, Any]:
    instances = example.instances
    return {
        "image": example.encoded,
        "image_id": example.image_id,
        "file_name": example.file_name,
        "objects": {
            "id": np.array([i.annotation_id for i in instances], np.int64),
            "box": np.array([i.box for i in instances], np.float32).reshape(-1, 4),
            "category_id": np.array([i.category_id for i in instances], np.int64),
            "is_crowd": np.array([i.is_crowd for i in instances], bool),
            "mask": [_encode_mask(i.mask) for i in instances],
        },
    }


# --------------------------------------------------------------------------- prepared data


@dataclass(frozen=True)
class PreparedData:
    """A prepared source, ready to read.

    Attributes:
        directory: the TFDS data set directory (holding dataset_info.json).
        name: the source's name, for messages.
        categories: (category_id, name) sorted by id.
        num_examples: stored images.
        skipped_images: (file name, reason) of the images left out.
        instance_counts: instances (crowd included) of each stored image, in order.
        non_crowd_counts: non-crowd instances of each stored image, in order.
    """

    directory: Path
    name: str
    categories: list[tuple[int, str]]
    num_examples: int
    skipped_images: list[tuple[str, str]]
    instance_counts: list[int]
    non_crowd_counts: list[int]

    def builder(self) -> tfds.core.DatasetBuilder:
        """The TFDS builder reading this directory."""
        with _quiet_logs():
            return tfds.builder_from_directory(self.directory)

    def as_dataset(self, *, read_config: tfds.ReadConfig | None = None) -> tf.data.Dataset:
        """The stored examples in order, with the image and masks left encoded:
        `image` string, `objects/mask` string [N] (PNG), the rest decoded."""
        builder = self.builder()
        with _quiet_logs():
            return builder.as_dataset(
                split=PREPARED_SPLIT,
                shuffle_files=False,
                read_config=read_config,
                decoders={
                    "image": tfds.decode.SkipDecoding(),
                    "objects": {"mask": tfds.decode.SkipDecoding()},
                },
            )


def load_prepared(directory: str | Path) -> PreparedData:
    """Opens a prepared data set: its TFDS directory, or any folder above it that holds one.

    Raises:
        FileNotFoundError: no dataset_info.json at or under `directory`.
    """
    directory = Path(directory).expanduser()
    if not (directory / "dataset_info.json").is_file():
        found = sorted(directory.glob(f"**/{_BUILDER_NAME}/*/dataset_info.json"))
        if not found:
            raise FileNotFoundError(f"no prepared data set (dataset_info.json) in {directory}")
        directory = found[-1].parent
    with _quiet_logs():
        builder = tfds.builder_from_directory(directory)
    metadata = builder.info.metadata or {}
    name = metadata.get("annotations_file", str(directory))
    if name.endswith("/labels.json"):
        name = name[: -len("/labels.json")]
    return PreparedData(
        directory=directory,
        name=name,
        categories=[(int(cid), str(n)) for cid, n in metadata.get("categories", [])],
        num_examples=builder.info.splits[PREPARED_SPLIT].num_examples,
        skipped_images=[(str(f), str(r)) for f, r in metadata.get("skipped_images", [])],
        instance_counts=[int(c) for c in metadata.get("instance_counts", [])],
        non_crowd_counts=[int(c) for c in metadata.get("non_crowd_counts", [])],
    )


def is_prepared_directory(path: str | Path) -> bool:
    """True when `path` is (or holds) a prepared data set."""
    path = Path(path).expanduser()
    return (path / "dataset_info.json").is_file() or any(
        path.glob(f"**/{_BUILDER_NAME}/*/dataset_info.json")
    )


def prepared_root(source: CocoSource, data_dir: str | Path | None = None) -> Path:
    """The folder a source is prepared into (TFDS adds `coco_folder/<version>/` below)."""
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_root()
    annotations = source.annotations_file.resolve()
    stat = annotations.stat()
    key = f"{source.images_dir.resolve()}|{annotations}|{stat.st_size}|{stat.st_mtime_ns}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    if annotations.name == "labels.json":
        readable = f"{annotations.parent.parent.name}-{annotations.parent.name}"
    else:
        readable = annotations.stem
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", readable).strip("_.-") or "source"
    return root / "prepared" / f"{readable}-{digest}"


def prepare(
    source: CocoSource, *, data_dir: str | Path | None = None, force: bool = False
) -> PreparedData:
    """Prepares a source once (a no-op when already prepared) and opens it.

    Warnings name every skipped image and dropped annotation (the first few, then a count)
    and one summary line counts them. Safe to call from several processes at once.

    Raises:
        FileNotFoundError: the images folder or annotations file is missing.
        DataError: labels.json is not usable (not COCO, unknown category ids, no images).
    """
    source.check_exists()
    root = prepared_root(source, data_dir)
    version_dir = root / _BUILDER_NAME / _VERSION
    if not force and (version_dir / "dataset_info.json").is_file():
        return load_prepared(version_dir)
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root.with_name(root.name + ".lock")):
        if force and version_dir.exists():
            shutil.rmtree(version_dir)
        if not (version_dir / "dataset_info.json").is_file():
            logger.info("preparing %s into %s", source.name, version_dir)
            builder = CocoFolder(source=source, data_dir=root)
            with _quiet_preparation():
                builder.download_and_prepare(
                    download_dir=root / "downloads",
                    download_config=tfds.download.DownloadConfig(try_download_gcs=False),
                )
            shutil.rmtree(root / "downloads", ignore_errors=True)
    prepared = load_prepared(version_dir)
    if prepared.num_examples == 0:
        raise DataError(
            "no usable images (see the warnings above, or run "
            f"`maskspine data inspect {source.name}`)",
            path=source.name,
        )
    return prepared


def summary_line(prepared: PreparedData) -> str:
    """`<name>: N images (K skipped: a.jpg (reason), ...)`."""
    line = f"{prepared.name}: {prepared.num_examples} images"
    if prepared.skipped_images:
        shown = ", ".join(f"{name} ({reason})" for name, reason in prepared.skipped_images[:5])
        more = len(prepared.skipped_images) - 5
        line += f"; {len(prepared.skipped_images)} skipped: {shown}"
        if more > 0:
            line += f" and {more} more"
    return line


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """TFDS logs its own deprecations and every file it opens; noise for our users."""
    noisy = [logging.getLogger(name) for name in ("absl", "tensorflow")]
    levels = [each.level for each in noisy]
    for each in noisy:
        each.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for each, level in zip(noisy, levels, strict=True):
            each.setLevel(level)


@contextlib.contextmanager
def _quiet_preparation() -> Iterator[None]:
    """Quiet logs; TFDS' "Downloading and preparing" lines (nothing is downloaded) to the
    log; its progress bar only on a terminal."""
    interactive = sys.stderr.isatty()
    if not interactive:
        tfds.disable_progress_bar()
    printed = io.StringIO()
    try:
        with _quiet_logs(), contextlib.redirect_stdout(printed):
            yield
    finally:
        if not interactive:
            tfds.enable_progress_bar()
        for line in printed.getvalue().splitlines():
            logger.debug("tfds: %s", line)
