"""Finding and opening a checkpoint given as a prefix, a directory or a downloaded .tar.gz.

    with open_checkpoint("spinenet-49.tar.gz") as checkpoint:
        checkpoint.prefix, checkpoint.format, checkpoint.reader.get_tensor(name)

Reading is `tf.train.load_checkpoint` alone: TensorFlow's reader for both the TF1 `Saver`
format of the tensorflow/tpu model zoo (`model.ckpt-162050.{index,data-*}`) and the
object-based `tf.train.Checkpoint` format Model Garden writes (`ckpt-1.{index,data-*}`).
"""

from __future__ import annotations

import contextlib
import re
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskspine.errors import WeightsImportError

__all__ = ["OBJECT_GRAPH_KEY", "OpenCheckpoint", "WeightsImportError", "open_checkpoint"]

#: Key that only object-based (`tf.train.Checkpoint`) checkpoints hold.
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_STEP = re.compile(r"-(\d+)$")


@dataclass
class OpenCheckpoint:
    """An opened checkpoint: its prefix, `tf.train.load_checkpoint` reader, and format
    ("tpu": TF1 name-based, "modelgarden": object-based)."""

    prefix: str
    reader: Any
    format: str

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """{key: shape} of every stored tensor except the object graph."""
        return {
            key: tuple(int(d) for d in shape)
            for key, shape in self.reader.get_variable_to_shape_map().items()
            if key != OBJECT_GRAPH_KEY
        }


@contextlib.contextmanager
def open_checkpoint(source: str | Path) -> Iterator[OpenCheckpoint]:
    """Opens SOURCE: a checkpoint prefix, a directory holding one (the latest), or a
    .tar.gz / .tgz / .tar of one (extracted to a temporary directory, removed after).

    Raises:
        WeightsImportError: nothing readable at SOURCE (missing, truncated, not a checkpoint).
    """
    source = Path(source).expanduser()
    with contextlib.ExitStack() as stack:
        if source.is_file() and source.name.endswith(_TAR_SUFFIXES):
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="maskspine-")))
            _extract(source, folder)
            prefix = _prefix_in_directory(folder, shown=source)
        elif source.is_dir():
            prefix = _prefix_in_directory(source, shown=source)
        else:
            prefix = _prefix_of_file(source)
        reader = _load(prefix, shown=source)
        shapes = reader.get_variable_to_shape_map()
        yield OpenCheckpoint(
            prefix=prefix,
            reader=reader,
            format="modelgarden" if OBJECT_GRAPH_KEY in shapes else "tpu",
        )


def _extract(archive: Path, folder: Path) -> None:
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(folder, filter="data")
    except tarfile.ReadError:
        raise WeightsImportError(
            f"{archive}: not a .tar, .tar.gz or .tgz archive, or a damaged one; download it "
            "again (or give the checkpoint prefix or its folder)"
        ) from None
    except (tarfile.TarError, OSError, EOFError) as error:
        reason = " ".join(str(getattr(error, "strerror", None) or error).split())
        raise WeightsImportError(
            f"{archive}: cannot extract the archive ({reason}); download it again"
        ) from None


def _prefix_of_file(path: Path) -> str:
    """A prefix given as such (`model.ckpt-1`) or as one of its files (`.index`, `.data-*`)."""
    text = str(path)
    for pattern in (r"\.index$", r"\.data-\d+-of-\d+$", r"\.meta$"):
        text = re.sub(pattern, "", text)
    if not Path(text + ".index").is_file():
        if not path.exists() and not Path(text).parent.is_dir():
            raise WeightsImportError(f"checkpoint not found: {path}")
        raise WeightsImportError(
            f"checkpoint not found: {path} (expected {Path(text).name}.index and its "
            ".data-* files, a directory holding them, or the downloaded .tar.gz)"
        )
    return text


def _prefix_in_directory(folder: Path, *, shown: Path) -> str:
    """The latest checkpoint in a directory or, as in the model zoo's archives, one level
    below: the one named in a `checkpoint` state file, else the highest step."""
    import tensorflow as tf

    for candidate in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]:
        latest = tf.train.latest_checkpoint(str(candidate))
        if latest and Path(latest + ".index").is_file():
            return latest
        indexes = sorted(candidate.glob("*.index"))
        if indexes:
            return str(max(indexes, key=_step_of)).removesuffix(".index")
    raise WeightsImportError(
        f"no checkpoint in {shown}: expected a *.index file with its .data-* files "
        "(or a `checkpoint` state file naming one)"
    )


def _step_of(index_file: Path) -> tuple[int, str]:
    match = _STEP.search(index_file.name.removesuffix(".index"))
    return (int(match.group(1)) if match else -1, index_file.name)


def _load(prefix: str, *, shown: Path):
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(prefix)
        reader.get_variable_to_shape_map()
    except (tf.errors.OpError, ValueError) as error:
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error)
        raise WeightsImportError(
            f"{shown}: not a readable TensorFlow checkpoint ({reason}); is the download "
            "complete (.index and every .data-* file)?"
        ) from None
    return reader
