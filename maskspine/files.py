"""Writing files so that a reader, or a run killed half-way, never sees a torn one, and so that
no command ever overwrites what a user gave it; reading the small JSON files of a run back.

    with StagedOutputs() as staged:                    # every output of one run
        json_path = staged.stage("preds.json")         # a temporary name beside it
        ...                                            # write json_path
    # committed: each temporary file renamed onto its destination; an exception (a crash,
    # a second Ctrl-C) deletes them instead and the previous outputs stay as they were

    check_outputs(outputs={"--output": "preds.json"}, inputs=[...], folders={"--draw": "d/"})
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import tempfile
from collections.abc import Iterable, Iterator, Mapping
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


# --------------------------------------------------------------------------- outputs


def resolved(path: str | os.PathLike) -> Path:
    """`path` made absolute with `~`, `..` and every symbolic link resolved (the file itself
    need not exist): two names of one file give the same path."""
    return Path(path).expanduser().resolve(strict=False)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_outputs(
    outputs: Mapping[str, str | os.PathLike | None],
    inputs: Iterable[str | os.PathLike],
    *,
    folders: Mapping[str, str | os.PathLike | None] | None = None,
) -> None:
    """Refuses, before any work, outputs that would overwrite what the user gave: an output
    file that is one of the inputs (through any name: relative, `~`, a symbolic link), an
    output folder that holds an input, and two outputs that are one file. Then checks that
    each output can be written (`check_writable`, `check_writable_folder`).

    Args:
        outputs: {option or role, e.g. "--output": output file or None}.
        inputs: every input file (images, videos, checkpoints, predictions files).
        folders: {option: output folder or None}: folders whose files the run writes.

    Raises:
        DataError: naming the option, the path and the fix.
    """
    given_inputs = [(resolved(path), Path(path)) for path in inputs]
    files = {option: resolved(path) for option, path in outputs.items() if path is not None}
    for option, target in files.items():
        for real, name in given_inputs:
            if target == real:
                raise DataError(
                    f"{option} would overwrite the input {name}; write to another file",
                    path=outputs[option],
                )
    seen: dict[Path, str] = {}
    for option, target in files.items():
        if target in seen:
            raise DataError(
                f"{option} and {seen[target]} name the same file; give each its own",
                path=outputs[option],
            )
        seen[target] = option
    for option, folder in (folders or {}).items():
        if folder is None:
            continue
        root = resolved(folder)
        for real, name in given_inputs:
            if _inside(real, root):
                raise DataError(
                    f"{option} is the folder of the input {name}: its drawings could replace "
                    "or mix with the inputs; write them to another folder",
                    path=folder,
                )
        check_writable_folder(folder, option)
    for option in files:
        check_writable(outputs[option], option)  # type: ignore[arg-type]


def check_writable_folder(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Fails early when files cannot be written into the folder `path` (created if missing:
    its nearest existing parent must be writable; an existing file there is an error).

    Raises:
        DataError: naming the path and the reason.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise DataError(f"{what} must be a folder, but this is a file", path=path)
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise DataError(f"cannot create the {what} here: {existing} is a file", path=path)
    try:  # a real probe: access() says yes to root in read-only and virtual file systems
        os.rmdir(tempfile.mkdtemp(prefix=".maskspine-probe-", dir=existing))
    except OSError as error:
        reason = error.strerror or str(error)
        raise DataError(f"cannot write the {what} here ({reason})", path=path) from None
    return path


class StagedOutputs:
    """The outputs of one run, each written under a temporary name beside its destination
    and renamed onto it only when the run ends well (`commit`), so that an existing output is
    replaced only by a whole new one, and a run that crashes or is aborted (a second Ctrl-C,
    KeyboardInterrupt) leaves every previous output as it was (`abort`).

    As a context manager: commit at the end of a block that raises nothing, abort otherwise.
    Folders created for the outputs and left empty by an abort are removed again.
    """

    def __init__(self) -> None:
        self._staged: dict[Path, Path] = {}  # destination -> temporary file
        self._created: list[Path] = []

    def stage(self, destination: str | os.PathLike) -> Path:
        """A temporary path to write `destination` through: in the same folder (created if
        missing), hidden, ending like the destination (writers that choose a format by the
        ending choose the same one). Staging a destination twice gives the same path."""
        destination = Path(destination).expanduser()
        if destination in self._staged:
            return self._staged[destination]
        self._make_folder(destination.parent)
        token = secrets.token_hex(4)
        temporary = destination.with_name(
            f".{destination.name}.{token}.partial{destination.suffix}"
        )
        self._staged[destination] = temporary
        return temporary

    def _make_folder(self, folder: Path) -> None:
        missing = []
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for created in reversed(missing):
            created.mkdir()
            self._created.append(created)

    @property
    def staged(self) -> dict[Path, Path]:
        """{destination: temporary path} of everything staged so far."""
        return dict(self._staged)

    def discard(self, destination: str | os.PathLike) -> None:
        """Drops one staged output (its temporary file deleted): the destination is left as it
        was at commit."""
        temporary = self._staged.pop(Path(destination).expanduser(), None)
        if temporary is not None:
            with contextlib.suppress(OSError):
                temporary.unlink()

    def commit(self) -> list[Path]:
        """Renames every temporary file that was written onto its destination (those never
        written are skipped); returns the destinations written."""
        written = []
        for destination, temporary in self._staged.items():
            if temporary.exists():
                os.chmod(temporary, default_file_mode())
                os.replace(temporary, destination)
                written.append(destination)
        self._staged.clear()
        return written

    def abort(self) -> None:
        """Deletes every temporary file; the destinations stay as they were."""
        for temporary in self._staged.values():
            with contextlib.suppress(OSError):
                temporary.unlink()
        self._staged.clear()
        for folder in reversed(self._created):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
        self._created.clear()

    def __enter__(self) -> StagedOutputs:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()
