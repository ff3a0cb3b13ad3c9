"""Video files and cameras, input and output only (`maskspine.video`): frames read from every
container PyAV writes here, damaged and wrong inputs, writers' errors. Running the model over
videos is `tests/test_inference.py`, which uses the videos, the fake camera and the helpers
made here.

The videos are made here with PyAV: a white square on a dark, slightly noisy ground, moving
right by `STEP` pixels per frame."""

from __future__ import annotations

import json
import signal
import sys
from fractions import Fraction

import numpy as np
import pytest

av = pytest.importorskip("av")

from maskspine.errors import DataError, InferenceError  # noqa: E402
from maskspine.formats import (  # noqa: E402
    InferenceJsonWriter,
    frame_key,
    save_inference_json,
)
from maskspine.video import (  # noqa: E402
    Frame,
    VideoFile,
    VideoInfo,
    VideoWriter,
    open_source,
)

HEIGHT, WIDTH, RATE = 96, 128, Fraction(12)
STEP = 6  # pixels the square moves per frame
SQUARE = 30  # its side


def square_box(index: int) -> list[float]:
    """The square's box in frame `index`: yxyx, original pixels (exclusive ends)."""
    return [30.0, 8.0 + STEP * index, 30.0 + SQUARE, 8.0 + STEP * index + SQUARE]


def square_frame(index: int, noise: bool = False) -> np.ndarray:
    """uint8 [HEIGHT, WIDTH, 3]: the white square of frame `index` on a dark ground."""
    rng = np.random.default_rng(index)
    pixels = (
        rng.integers(0, 40, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        if noise
        else np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    )
    y1, x1, y2, x2 = (int(v) for v in square_box(index))
    pixels[y1:y2, x1:x2] = 255
    return pixels


#: Codec and pixel format PyAV writes each container with (all inside its wheel).
CODECS = {
    ".mp4": ("libx264", "yuv420p"),
    ".mov": ("libx264", "yuv420p"),
    ".mkv": ("libx264", "yuv420p"),
    ".webm": ("libvpx-vp9", "yuv420p"),
    ".avi": ("mpeg4", "yuv420p"),
    ".gif": ("gif", "rgb8"),
}


def write_video(path, count: int = 10, *, noise: bool = False, options=None):
    """A video of `count` frames of the moving square at RATE frames/s, written with PyAV."""
    codec, pixel_format = CODECS[path.suffix]
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=RATE)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, pixel_format
        if codec == "libx264":
            stream.options = {"g": "4"}  # a keyframe every 4 frames: damage stays local
        for index in range(count):
            frame = av.VideoFrame.from_ndarray(square_frame(index, noise), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def bright_box(pixels: np.ndarray) -> list[float]:
    """The box (yxyx, exclusive ends) of the pixels brighter than mid-grey: the square."""
    bright = pixels.mean(axis=-1) > 128
    rows, columns = np.flatnonzero(bright.any(1)), np.flatnonzero(bright.any(0))
    return [rows[0], columns[0], rows[-1] + 1, columns[-1] + 1]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """clip.mp4: 10 frames of the moving square at 12 frames/s."""
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4")


# --------------------------------------------------------------------------- reading


@pytest.mark.parametrize("suffix", sorted(CODECS))
def test_every_container_gives_its_frames_times_and_size(tmp_path, suffix):
    path = write_video(tmp_path / f"clip{suffix}", 8)
    with open_source(path) as source:
        info = source.info
        frames = list(source)
        assert source.damage is None
    assert (info.height, info.width) == (HEIGHT, WIDTH)
    assert [frame.index for frame in frames] == list(range(8))
    # GIF stores each frame's delay in 1/100 s (1/12 s becomes 0.08 or 0.09 s)
    tolerance = 0.011 if suffix == ".gif" else 1e-3
    times = [frame.time_s for frame in frames]
    np.testing.assert_allclose(times, np.arange(8) / 12, atol=tolerance)
    assert float(info.frame_rate) == pytest.approx(12, rel=0.1 if suffix == ".gif" else 1e-6)
    for frame in frames:
        assert frame.pixels.dtype == np.uint8 and frame.pixels.shape == (HEIGHT, WIDTH, 3)
        # lossy codecs blur the edges by a pixel at most
        np.testing.assert_allclose(bright_box(frame.pixels), square_box(frame.index), atol=1)


def test_streamed_json_is_the_file_save_inference_json_writes(tmp_path):
    entries = {
        frame_key("a b.mp4", index): {
            "height": 2,
            "width": 3,
            "predictions": [{"bbox": {"x_min": 1.5}, "score": 0.25}] * index,
            "frame": index,
            "time_s": index / 30,
        }
        for index in range(3)
    }
    for case in (entries, {}):
        with InferenceJsonWriter(tmp_path / "streamed.json") as writer:
            for key, entry in case.items():
                writer.add(key, entry)
        save_inference_json(tmp_path / "whole.json", case)
        streamed = (tmp_path / "streamed.json").read_text()
        assert streamed == (tmp_path / "whole.json").read_text()
        assert json.loads(streamed) == case
    with pytest.raises(KeyError), InferenceJsonWriter(tmp_path / "streamed.json") as writer:
        writer.add("x", {})
        raise KeyError("stop")
    assert json.loads((tmp_path / "streamed.json").read_text()) == {}  # the old file is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["streamed.json", "whole.json"]


# --------------------------------------------------------------------------- bad input


def _cut(path, fraction=0.5):
    data = path.read_bytes()
    cut = path.with_name(f"cut_{path.name}")
    cut.write_bytes(data[: int(len(data) * fraction)])
    return cut


@pytest.mark.parametrize(
    ("suffix", "options", "named"),
    [
        (".mp4", {"movflags": "+faststart"}, "FFmpeg: "),  # index first: readable to the cut
        (".mkv", None, "s of the"),  # no frame count: the header's duration tells
        (".gif", None, "end marker"),
    ],
)
def test_a_truncated_video_keeps_the_frames_before_the_damage(tmp_path, suffix, options, named):
    path = write_video(tmp_path / f"clip{suffix}", 24, noise=True, options=options)
    with VideoFile(_cut(path)) as video:
        frames = list(video)
        damage = video.damage
    assert 0 < len(frames) < 24
    assert damage is not None and named in damage
    for frame in frames:  # the frames before the damage are whole
        np.testing.assert_allclose(bright_box(frame.pixels), square_box(frame.index), atol=1)


def test_an_mp4_cut_before_its_index_and_a_file_that_is_no_video_are_named(tmp_path):
    path = write_video(tmp_path / "clip.mp4", 24, noise=True)  # the moov box at the end
    with pytest.raises(DataError, match="without its index.*moov") as caught:
        VideoFile(_cut(path))
    assert caught.value.path == str(tmp_path / "cut_clip.mp4")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 20)
    with pytest.raises(DataError, match="not a video or image FFmpeg can read"):
        VideoFile(text)
    with pytest.raises(FileNotFoundError, match="video not found"):
        VideoFile(tmp_path / "missing.mp4")


def test_missing_camera_and_unwritable_outputs_are_clear_errors(tmp_path, clip):
    with pytest.raises(DataError, match=r"camera 7 not found: /dev/video7 does not exist"):
        open_source("camera:7")
    with pytest.raises(DataError, match="camera:<device number>"):
        open_source("camera:front")
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    with pytest.raises(DataError, match="cannot write the video here") as caught:
        VideoWriter(blocker / "drawn.mp4", 12, (HEIGHT, WIDTH))
    assert caught.value.path == str(blocker / "drawn.mp4")
    with pytest.raises(DataError, match=r"ending '.xyz'.*\.mp4"):
        VideoWriter(tmp_path / "drawn.xyz", 12, (HEIGHT, WIDTH))


def test_showing_frames_without_a_display_is_a_clear_error(monkeypatch):
    from maskspine.visualize import FrameWindow

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    with pytest.raises(InferenceError, match="cannot show frames.*--no-show"):
        FrameWindow().show(np.zeros((4, 4, 3), np.uint8))


def test_without_pyav_the_error_names_the_extra(monkeypatch, clip):
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(InferenceError, match=r"maskspine\[video\]"):
        open_source(clip)


# --------------------------------------------------------------------------- cameras


class FakeCamera:
    """A camera without hardware: the moving square at 30 frames/s, wrapping around, at most
    `limit` frames; raises SIGINT (as Ctrl-C does) before frame `interrupt_at`."""

    def __init__(self, limit: int = 200, interrupt_at: int | None = None):
        self.info = VideoInfo("camera:0", HEIGHT, WIDTH, Fraction(30))
        self.damage = None
        self.limit = limit
        self.interrupt_at = interrupt_at
        self.given = 0
        self.closed = False

    def __iter__(self):
        for index in range(self.limit):
            if index == self.interrupt_at:
                signal.raise_signal(signal.SIGINT)
            self.given += 1
            yield Frame(index, index / 30, square_frame(index % 12))

    def close(self):
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
