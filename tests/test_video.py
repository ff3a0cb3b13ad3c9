"""Videos and cameras: frames read from every container PyAV writes here, predictions that follow
a moving square (a fake model that boxes the brightest region, computed with tf ops from the
frame it is given), keys and frame times, frame stride, the drawn video's size, rate and frame
count read back, damaged and wrong inputs, and a fake camera stopped by --max-frames or Ctrl-C.

The videos are made here with PyAV: a white square on a dark, slightly noisy ground, moving
right by `STEP` pixels per frame."""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
from fractions import Fraction

import numpy as np
import pytest
import tensorflow as tf

av = pytest.importorskip("av")

from maskspine.errors import DataError, InferenceError  # noqa: E402
from maskspine.formats import (  # noqa: E402
    InferenceJsonWriter,
    frame_key,
    parse_frame_key,
    save_inference_json,
)
from maskspine.video import (  # noqa: E402
    Frame,
    VideoFile,
    VideoInfo,
    VideoWriter,
    infer_video,
    open_source,
    stop_on_interrupt,
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


class BrightModel:
    """A fixed fake model: one detection per image, the box of its bright pixels (normalised
    value above 0, i.e. brighter than about the mean colour), class 1, score 0.9, a full mask.
    Counts its traces and the batch sizes it saw."""

    def __init__(self):
        self.traces = 0
        self.batch_sizes = []

    def __call__(self, inputs, training=False):
        self.traces += 1
        images = inputs["images"]
        self.batch_sizes.append(images.shape[0])
        bright = tf.cast(tf.reduce_mean(images, -1) > 0.0, tf.int32)  # [B, H, W]

        def extent(occupied):  # [B, N] -> first index, last index + 1
            size = tf.shape(occupied)[1]
            first = tf.argmax(occupied, 1, output_type=tf.int32)
            last = size - tf.argmax(occupied[:, ::-1], 1, output_type=tf.int32)
            return first, last

        y1, y2 = extent(tf.reduce_max(bright, 2))
        x1, x2 = extent(tf.reduce_max(bright, 1))
        batch = tf.shape(images)[0]
        return {
            "detection_boxes": tf.cast(tf.stack([y1, x1, y2, x2], -1), tf.float32)[:, None],
            "detection_scores": tf.fill([batch, 1], 0.9),
            "detection_classes": tf.ones([batch, 1], tf.int32),
            "num_detections": tf.ones([batch], tf.int32),
            "detection_masks": tf.ones([batch, 1, 28, 28]),
        }


@pytest.fixture
def config(tiny_config):
    config = dataclasses.replace(tiny_config)
    config.test_batch_size = 4
    return config


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


def test_predictions_follow_the_square_with_keys_times_and_stride(clip, config, tmp_path):
    for stride in (1, 3):
        model = BrightModel()
        output = tmp_path / f"stride{stride}.json"
        with open_source(clip) as source:
            summary = infer_video(model, config, source, output, frame_stride=stride)
        entries = json.loads(output.read_text())
        run = list(range(0, 10, stride))
        assert list(entries) == [frame_key(str(clip), index) for index in run]
        assert list(entries)[1] == f"{clip}#{stride:06d}"
        assert (summary.frames_read, summary.frames_predicted) == (10, len(run))
        assert summary.damage is None and not summary.stopped
        for index, (key, entry) in zip(run, entries.items(), strict=True):
            assert parse_frame_key(key) == (str(clip), index)
            assert entry["frame"] == index
            assert entry["time_s"] == pytest.approx(index / 12, abs=1e-6)
            assert (entry["height"], entry["width"]) == (HEIGHT, WIDTH)
            (prediction,) = entry["predictions"]
            y1, x1, y2, x2 = square_box(index)
            box = prediction["bbox"]
            assert [box["x_min"], box["y_min"], box["width"], box["height"]] == pytest.approx(
                [x1, y1, x2 - x1, y2 - y1], abs=1.0
            )
        # one model, one trace, batches of test_batch_size (the last one padded)
        assert model.traces == 1 and set(model.batch_sizes) == {4}


def test_drawn_video_has_the_sources_size_rate_and_frame_count(clip, config, tmp_path):
    drawn = tmp_path / "drawn.mp4"
    with open_source(clip) as source:
        summary = infer_video(
            BrightModel(), config, source, tmp_path / "p.json", video_output=drawn, frame_stride=2
        )
    assert summary.frames_written == 10
    with VideoFile(drawn) as video:
        frames = list(video)
        info = video.info
        assert video.damage is None
    assert (info.height, info.width, info.frame_rate) == (HEIGHT, WIDTH, RATE)
    assert len(frames) == info.frame_count == 10
    # Frames run through the model (even ones) have the square tinted by the class colour
    # (the translucent mask of `maskspine draw`); the ground around it stays dark.
    for frame in frames[::2]:
        y1, x1, y2, x2 = (int(v) for v in square_box(frame.index))
        inside = frame.pixels[y1 + 5 : y2 - 5, x1 + 5 : x2 - 5].reshape(-1, 3).mean(0)
        assert inside.max() - inside.min() > 40  # no longer white: coloured
        assert frame.pixels[:20, :].mean() < 30 and frame.pixels[-20:, :].mean() < 30


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
    with open_source(clip) as source, pytest.raises(DataError, match="predictions here"):
        infer_video(BrightModel(), None, source, blocker / "p.json")


def test_showing_frames_without_a_display_is_a_clear_error(monkeypatch):
    from maskspine.video import FrameWindow

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


def test_camera_stops_at_max_frames(config, tmp_path):
    camera = FakeCamera()
    summary = infer_video(
        BrightModel(), config, camera, tmp_path / "live.json", max_frames=5,
        video_output=tmp_path / "live.mp4",
    )  # fmt: skip
    entries = json.loads((tmp_path / "live.json").read_text())
    assert list(entries) == [f"camera:0#{index:06d}" for index in range(5)]
    assert summary.frames_predicted == 5 and not summary.stopped
    with VideoFile(tmp_path / "live.mp4") as video:
        assert len(list(video)) == 5 and video.info.frame_rate == 30


def test_ctrl_c_stops_the_camera_and_writes_everything_so_far(config, tmp_path):
    camera = FakeCamera(interrupt_at=6)
    messages = []
    handler_before = signal.getsignal(signal.SIGINT)  # a test worker may ignore SIGINT
    with stop_on_interrupt(messages.append) as stop:
        summary = infer_video(
            BrightModel(), config, camera, tmp_path / "live.json",
            video_output=tmp_path / "live.mp4", stop=stop,
        )  # fmt: skip
    assert summary.stopped and messages and "Ctrl-C again" in messages[0]
    # Stopped within the frames in flight (a batch or two of 4 pulled ahead), far before 200.
    assert 6 <= summary.frames_read <= 6 + 3 * config.test_batch_size
    assert summary.frames_read == camera.given  # every frame taken was used
    entries = json.loads((tmp_path / "live.json").read_text())  # a whole, valid file
    assert len(entries) == summary.frames_predicted == summary.frames_read
    with VideoFile(tmp_path / "live.mp4") as video:  # a whole, valid video
        assert len(list(video)) == summary.frames_read and video.damage is None
    assert signal.getsignal(signal.SIGINT) is handler_before  # handler restored
