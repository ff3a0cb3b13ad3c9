"""Drawing instances: masks where they belong, box formats, labels readable on any ground."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.patches import Rectangle
from PIL import Image
from pycocotools import mask as mask_utils

from maskspine.visualize import PALETTE, class_colour, draw_instances, draw_predictions


def rendered(ax) -> np.ndarray:
    """The figure's pixels, uint8 [H, W, 3]."""
    canvas = FigureCanvasAgg(ax.figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _square_mask(size=100, top=20, left=30, bottom=60, right=70) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[top:bottom, left:right] = True
    return mask


def test_translucent_mask_is_drawn_over_its_pixels_only():
    image = np.zeros((100, 100, 3), np.uint8)
    mask = _square_mask()
    ax = draw_instances(image, masks=mask[None], labels=[2], alpha=0.5)
    pixels = rendered(ax)
    scale = pixels.shape[0] / 100  # the figure is the image, scaled
    colour = np.array(class_colour(2)) * 255
    inside = pixels[int(40 * scale), int(50 * scale)].astype(float)
    # Reference: alpha compositing of the class colour over black at alpha 0.5.
    np.testing.assert_allclose(inside, 0.5 * colour, atol=3)
    np.testing.assert_array_equal(pixels[int(85 * scale), int(10 * scale)], [0, 0, 0])


def test_masks_relative_to_boxes_land_in_the_box():
    image = np.full((100, 100, 3), 255, np.uint8)
    box = np.array([[20.0, 30.0, 60.0, 70.0]])
    full = draw_instances(image, box, _square_mask()[None], labels=[1], show_boxes=False)
    crop = draw_instances(
        image, box, np.ones((1, 28, 28)), labels=[1], masks_in_boxes=True, show_boxes=False
    )
    a, b = rendered(full).astype(int), rendered(crop).astype(int)
    # Away from the outlines, both drawings agree.
    scale = a.shape[0] / 100
    for y, x in ((40, 50), (25, 35), (55, 65), (10, 10), (80, 80)):
        np.testing.assert_allclose(
            a[int(y * scale), int(x * scale)], b[int(y * scale), int(x * scale)], atol=3
        )


@pytest.mark.parametrize(
    ("boxes", "box_format"),
    [
        ([[20, 30, 60, 70]], "yxyx"),
        ([[30, 20, 70, 60]], "xyxy"),
        ([[30, 20, 40, 40]], "xywh"),
    ],
)
def test_box_formats_give_the_same_rectangle(boxes, box_format):
    ax = draw_instances(np.zeros((100, 100, 3), np.uint8), np.array(boxes), box_format=box_format)
    (patch,) = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert patch.get_xy() == (30, 20)
    assert (patch.get_width(), patch.get_height()) == (40, 40)


def test_names_and_scores_are_written_in_a_readable_colour():
    image = np.zeros((100, 100, 3), np.uint8)
    boxes = np.array([[20, 30, 60, 70], [50, 10, 90, 40]], float)
    ax = draw_instances(image, boxes, names=["cat", "dog"], scores=[0.91, 0.5], labels=[3, 1])
    texts = {t.get_text(): t for t in ax.texts}
    assert set(texts) == {"cat 0.91", "dog 0.50"}
    # Every class colour's label text is the one of black / white with the higher WCAG 2
    # contrast ratio against its patch (the formula written out here is the reference).

    def luminance(rgb):
        linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    def contrast(a, b):
        high, low = sorted((luminance(a), luminance(b)), reverse=True)
        return (high + 0.05) / (low + 0.05)

    for label in range(len(PALETTE)):
        text = draw_instances(image, boxes[:1], names=["x"], labels=[label]).texts[0]
        patch = text.get_bbox_patch().get_facecolor()[:3]
        chosen = (0.0, 0.0, 0.0) if text.get_color() == "black" else (1.0, 1.0, 1.0)
        other = (1.0, 1.0, 1.0) if text.get_color() == "black" else (0.0, 0.0, 0.0)
        assert contrast(patch, chosen) >= contrast(patch, other), (label, patch)


def test_draws_into_given_axes_and_colours_by_name_when_no_labels():
    from matplotlib.figure import Figure

    figure = Figure()
    axes = figure.subplots(1, 2)
    result = draw_instances(
        np.zeros((10, 10, 3), np.uint8), np.array([[1, 1, 5, 5]]), names=["a"], ax=axes[1]
    )
    assert result is axes[1]
    # drawn in the colour of its name, a colour that does not change from run to run (not
    # Python's salted hash): the same in another process with another hash seed
    (rectangle,) = axes[1].patches
    assert tuple(rectangle.get_edgecolor()[:3]) == pytest.approx(class_colour("a"))
    code = "from maskspine.visualize import class_colour; print(list(class_colour('a')))"
    elsewhere = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(elsewhere.stdout) == pytest.approx(list(class_colour("a")))
    colours = [class_colour(label) for label in range(1, len(PALETTE) + 1)]
    assert len(set(colours)) == len(colours)
    with pytest.raises(ValueError, match="box_format"):
        draw_instances(
            np.zeros((10, 10, 3), np.uint8), np.array([[1, 1, 5, 5]]), box_format="cxcywh"
        )


# --------------------------------------------------------------------------- predictions


def _pixels(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _entry(height: int, width: int) -> dict:
    mask = np.zeros((height, width), np.uint8)
    mask[5:15, 5:20] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {
        "height": height,
        "width": width,
        "predictions": [
            {
                "bbox": {"x_min": 5.0, "y_min": 5.0, "width": 15.0, "height": 10.0},
                "class": {"label": 1, "category_id": 2, "name": "square"},
                "mask": {"size": [height, width], "counts": rle["counts"].decode()},
                "score": 0.9,
            }
        ],
    }


def test_draw_predictions_writes_images_of_the_right_size(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    sizes = {"small.png": (60, 90), "large.jpg": (600, 500)}
    for name, (height, width) in sizes.items():
        Image.fromarray(_pixels(height, width)).save(images / name)
    entries = {str(images / name): _entry(*size) for name, size in sizes.items()}
    entries["elsewhere/missing.png"] = _entry(60, 90)
    entries[str(images / "small_again.png")] = _entry(70, 90)  # file absent
    written, failures = draw_predictions(entries, tmp_path / "out", score_threshold=0.5)
    assert sorted(p.name for p in written) == ["large.png", "small.png"]
    for name, (height, width) in sizes.items():
        # Small images are scaled by a whole factor to >= 480 px on the longer side.
        factor = max(1, math.ceil(480 / max(height, width)))
        with Image.open(tmp_path / "out" / (name.split(".")[0] + ".png")) as drawn:
            assert drawn.format == "PNG"
            assert drawn.size == (width * factor, height * factor)
    assert {key for key, _ in failures} == {
        "elsewhere/missing.png",
        str(images / "small_again.png"),
    }


def test_draw_finds_moved_images_by_name_and_checks_their_size(tmp_path):
    Image.fromarray(_pixels(60, 90)).save(tmp_path / "a.png")
    Image.fromarray(_pixels(61, 90)).save(tmp_path / "b.png")
    entries = {"/gone/a.png": _entry(60, 90), "/gone/b.png": _entry(60, 90)}
    written, failures = draw_predictions(entries, tmp_path / "out", images_dir=tmp_path)
    assert [p.name for p in written] == ["a.png"]
    assert failures[0][0] == "/gone/b.png" and "61x90" in failures[0][1]


def test_host_code_imports_no_tensorflow():
    # `maskspine draw` and every `--help` must not wait for TensorFlow to load.
    script = (
        "import sys\n"
        "import maskspine.postprocess, maskspine.visualize, maskspine.formats, maskspine.boxes\n"
        "import maskspine.data.images, maskspine.errors, maskspine.cli.main, maskspine.video\n"
        "import maskspine.inputs, maskspine.files, maskspine.progress, maskspine.interrupt\n"
        "import maskspine.segmenter, maskspine.inference, maskspine.evaluation.matching\n"
        "loaded = [m for m in ('tensorflow', 'keras') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
