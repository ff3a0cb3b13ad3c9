"""`maskspine.inference.run_inference`: images and videos through a model (a fake one that boxes
the bright region of what it is given, so the answer is known), the JSON, drawings and drawn
videos written in the same pass, keys, frame times and stride, and what happens to existing
outputs when a run ends well, is stopped by one Ctrl-C, or is aborted (a second Ctrl-C, a
crash): never a torn or half-replaced output, never a lost one."""

from __future__ import annotations

import dataclasses
import json
import signal
import threading

import numpy as np
import pytest
from fake_models import BrightBox
from PIL import Image

av = pytest.importorskip("av")

from test_video import (  # noqa: E402
    HEIGHT,
    RATE,
    WIDTH,
    FakeCamera,
    square_box,
    square_frame,
    write_video,
)

from maskspine.errors import DataError, InferenceError  # noqa: E402
from maskspine.formats import frame_key, parse_frame_key  # noqa: E402
from maskspine.inference import OutputPlan, run_inference  # noqa: E402
from maskspine.inputs import collect_inputs  # noqa: E402
from maskspine.interrupt import stop_on_interrupt  # noqa: E402
from maskspine.segmenter import Segmenter  # noqa: E402
from maskspine.video import VideoFile, open_source  # noqa: E402


@pytest.fixture
def config(tiny_config):
    config = dataclasses.replace(tiny_config)
    config.test_batch_size = 4
    return config


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """clip.mp4: 10 frames of the moving square at 12 frames/s."""
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4")


def run(config, inputs, plan, model=None, **options):
    """`run_inference` with a fake model; `inputs` a list of --input specs or an `Inputs`."""
    found = collect_inputs(inputs) if isinstance(inputs, list) else inputs
    plan.check(found)
    segmenter = Segmenter(model or BrightBox(), config)
    return run_inference(segmenter, found, plan, **options)


def _square_png(path, index):
    Image.fromarray(square_frame(index)).save(path)
    return path


# --------------------------------------------------------------------------- videos


def test_predictions_follow_the_square_with_keys_times_and_stride(clip, config, tmp_path):
    for stride in (1, 3):
        model = BrightBox()
        output = tmp_path / f"stride{stride}.json"
        plan = OutputPlan(json=output, frame_stride=stride)
        summary = run(config, [clip], plan, model)
        entries = json.loads(output.read_text())
        indices = list(range(0, 10, stride))
        assert list(entries) == [frame_key(str(clip), index) for index in indices]
        assert list(entries)[1] == f"{clip}#{stride:06d}"
        assert (summary.frames_read, summary.frames) == (10, len(indices))
        assert summary.damage == [] and not summary.stopped
        for index, (key, entry) in zip(indices, entries.items(), strict=True):
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
    plan = OutputPlan(json=tmp_path / "p.json", video_output=drawn, frame_stride=2)
    summary = run(config, [clip], plan)
    assert drawn in summary.written
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


def test_camera_stops_at_max_frames(config, tmp_path):
    camera = FakeCamera()
    plan = OutputPlan(json=tmp_path / "live.json", video_output=tmp_path / "live.mp4", max_frames=5)
    summary = run(config, ["camera:0"], plan, open_video=lambda spec: camera)
    entries = json.loads((tmp_path / "live.json").read_text())
    assert list(entries) == [f"camera:0#{index:06d}" for index in range(5)]
    assert summary.frames == 5 and not summary.stopped and camera.closed
    with VideoFile(tmp_path / "live.mp4") as video:
        assert len(list(video)) == 5 and video.info.frame_rate == 30


def test_one_ctrl_c_writes_the_json_and_the_drawn_video_of_the_same_frames(config, tmp_path):
    camera = FakeCamera(interrupt_at=6)
    messages = []
    handler_before = signal.getsignal(signal.SIGINT)  # a test worker may ignore SIGINT
    plan = OutputPlan(json=tmp_path / "live.json", video_output=tmp_path / "live.mp4")
    with stop_on_interrupt(messages.append) as stop:
        summary = run(config, ["camera:0"], plan, stop=stop, open_video=lambda spec: camera)
    assert summary.stopped and messages and "Ctrl-C again" in messages[0]
    # Stopped within the frames in flight (a batch or two of 4 pulled ahead), far before 200.
    assert 6 <= summary.frames_read <= 6 + 3 * config.test_batch_size
    assert summary.frames_read == camera.given  # every frame taken was used
    entries = json.loads((tmp_path / "live.json").read_text())  # a whole, valid file
    assert len(entries) == summary.frames == summary.frames_read
    with VideoFile(tmp_path / "live.mp4") as video:  # a whole, valid video
        assert len(list(video)) == summary.frames_read and video.damage is None
    assert signal.getsignal(signal.SIGINT) is handler_before  # handler restored


class _AbortingCamera(FakeCamera):
    """A camera whose frame `abort_at` comes with a KeyboardInterrupt: the second Ctrl-C."""

    def __init__(self, abort_at: int):
        super().__init__()
        self.abort_at = abort_at

    def __iter__(self):
        for frame in super().__iter__():
            if frame.index == self.abort_at:
                raise KeyboardInterrupt
            yield frame


def test_an_aborted_rerun_leaves_the_previous_json_and_video_as_they_were(config, tmp_path):
    # Before: a rerun stopped by a second Ctrl-C kept the old JSON but had already replaced
    # the old drawn video with a shorter one, so the two disagreed and the first was lost.
    output, video = tmp_path / "live.json", tmp_path / "live.mp4"
    plan = OutputPlan(json=output, video_output=video, max_frames=12)
    run(config, ["camera:0"], plan, open_video=lambda spec: FakeCamera())
    before = {path: path.read_bytes() for path in (output, video)}
    with pytest.raises(KeyboardInterrupt):
        run(config, ["camera:0"], plan, open_video=lambda spec: _AbortingCamera(5))
    assert {path: path.read_bytes() for path in (output, video)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live.json", "live.mp4"]  # no debris


def test_a_crash_leaves_a_previous_drawing_folder_as_it_was(config, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    paths = [_square_png(photos / f"{index}.png", index) for index in range(6)]
    drawn = tmp_path / "drawn"
    plan = OutputPlan(json=tmp_path / "p.json", draw_dir=drawn)
    run(config, [photos], plan)
    before = {path.name: path.read_bytes() for path in drawn.iterdir()}
    assert sorted(before) == [f"{index}.png" for index in range(6)]

    class Crashing(BrightBox):
        def __call__(self, inputs, training=False):
            raise RuntimeError("out of memory")

    for path in paths:  # the new run would draw other pictures
        _square_png(path, 11)
    with pytest.raises(RuntimeError, match="out of memory"):
        run(config, [photos], plan, Crashing())
    assert {path.name: path.read_bytes() for path in drawn.iterdir()} == before


# --------------------------------------------------------------------------- images


def test_images_are_drawn_in_the_same_pass_with_names_below_their_folder(config, tmp_path):
    photos = tmp_path / "photos"
    (photos / "trip").mkdir(parents=True)
    top = _square_png(photos / "a.png", 2)
    deep = _square_png(photos / "trip" / "a.png", 7)
    Image.fromarray(square_frame(4)).save(photos / "trip" / "b.webp", lossless=True)
    drawn = tmp_path / "drawn"
    plan = OutputPlan(json=tmp_path / "p.json", draw_dir=drawn, draw_threshold=0.5)
    found = collect_inputs([photos], recursive=True)
    summary = run(config, found, plan)
    entries = json.loads((tmp_path / "p.json").read_text())
    assert list(entries) == [str(top), str(deep), str(photos / "trip" / "b.webp")]
    pictures = sorted(str(path.relative_to(drawn)) for path in drawn.rglob("*.png"))
    assert pictures == ["a.png", "trip/a.png", "trip/b.png"]
    assert summary.images == 3 and summary.skipped == []
    # The drawing is the picture `maskspine draw` makes of the same entry.
    from maskspine.visualize import draw_predictions

    redrawn, failures = draw_predictions(entries, tmp_path / "redrawn", score_threshold=0.5)
    assert failures == []
    assert np.array_equal(
        np.asarray(Image.open(drawn / "trip" / "a.png")),
        np.asarray(Image.open(tmp_path / "redrawn" / "a_2.png")),
    )
    # The square is tinted (its prediction scores 0.9, above the threshold) in the drawing.
    picture = np.asarray(Image.open(drawn / "a.png").convert("RGB"))
    scale = picture.shape[0] // HEIGHT
    y1, x1, y2, x2 = (int(v) * scale for v in square_box(2))
    inside = picture[y1 + 10 : y2 - 10, x1 + 10 : x2 - 10].reshape(-1, 3).mean(0)
    assert inside.max() - inside.min() > 40


def test_images_and_a_video_in_one_run_share_one_json(config, clip, tmp_path):
    image = _square_png(tmp_path / "still.png", 3)
    plan = OutputPlan(json=tmp_path / "p.json", draw_dir=tmp_path / "drawn")
    summary = run(config, [image, clip], plan)
    entries = json.loads((tmp_path / "p.json").read_text())
    assert list(entries)[0] == str(image)
    assert list(entries)[1:] == [frame_key(str(clip), index) for index in range(10)]
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == ["clip.mp4", "still.png"]
    assert (summary.images, summary.frames) == (1, 10)


# --------------------------------------------------------------------------- the checks


def test_outputs_that_are_inputs_or_hold_them_are_refused_before_anything_runs(clip, tmp_path):
    # Before: `--input same.mp4 --video-output same.mp4` replaced the source video, and
    # `--input p1.png --output p1.png` replaced the image with JSON.
    photo = _square_png(tmp_path / "p1.png", 1)
    link = tmp_path / "link.png"
    link.symlink_to(photo)
    found_video, found_photo = collect_inputs([clip]), collect_inputs([photo])
    cases = [
        (found_video, OutputPlan(json=tmp_path / "a.json", video_output=clip), "--video-output"),
        (found_video, OutputPlan(json=clip), "--output"),
        (found_photo, OutputPlan(json=photo), "--output"),
        (found_photo, OutputPlan(json=link), "--output"),  # the same file by another name
        (found_photo, OutputPlan(json=tmp_path / "sub" / ".." / "p1.png"), "--output"),
        (found_photo, OutputPlan(draw_dir=tmp_path), "--draw"),  # the folder of the input
        (found_video, OutputPlan(json=tmp_path / "x.mp4", video_output=tmp_path / "x.mp4"), "same"),
    ]
    before = {path: path.read_bytes() for path in (clip, photo)}
    for found, plan, named in cases:
        with pytest.raises(DataError, match=named):
            plan.check(found)
    assert {path: path.read_bytes() for path in (clip, photo)} == before
    with pytest.raises(InferenceError, match="nothing would be written"):
        OutputPlan().check(found_photo)
    with pytest.raises(InferenceError, match="--frame-stride take a video"):
        OutputPlan(json=tmp_path / "a.json", frame_stride=2).check(found_photo)
    other = write_video(tmp_path / "other.mp4", 3)
    with pytest.raises(InferenceError, match="takes one video"):
        OutputPlan(video_output=tmp_path / "v.mp4").check(collect_inputs([clip, other]))


def test_unreadable_images_found_late_are_skipped_and_named(config, tmp_path):
    good = _square_png(tmp_path / "good.png", 1)
    late = _square_png(tmp_path / "late.png", 2)
    found = collect_inputs([good, late])
    late.write_bytes(late.read_bytes()[:60])  # cut after it was sorted as an image
    summary = run(config, found, OutputPlan(json=tmp_path / "p.json"))
    assert summary.images == 1 and [path for path, _ in summary.skipped] == [str(late)]
    assert list(json.loads((tmp_path / "p.json").read_text())) == [str(good)]


def test_stop_before_the_images_writes_a_valid_empty_json(config, tmp_path):
    stop = threading.Event()
    stop.set()
    good = _square_png(tmp_path / "good.png", 1)
    summary = run(config, [good], OutputPlan(json=tmp_path / "p.json"), stop=stop)
    assert summary.stopped and summary.images <= 1
    assert isinstance(json.loads((tmp_path / "p.json").read_text()), dict)


def test_open_source_of_a_missing_camera_is_named(tmp_path):
    with pytest.raises(DataError, match="camera 7 not found"):
        open_source("camera:7")
