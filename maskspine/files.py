"""Writing files so that a reader, or a run killed half-way, never sees a torn one; reading
the small JSON files of a run back."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from maskspine.errors import DataError

logger = logging.getLogger(__name__)


def default_file_mode() -> int:
    """The mode `open()` gives a new file under the current umask (0o644 under 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_text_file(path: str | os.PathLike) -> Iterator[TextIO]:
    """A text file to write `path` through, bit by bit: the writes go to a temporary file in
    the same folder, which is synced and `os.replace`d onto `path` when the block ends
    without an exception (and deleted when it raises). A reader sees the old file or the
    new one, never a half-written one; a long writer holds no more than it writes at once.

    The file gets the mode a plain `open(path, "w")` would give (the umask's), not the
    0600 of `tempfile.mkstemp`: other users, a notebook server or a TF Serving container
    running as another uid can read it as they could any other file of the run.

    Raises:
        OSError: the folder cannot be created or written (before the block runs).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(handle, default_file_mode())
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Writes `text` to `path` through `atomic_text_file`: the old file or the new one is
    there, never a half-written one.

    Returns:
        The path written.
    """
    with atomic_text_file(path) as file:
        file.write(text)
    return Path(path)


def check_writable(path: str | os.PathLike, what: str = "output") -> Path:
    """Fails early, before any work, when a file cannot be written at `path`: its folder
    cannot be created or written, or `path` is a folder.

    Raises:
        DataError: naming the path and the reason.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise DataError(f"cannot write the {what} here: it is a folder", path=path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        reason = error.strerror or str(error)
        raise DataError(f"cannot write the {what} here ({reason})", path=path) from None
    return path


def load_json_file(
    path: str | os.PathLike, what: str, error: type[Exception] = ValueError, fix: str = ""
) -> Any:
    """The JSON a user named (a predictions file, ...), or one clear error naming it.

    Args:
        what: what the file is, for the messages ("predictions file").
        error: the exception raised for a file that is not JSON (a `MaskspineError`).
        fix: appended to that message (what to do about it).

    Raises:
        FileNotFoundError: `{what} not found: {path}`.
        error: `{path}: not valid JSON (...)` + fix.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as problem:
        raise error(f"{path}: not valid JSON ({problem}){fix}") from None


def read_json(path: str | os.PathLike, default: Any) -> Any:
    """The JSON in `path`, or `default` when the file is missing or damaged (a warning
    names a damaged file: the bookkeeping it held is rebuilt from the checkpoints)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as error:
        logger.warning("%s is damaged (%s); ignoring it", path, error)
        return default


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Writes JSON so that a reader sees the old or the new file, never a torn one."""
    write_text_atomic(path, json.dumps(data, indent=1))
