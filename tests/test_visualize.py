"""Drawing instances: masks where they belong, box formats, labels readable on any ground."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.patches import Rectangle

from maskspine.visualize import PALETTE, class_colour, draw_instances


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
    # Light patch (yellow, label 2) -> black text; dark patch (blue) -> white text.
    light = draw_instances(image, boxes[:1], names=["x"], labels=[2]).texts[0]
    dark = draw_instances(image, boxes[:1], names=["x"], labels=[18]).texts[0]
    assert PALETTE[2] == (1.0, 225 / 255, 25 / 255)
    assert light.get_color() == "black" and dark.get_color() == "white"


def test_draws_into_given_axes_and_colours_by_name_when_no_labels():
    from matplotlib.figure import Figure

    figure = Figure()
    axes = figure.subplots(1, 2)
    result = draw_instances(
        np.zeros((10, 10, 3), np.uint8), np.array([[1, 1, 5, 5]]), names=["a"], ax=axes[1]
    )
    assert result is axes[1]
    assert class_colour("a") == class_colour("a") and class_colour("a") in PALETTE
    with pytest.raises(ValueError, match="box_format"):
        draw_instances(
            np.zeros((10, 10, 3), np.uint8), np.array([[1, 1, 5, 5]]), box_format="cxcywh"
        )
