"""Video files and cameras: frames in, frames out (PyAV, the `video` extra).

    with open_source("clip.mp4") as source:            # or "camera:0"
        source.info                                    # VideoInfo: size, frame rate, frame count
        for frame in source:                           # Frame(index, time_s, pixels)
            ...                                        # pixels: uint8 [height, width, 3] RGB
        source.damage                                  # None, or what cut the video short
    with VideoWriter("drawn.mp4", source.info.frame_rate, (height, width)) as writer:
        writer.write(pixels)

Frames are decoded by FFmpeg's libraries inside PyAV (`pip install "maskspine[video]"`), so
any container and codec FFmpeg reads works: MP4 / MOV (H.264, H.265, MPEG-4), WebM / MKV
(VP8, VP9, AV1), AVI, animated GIF, ... Every frame is converted once to RGB at the stream's
size; `index` counts the decoded frames from 0 and `time_s` is the frame's presentation time
in seconds from the start of the stream (from its timestamp; `index / frame rate` when the
container gives none). Frames are taken as stored: a rotation tag (phone videos) is not
applied, as the EXIF orientation of images is not (`maskspine.data.images`). A camera
(`camera:N`: `/dev/videoN` through V4L2 on Linux, AVFoundation device N on macOS) gives the
same frames, its times counted from the first frame.

A damaged file is read up to the damage: the frames before it are kept and `damage` names it
(an FFmpeg decoding error; fewer frames, or an earlier end, than the header announces; a GIF
without its end marker). An MP4 / MOV cut before its index (the `moov` box, which most
writers put at the end) cannot be read at all; the error says so.

This module is input and output only: running the model over frames is
`maskspine.predict.predict_frames`, drawing them `maskspine.visualize`, and the `infer`
command's video runs `maskspine.inference`. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Protocol

import numpy as np

from maskspine.errors import DataError, InferenceError
from maskspine.files import check_writable
from maskspine.inputs import CAMERA_PREFIX, VIDEO_EXTRA, is_camera

#: Codec of a written video by the file name's ending (all inside PyAV's wheels).
WRITER_CODECS = {
    ".mp4": "libx264",
    ".m4v": "libx264",
    ".mov": "libx264",
    ".mkv": "libx264",
    ".webm": "libvpx-vp9",
    ".avi": "mpeg4",
    ".gif": "gif",
}


def import_av() -> Any:
    """PyAV, or an `InferenceError` naming the `video` extra when it is not installed."""
    try:
        import av
    except ImportError:
        raise InferenceError(f"videos and cameras need PyAV: {VIDEO_EXTRA}") from None
    return av


class Frame(NamedTuple):
    """One video frame.

    Attributes:
        index: the frame's 0-based number in the source (decoding order, which is
            presentation order).
        time_s: presentation time in seconds from the start of the stream.
        pixels: uint8 [height, width, 3] RGB.
    """

    index: int
    time_s: float
    pixels: np.ndarray


@dataclass(frozen=True)
class VideoInfo:
    """What a source says about its frames before they are read.

    Attributes:
        name: the key prefix of its frames in the JSON: the path as given, or `camera:N`.
        height, width: frame size in pixels (every frame is given at this size).
        frame_rate: frames per second (the stream's average rate), as an exact fraction
            (30000/1001 for NTSC's 29.97).
        frame_count: frames the header announces; None when it does not say (WebM, MKV,
            cameras).
        duration_s: the stream's length in seconds, when known.
    """

    name: str
    height: int
    width: int
    frame_rate: Fraction
    frame_count: int | None = None
    duration_s: float | None = None


class FrameSource(Protocol):
    """What `maskspine.inference` reads: a video file, a camera, or any iterable of `Frame`s with an
    `info` (tests inject fake cameras this way). `damage` is read after iterating."""

    info: VideoInfo
    damage: str | None

    def __iter__(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...

    def __enter__(self) -> FrameSource: ...

    def __exit__(self, *exc_info: object) -> None: ...


# --------------------------------------------------------------------------- reading


def _strerror(error: BaseException) -> str:
    """FFmpeg's message without the path PyAV appends."""
    text = getattr(error, "strerror", None) or str(error)
    return str(text).strip().rstrip(".")


def _frame_rate(stream: Any) -> Fraction:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return Fraction(rate)
    return Fraction(25)


class _ClosedOnExit:
    """`with obj:` closes `obj` at the end, error or not."""

    def __enter__(self):
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class _AvSource(_ClosedOnExit):
    """Frames of an open PyAV container's first video stream (see `VideoFile`, `Camera`)."""

    info: VideoInfo
    damage: str | None

    def __init__(self, container: Any, name: str):
        self._av = import_av()
        self._container = container
        self._stream = container.streams.video[0]
        self.damage = None
        self.frames_decoded = 0
        stream = self._stream
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None and len(container.streams) == 1:
            duration = container.duration / 1_000_000  # AV_TIME_BASE: microseconds
        self.info = VideoInfo(
            name=name,
            height=int(stream.height),
            width=int(stream.width),
            frame_rate=_frame_rate(stream),
            frame_count=int(stream.frames) or None,
            duration_s=duration,
        )
        self._start_pts: int | None = stream.start_time
        self._last_time: float | None = None

    def _time(self, frame: Any, index: int) -> float:
        if frame.pts is None or self._stream.time_base is None:
            return index / float(self.info.frame_rate)
        if self._start_pts is None:
            self._start_pts = frame.pts
        return float((frame.pts - self._start_pts) * self._stream.time_base)

    def _pixels(self, frame: Any) -> np.ndarray:
        height, width = self.info.height, self.info.width
        if (frame.height, frame.width) == (height, width):
            return frame.to_ndarray(format="rgb24")
        return frame.to_ndarray(format="rgb24", width=width, height=height)

    def __iter__(self) -> Iterator[Frame]:
        try:
            for frame in self._container.decode(self._stream):
                index = self.frames_decoded
                self.frames_decoded += 1
                time_s = self._time(frame, index)
                self._last_time = time_s
                yield Frame(index, time_s, self._pixels(frame))
        except (self._av.error.FFmpegError, EOFError) as error:
            self.damage = self._describe_error(error)
            return
        self.damage = self._check_end()

    def _describe_error(self, error: BaseException) -> str:
        where = (
            f"after frame {self.frames_decoded - 1} ({self._last_time:.2f} s)"
            if self.frames_decoded
            else "before its first frame"
        )
        return f"damaged {where}: FFmpeg: {_strerror(error)}"

    def _check_end(self) -> str | None:
        return None

    def close(self) -> None:
        self._container.close()


def _mp4_without_index(path: Path) -> bool:
    """True for an MP4 / MOV file (an `ftyp` box first) whose top-level boxes, read to the end
    of the file, hold no `moov` box: a recording cut before its index was written."""
    try:
        with open(path, "rb") as file:
            head = file.read(8)
            if len(head) < 8 or head[4:8] != b"ftyp":
                return False
            size_total = path.stat().st_size
            offset = 0
            while offset + 8 <= size_total:
                file.seek(offset)
                header = file.read(16)
                size, kind = int.from_bytes(header[:4], "big"), header[4:8]
                if kind == b"moov":
                    return False
                if size == 1 and len(header) >= 16:
                    size = int.from_bytes(header[8:16], "big")
                if size < 8:
                    break
                offset += size
            return True
    except OSError:
        return False


class VideoFile(_AvSource):
    """The frames of a video file (any container and codec FFmpeg reads).

    Raises (on opening):
        FileNotFoundError: the file does not exist.
        DataError: not a video, an MP4 / MOV without its index, no video stream.
        InferenceError: PyAV is not installed (naming the `video` extra).
    """

    def __init__(self, path: str | os.PathLike):
        av = import_av()
        self.path = Path(path).expanduser()
        if not self.path.exists():
            raise FileNotFoundError(f"video not found: {path}")
        if self.path.is_dir():
            raise DataError("is a folder, not a video file", path=path)
        try:
            container = av.open(str(self.path))
        except av.error.FFmpegError as error:
            if _mp4_without_index(self.path):
                reason = (
                    "an MP4 / MOV file without its index (the moov box): it was cut short "
                    "while being recorded or copied, and no frame can be read from it"
                )
            else:
                reason = f"not a video or image FFmpeg can read ({_strerror(error)})"
            raise DataError(reason, path=path) from None
        if not container.streams.video:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
            container.close()
            raise DataError(f"has no video stream (streams: {kinds})", path=path)
        super().__init__(container, str(path))
        # A GIF cut short decodes its last, partial frame over the one before: it is held back.
        self._gif_cut = container.format.name == "gif" and not _ends_with(self.path, b";")

    def __iter__(self) -> Iterator[Frame]:
        if not self._gif_cut:
            yield from super().__iter__()
            return
        previous = None
        for frame in super().__iter__():
            if previous is not None:
                yield previous
            previous = frame

    def _check_end(self) -> str | None:
        info, count = self.info, self.frames_decoded
        if count == 0:
            return "damaged: no frame could be decoded"
        if info.frame_count is not None and count < info.frame_count:
            return (
                f"cut short or damaged: it ends after {count} of the {info.frame_count} frames "
                "its header announces"
            )
        frame_time = 1.0 / float(info.frame_rate)
        if info.duration_s is not None and self._last_time is not None:
            missing = info.duration_s - frame_time - self._last_time
            if missing > max(2 * frame_time, 0.1):
                return (
                    f"cut short or damaged: it ends at {self._last_time:.2f} s of the "
                    f"{info.duration_s:.2f} s its header announces"
                )
        if self._gif_cut:
            return "cut short: the GIF has no end marker (its last, partial frame is left out)"
        return None


def _ends_with(path: Path, marker: bytes) -> bool:
    with open(path, "rb") as file:
        file.seek(0, os.SEEK_END)
        if file.tell() < len(marker):
            return False
        file.seek(-len(marker), os.SEEK_END)
        return file.read() == marker


def _camera_devices() -> list[str]:
    return sorted(str(path) for path in Path("/dev").glob("video*"))


class Camera(_AvSource):
    """Live frames of camera `index`: `/dev/video<index>` through V4L2 on Linux, AVFoundation
    device `index` on macOS. Frame times count from the first frame.

    Raises (on opening):
        DataError: no such camera (naming the cameras there are), or it cannot be opened.
        InferenceError: another operating system, or PyAV is not installed.
    """

    def __init__(self, index: int):
        av = import_av()
        name = f"{CAMERA_PREFIX}{index}"
        if sys.platform.startswith("linux"):
            device, device_format, options = f"/dev/video{index}", "v4l2", {}
            if not Path(device).exists():
                found = ", ".join(_camera_devices()) or "none"
                raise DataError(
                    f"camera {index} not found: {device} does not exist (cameras here: {found})"
                )
        elif sys.platform == "darwin":
            device, device_format, options = str(index), "avfoundation", {"framerate": "30"}
        else:
            raise InferenceError(
                f"camera input works on Linux (V4L2) and macOS (AVFoundation), not {sys.platform}; "
                "record a video file and give that"
            )
        try:
            container = av.open(device, format=device_format, options=options)
        except (av.error.FFmpegError, ValueError) as error:
            raise DataError(
                f"camera {index} ({device}) cannot be opened: {_strerror(error)}"
            ) from None
        if not container.streams.video:
            container.close()
            raise DataError(f"camera {index} ({device}) gives no video stream")
        super().__init__(container, name)
        self._start_pts = None  # count from the first frame, not from the device's clock

    def _describe_error(self, error: BaseException) -> str:
        return f"the camera stopped after {self.frames_decoded} frames: {_strerror(error)}"


def open_camera(index: int) -> FrameSource:
    """`Camera(index)`; the command line opens cameras through this (tests replace it)."""
    return Camera(index)


def open_source(spec: str | os.PathLike) -> FrameSource:
    """A video file, or a camera for `camera:N`.

    Raises:
        DataError: a camera spec that is not `camera:<number>`, or see `VideoFile` and
            `Camera`.
    """
    text = str(spec)
    if is_camera(text):
        number = text[len(CAMERA_PREFIX) :]
        if not number.isdigit():
            raise DataError(
                f"a camera is given as camera:<device number>, e.g. camera:0; got {text}"
            )
        return open_camera(int(number))
    return VideoFile(spec)


# --------------------------------------------------------------------------- writing


class VideoWriter(_ClosedOnExit):
    """Writes RGB frames as a video file: H.264 in .mp4 / .m4v / .mov / .mkv (the index at
    the front of MP4s, for streaming), VP9 in .webm, MPEG-4 part 2 in .avi, or a GIF.

    Frames play at `frame_rate` (a GIF rounds each frame's delay to 1/100 s). H.264 and VP9
    are written as 4:2:0 (what every player takes) when both sides are even, 4:4:4 otherwise.

    Raises (on opening):
        DataError: an ending that names no known format, or a path that cannot be written.
    """

    def __init__(
        self, path: str | os.PathLike, frame_rate: Fraction | float, size: tuple[int, int]
    ):
        av = import_av()
        self.path = self.check_path(path)
        suffix = self.path.suffix.lower()
        height, width = (int(v) for v in size)
        codec = WRITER_CODECS[suffix]
        options = {"movflags": "+faststart"} if codec == "libx264" and suffix != ".mkv" else {}
        try:
            self._container = av.open(str(self.path), "w", options=options)
            rate = Fraction(frame_rate).limit_denominator(1_000_000)
            stream = self._container.add_stream(codec, rate=rate)
            stream.width, stream.height = width, height
            if codec == "gif":
                stream.pix_fmt = "rgb8"
            elif codec == "mpeg4" or (width % 2 == 0 and height % 2 == 0):
                stream.pix_fmt = "yuv420p"
            else:
                stream.pix_fmt = "yuv444p"
        except (av.error.FFmpegError, ValueError, OSError) as error:
            raise DataError(f"cannot write the video ({_strerror(error)})", path=path) from None
        self._av = av
        self._stream = stream
        self.size = (height, width)
        self.count = 0

    @staticmethod
    def check_path(path: str | os.PathLike) -> Path:
        """The path, checked before any work: an ending of `WRITER_CODECS`, a folder that can
        be written.

        Raises:
            DataError: naming the path and the fix.
        """
        path = Path(path).expanduser()
        suffix = path.suffix.lower()
        if suffix not in WRITER_CODECS:
            raise DataError(
                f"cannot write a video with the ending {suffix or '(none)'!r}; use one of "
                f"{', '.join(WRITER_CODECS)}",
                path=path,
            )
        return check_writable(path, "video")

    def write(self, pixels: np.ndarray) -> None:
        """Appends one frame: uint8 [height, width, 3] RGB at the writer's size."""
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        if pixels.shape != (*self.size, 3):
            raise ValueError(f"frame of shape {pixels.shape}, the video is {self.size} (h, w)")
        frame = self._av.VideoFrame.from_ndarray(pixels, format="rgb24")
        try:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        except (self._av.error.FFmpegError, OSError) as error:
            raise DataError(
                f"cannot write the video ({_strerror(error)})", path=self.path
            ) from None
        self.count += 1

    def close(self) -> Path:
        """Flushes the encoder and finishes the file (a valid video of the frames written)."""
        if self._container is not None:
            try:
                for packet in self._stream.encode():
                    self._container.mux(packet)
            finally:
                self._container.close()
                self._container = None
        return self.path
