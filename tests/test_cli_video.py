"""`maskspine infer` on videos and cameras through the real Typer app, with a tiny checkpoint in
the run-directory layout training writes: the JSON keyed by frame, the drawn video, and one
clear line for each bad input."""

from __future__ import annotations

import json
import os

import pytest
from model_fixtures import REPO, TINY_OVERRIDES, write_run
from PIL import Image
from test_video import HEIGHT, RATE, WIDTH, FakeCamera, write_video
from typer.testing import CliRunner

from maskspine.cli.main import app

av = pytest.importorskip("av")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """`run/` (config.yaml + one checkpoint of a tiny fresh model) and `clip.mp4` (10 frames)."""
    from maskspine.config import load_config

    root = tmp_path_factory.mktemp("cli_video")
    config = load_config(
        os.path.join(REPO, "configs", "shapes_demo.yaml"),
        [*TINY_OVERRIDES, "test_batch_size=4", "test_cfg.rcnn.max_per_img=5"],
    )
    write_run(root / "run", config)
    write_video(root / "clip.mp4", 10)
    return root


_MODELS: dict = {}


@pytest.fixture(autouse=True)
def load_each_checkpoint_once(monkeypatch):
    """The CLI's `load_model`, remembered per arguments: every command after the first gets the
    same model object, so the runner's `tf.function` is traced once for the module (tracing
    takes most of a command's time here)."""
    import maskspine.checkpoints

    load_model = maskspine.checkpoints.load_model

    def remembered(checkpoint, config=None, overrides=()):
        key = (str(checkpoint), str(config), tuple(overrides))
        if key not in _MODELS:
            _MODELS[key] = load_model(checkpoint, config, overrides)
        return _MODELS[key]

    monkeypatch.setattr(maskspine.checkpoints, "load_model", remembered)


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def test_infer_a_video_writes_frames_json_and_the_drawn_video(workspace, tmp_path):
    clip = workspace / "clip.mp4"
    output, drawn = tmp_path / "clip.json", tmp_path / "drawn.mp4"
    code, out, err = invoke(
        "infer", "--checkpoint", workspace / "run", "--input", clip, "--output", output,
        "--video-output", drawn, "--frame-stride", "3", "--draw-threshold", "0",
    )  # fmt: skip
    assert code == 0, out + err
    assert f"video {clip}: 128x96, 12 frames/s, 10 frames" in out
    assert "frames/s" in out  # the progress line's rate
    assert "\r" not in out and "\b" not in out and "\x1b" not in out  # plain: not a terminal
    entries = json.loads(output.read_text())
    assert list(entries) == [f"{clip}#{index:06d}" for index in (0, 3, 6, 9)]
    for entry in entries.values():
        assert {"height", "width", "predictions", "frame", "time_s"} == set(entry)
        assert (entry["height"], entry["width"]) == (HEIGHT, WIDTH)
        assert entry["time_s"] == pytest.approx(entry["frame"] / 12, abs=1e-6)
        for prediction in entry["predictions"]:
            assert prediction["mask"]["size"] == [HEIGHT, WIDTH]
    assert f"for 4 frame(s) to {output}" in out
    assert f"Wrote 10 drawn frame(s) to {drawn}" in out
    with av.open(str(drawn)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height, stream.average_rate) == (WIDTH, HEIGHT, RATE)
        assert sum(1 for _ in container.decode(stream)) == 10

    # `maskspine draw` on the video's JSON: one PNG per frame run, read from the video.
    code, out, err = invoke(
        "draw", "--predictions", output, "--output", tmp_path / "frames", "--score-threshold", "0"
    )
    assert code == 0, out + err
    names = sorted(p.name for p in (tmp_path / "frames").iterdir())
    assert names == [f"clip_{index:06d}.png" for index in (0, 3, 6, 9)]
    with Image.open(tmp_path / "frames" / names[0]) as picture:
        assert picture.size == (WIDTH * 4, HEIGHT * 4)  # scaled up by 4 to >= 480 pixels
    moved = tmp_path / "moved.json"
    moved.write_text(output.read_text().replace(str(clip), str(tmp_path / "gone.mp4")))
    code, out, err = invoke("draw", "--predictions", moved, "--output", tmp_path / "none")
    assert code == 1 and err.startswith(f"skipped {tmp_path / 'gone.mp4'}: video not found")


def test_a_cut_video_keeps_the_frames_before_and_exits_1(workspace, tmp_path):
    full = write_video(tmp_path / "long.mkv", 24, noise=True)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    output = tmp_path / "cut.json"
    code, out, err = invoke(
        "infer", "--checkpoint", workspace / "run", "--input", cut, "--output", output
    )
    assert code == 1, out + err
    entries = json.loads(output.read_text())
    assert 0 < len(entries) < 24
    (line,) = err.strip().splitlines()
    assert line.startswith(f"error: {cut}: cut short or damaged") and "were used" in line


def test_bad_inputs_are_one_line_and_exit_2(workspace, tmp_path):
    run = workspace / "run"
    not_video = tmp_path / "notes.mov"
    not_video.write_text("just text\n" * 10)
    blocker = tmp_path / "file"
    blocker.write_text("")
    cases = {
        "not a video": (
            ["--input", not_video, "--output", tmp_path / "a.json"],
            "notes.mov: not an image or a video",
        ),
        "no camera": (["--input", "camera:9", "--output", tmp_path / "b.json"], "camera 9"),
        "json": (["--input", workspace / "clip.mp4", "--output", blocker / "c.json"], "cannot"),
        "video": (
            [
                "--input",
                workspace / "clip.mp4",
                "--output",
                tmp_path / "d.json",
                "--video-output",
                blocker / "d.mp4",
            ],
            "cannot write the video here",
        ),  # fmt: skip
    }
    for name, (args, expected) in cases.items():
        code, out, err = invoke("infer", "--checkpoint", run, *args)
        assert code == 2, (name, out, err)
        (line,) = err.strip().splitlines()
        assert line.startswith("error: ") and expected in line, (name, line)
        assert "Loaded" not in out  # found before the model is loaded
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (20, 20)).save(photos / "a.png")
    code, out, err = invoke(
        "infer", "--checkpoint", run, "--input", photos, "--output", tmp_path / "e.json",
        "--frame-stride", "2",
    )  # fmt: skip
    assert code == 2 and "--frame-stride" in err and "are images" in err


def test_camera_with_max_frames_and_ctrl_c(workspace, tmp_path, monkeypatch):
    import maskspine.video

    cameras = []

    def fake_camera(index, interrupt_at=None):
        cameras.append(FakeCamera(interrupt_at=interrupt_at))
        return cameras[-1]

    monkeypatch.setattr(maskspine.video, "open_camera", fake_camera)
    run = workspace / "run"
    code, out, err = invoke(
        "infer", "--checkpoint", run, "--input", "camera:0", "--output", tmp_path / "a.json",
        "--max-frames", "3", "--no-show",
    )  # fmt: skip
    assert code == 0, out + err
    assert list(json.loads((tmp_path / "a.json").read_text())) == [
        f"camera:0#{index:06d}" for index in range(3)
    ]
    assert cameras[-1].closed

    monkeypatch.setattr(
        maskspine.video, "open_camera", lambda index: fake_camera(index, interrupt_at=5)
    )
    code, out, err = invoke(
        "infer", "--checkpoint", run, "--input", "camera:0", "--output", tmp_path / "b.json",
        "--video-output", tmp_path / "b.mp4",
    )  # fmt: skip
    assert code == 0, out + err
    assert "Ctrl-C again" in err and "everything so far is written" in out
    entries = json.loads((tmp_path / "b.json").read_text())
    assert 5 <= len(entries) == cameras[-1].given < 200
    with av.open(str(tmp_path / "b.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == len(entries)


def test_precision_applies_to_videos(workspace, tmp_path):
    # Before: --precision was ignored for video and camera input.
    code, out, err = invoke(
        "infer", "--checkpoint", workspace / "run", "--input", workspace / "clip.mp4",
        "--output", tmp_path / "p.json", "--precision", "bfloat16", "--max-frames", "2",
    )  # fmt: skip
    assert code == 0, out + err
    assert "(bfloat16)" in out.splitlines()[0]
    assert len(json.loads((tmp_path / "p.json").read_text())) == 2
