"""What to run on: the `--input`s of `maskspine infer` as users give them, sorted into images,
videos and a camera, with every file left out named and why.

    found = collect_inputs(["photos/", "extra/*.webp", "clip.mp4"], recursive=True)
    found.images     # [InputFile(path, kind="image", name)], in order
    found.videos     # [InputFile(path, kind="video", name)]
    found.camera     # "camera:0" or None
    found.skipped    # [(path, reason)]

An input is a file, a folder (its files; with `recursive`, its sub-folders' too), a glob
pattern (`photos/*.png`, `photos/**/*.jpg` with `recursive`), or `camera:N`. Each file is
sorted by its content, not its name: whatever Pillow reads is an image (JPEG, PNG, WebP,
BMP, TIFF, a GIF of one frame, ...; the first frame of a multi-frame TIFF or WebP); an
animated GIF and whatever FFmpeg reads as a video stream (through PyAV, the `video` extra)
is a video. Hidden files and folders (names starting with ".") in a folder are passed over
silently; any other file that is neither is skipped with the reason. Nothing here imports
TensorFlow.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from maskspine.errors import DataError, InferenceError

#: The `--input` of a camera: `camera:<device index>`.
CAMERA_PREFIX = "camera:"

#: Endings of video files: a file ending so that Pillow does not read is named as a video
#: that needs PyAV when PyAV is missing (otherwise the content decides).
VIDEO_SUFFIXES = (
    ".mp4",
    ".m4v",
    ".mov",
    ".mkv",
    ".webm",
    ".avi",
    ".mpg",
    ".mpeg",
    ".wmv",
    ".flv",
    ".ts",
    ".3gp",
    ".ogv",
)

#: What to install when PyAV is missing.
VIDEO_EXTRA = 'pip install "maskspine[video]" (in a checkout: pip install -e ".[video]")'

_GLOB_CHARACTERS = frozenset("*?[")


@dataclass(frozen=True)
class InputFile:
    """One file to run on.

    Attributes:
        path: the path as given or found (`folder/child`; the key of its JSON entries).
        kind: "image" or "video".
        name: its name for the outputs drawn from it: the path below the folder it was found
            in (`sub/x.jpg`), or the file name for a file or a glob match.
    """

    path: Path
    kind: str
    name: Path


@dataclass
class Inputs:
    """The inputs of one run (see the module docstring)."""

    images: list[InputFile] = field(default_factory=list)
    videos: list[InputFile] = field(default_factory=list)
    camera: str | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def files(self) -> list[InputFile]:
        """The images, then the videos."""
        return [*self.images, *self.videos]


def is_camera(spec: str | os.PathLike) -> bool:
    """True for a `camera:N` input."""
    return str(spec).startswith(CAMERA_PREFIX)


def _has_pyav() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def file_kind(path: str | os.PathLike) -> tuple[str | None, str]:
    """What a file is, by its content: ("image", ""), ("video", ""), or (None, why it is
    neither: not readable, not an image or a video, a video without PyAV)."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            animated = image.format == "GIF" and getattr(image, "n_frames", 1) > 1
        return ("video" if animated and _has_pyav() else "image"), ""
    except UnidentifiedImageError:
        pass
    except OSError as error:
        return None, f"cannot read the file ({error.strerror or error})"
    except Exception as error:  # Pillow's plug-ins raise anything on a damaged header
        return None, f"not a readable image ({error})"
    if not _has_pyav():
        if path.suffix.lower() in VIDEO_SUFFIXES:
            return None, f"a video, and videos need PyAV: {VIDEO_EXTRA}"
        return None, f"not an image (nor a video: reading videos needs PyAV, {VIDEO_EXTRA})"
    import av

    try:
        with av.open(str(path), options={"probesize": "5000000"}) as container:
            # FFmpeg's still-image readers (image2, png_pipe, ...) take what Pillow could not
            # read: a damaged image, or a file named like one.
            still = container.format.name == "image2" or container.format.name.endswith("_pipe")
            if still:
                return None, "a damaged image, or not an image (Pillow cannot read it)"
            if container.streams.video:
                return "video", ""
            kinds = ", ".join(sorted({stream.type for stream in container.streams})) or "none"
            return None, f"has no video stream (streams: {kinds})"
    except (av.error.FFmpegError, ValueError, OSError, EOFError):
        return None, "not an image or a video (neither Pillow nor FFmpeg reads it)"


def _folder_files(folder: Path, recursive: bool) -> list[Path]:
    """The files of a folder, sorted by path; hidden files and folders passed over."""
    found = []
    for root, folders, files in os.walk(folder):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        if not recursive:
            folders[:] = []
        for name in sorted(files):
            if not name.startswith("."):
                found.append(Path(root) / name)
    return sorted(found, key=lambda path: path.relative_to(folder).parts)


def _expand(spec: str, recursive: bool) -> list[tuple[Path, Path]]:
    """(path, name for outputs) of every file one `--input` stands for (see the module
    docstring); sub-folders of a folder, and folders a glob matches, are expanded too.

    Raises:
        FileNotFoundError: nothing at `spec`, or a glob that matches nothing.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        return [(child, child.relative_to(path)) for child in _folder_files(path, recursive)]
    if path.exists():
        return [(path, Path(path.name))]
    if _GLOB_CHARACTERS & set(spec):
        matches = sorted(glob.glob(os.path.expanduser(spec), recursive=recursive))
        if not matches:
            raise FileNotFoundError(f"no file matches {spec}")
        found: list[tuple[Path, Path]] = []
        for match in map(Path, matches):
            if match.is_dir():
                found.extend((child, Path(child.name)) for child in _folder_files(match, False))
            else:
                found.append((match, Path(match.name)))
        return found
    raise FileNotFoundError(
        f"input not found: {spec} (give image or video files, folders, glob patterns such as "
        "'photos/*.jpg', or camera:N)"
    )


def collect_inputs(specs: Sequence[str | os.PathLike], *, recursive: bool = False) -> Inputs:
    """Every file the `--input`s stand for, sorted into images and videos (see the module
    docstring). A file named twice is taken once.

    Raises:
        FileNotFoundError: an input that does not exist, or a pattern that matches nothing.
        DataError: a camera given with other inputs, or a spec that is not `camera:<number>`.
        InferenceError: nothing to run on (every file skipped: the reasons are listed).
    """
    specs = [str(spec) for spec in specs]
    if not specs:
        raise InferenceError("no --input given: name image or video files, folders or camera:N")
    found = Inputs()
    cameras = [spec for spec in specs if is_camera(spec)]
    if cameras:
        if len(specs) > 1:
            raise DataError(f"{cameras[0]} runs until it is stopped: give it as the only --input")
        number = cameras[0][len(CAMERA_PREFIX) :]
        if not number.isdigit():
            raise DataError(
                f"a camera is given as camera:<device number>, e.g. camera:0; got {cameras[0]}"
            )
        found.camera = cameras[0]
        return found
    seen: set[Path] = set()
    for spec in specs:
        for path, name in _expand(spec, recursive):
            real = path.resolve()
            if real in seen:
                continue
            seen.add(real)
            kind, reason = file_kind(path)
            if kind is None:
                found.skipped.append((str(path), reason))
                continue
            (found.images if kind == "image" else found.videos).append(InputFile(path, kind, name))
    if not found.images and not found.videos:
        if len(found.skipped) == 1:
            path, reason = found.skipped[0]
            raise InferenceError(f"{path}: {reason}")
        reasons = "; ".join(f"{path}: {reason}" for path, reason in found.skipped[:3])
        more = f"; and {len(found.skipped) - 3} more" if len(found.skipped) > 3 else ""
        what = f" ({reasons}{more})" if reasons else ""
        folders = any(Path(spec).expanduser().is_dir() for spec in specs)
        hint = "; --recursive searches sub-folders too" if folders and not recursive else ""
        raise InferenceError(f"no image or video to run on in {', '.join(specs)}{what}{hint}")
    return found
