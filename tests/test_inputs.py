"""`--input` as users give it (`maskspine.inputs`): files, repeated inputs, globs, folders and
their sub-folders, every still image format Pillow writes read as an image, videos by their
content, and every file left out named with the reason."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from maskspine.errors import DataError, InferenceError
from maskspine.inputs import collect_inputs, file_kind


def _image(path, size=(20, 30), **save):
    pixels = np.random.default_rng(len(str(path))).integers(0, 256, (*size, 3), np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **save)
    return path


@pytest.mark.parametrize(
    "name", ["a.png", "a.jpg", "a.webp", "a.bmp", "a.tiff", "a.gif", "a.ppm", "a.jpeg"]
)
def test_every_still_image_format_pillow_writes_is_an_image(tmp_path, name):
    # Before: .webp and .bmp files were opened as videos (keys "a.webp#000000").
    path = _image(tmp_path / name)
    assert file_kind(path) == ("image", "")
    (found,) = collect_inputs([path]).images
    assert found.path == path and found.kind == "image"


def test_content_not_the_ending_decides(tmp_path):
    png_named_jpg = _image(tmp_path / "photo.jpg", format="PNG")
    text_named_png = tmp_path / "notes.png"
    text_named_png.write_text("not an image")
    assert file_kind(png_named_jpg)[0] == "image"
    kind, reason = file_kind(text_named_png)
    assert kind is None and "not an image" in reason


def test_an_animated_gif_is_a_video_and_a_one_frame_gif_an_image(tmp_path):
    pytest.importorskip("av")
    frames = [Image.fromarray(np.full((16, 16, 3), v, np.uint8)) for v in (0, 128, 255)]
    frames[0].save(tmp_path / "moving.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "still.gif")
    assert file_kind(tmp_path / "moving.gif")[0] == "video"
    assert file_kind(tmp_path / "still.gif")[0] == "image"


def test_repeated_inputs_and_globs_are_all_taken(tmp_path):
    # Before: `--input a.png --input b.png` used only b.png, and a glob was "input not found".
    a, b = _image(tmp_path / "a.png"), _image(tmp_path / "b.png")
    c, d = _image(tmp_path / "shots" / "c.webp"), _image(tmp_path / "shots" / "d.webp")
    _image(tmp_path / "shots" / "e.png")
    found = collect_inputs([a, b, str(tmp_path / "shots" / "*.webp")])
    assert [i.path for i in found.images] == [a, b, c, d]
    assert [str(i.name) for i in found.images] == ["a.png", "b.png", "c.webp", "d.webp"]
    twice = collect_inputs([a, a, str(tmp_path / "*.png")])
    assert [i.path for i in twice.images] == [a, b]  # each file once
    with pytest.raises(FileNotFoundError, match=r"no file matches .*\*\.tif"):
        collect_inputs([str(tmp_path / "*.tif")])


def test_folders_top_level_or_recursive_with_names_below_the_folder(tmp_path):
    top = _image(tmp_path / "photos" / "top.png")
    deep = _image(tmp_path / "photos" / "trip" / "day1" / "deep.jpg")
    _image(tmp_path / "photos" / ".cache" / "hidden.png")  # hidden folders are passed over
    (tmp_path / "photos" / ".DS_Store").write_bytes(b"\0\0")
    assert [i.path for i in collect_inputs([tmp_path / "photos"]).images] == [top]
    found = collect_inputs([tmp_path / "photos"], recursive=True)
    assert [i.path for i in found.images] == [top, deep]
    assert [str(i.name) for i in found.images] == ["top.png", "trip/day1/deep.jpg"]
    assert found.skipped == []
    with pytest.raises(InferenceError, match="--recursive"):
        collect_inputs([tmp_path / "photos" / "trip"])  # only sub-folders: none at the top


def test_every_file_left_out_is_named_with_the_reason(tmp_path):
    _image(tmp_path / "good.png")
    (tmp_path / "labels.json").write_text('{"images": []}')
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    found = collect_inputs([tmp_path])
    assert [i.path.name for i in found.images] == ["good.png"]
    reasons = dict(found.skipped)
    assert set(reasons) == {str(tmp_path / "labels.json"), str(broken)}
    assert all(reason for reason in reasons.values())
    with pytest.raises(InferenceError, match="labels.json: not an image or a video"):
        collect_inputs([tmp_path / "labels.json"])
    with pytest.raises(InferenceError, match="no image or video to run on.*labels.json"):
        collect_inputs([tmp_path / "labels.json", broken])


def test_cameras_and_missing_inputs(tmp_path):
    assert collect_inputs(["camera:2"]).camera == "camera:2"
    with pytest.raises(DataError, match="only --input"):
        collect_inputs(["camera:0", _image(tmp_path / "a.png")])
    with pytest.raises(DataError, match="camera:<device number>"):
        collect_inputs(["camera:front"])
    with pytest.raises(FileNotFoundError, match="input not found"):
        collect_inputs([tmp_path / "absent.png"])
