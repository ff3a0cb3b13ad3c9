"""Anchors against hand-computed boxes and a loop-based reference."""

import math

import numpy as np
import pytest

from maskspine.modeling import anchors as anchor_lib


def reference_level(height, width, stride, scales, ratios):
    """[H_l, W_l, A, 4] by explicit loops: row, column, ratio, scale."""
    rows, cols = -(-height // stride), -(-width // stride)
    out = np.zeros((rows, cols, len(ratios) * len(scales), 4))
    for y in range(rows):
        for x in range(cols):
            a = 0
            for ratio in ratios:
                for scale in scales:
                    h = stride * scale * math.sqrt(ratio)
                    w = stride * scale / math.sqrt(ratio)
                    cy, cx = (y + 0.5) * stride, (x + 0.5) * stride
                    out[y, x, a] = [cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2]
                    a += 1
    return out


def test_tiny_image_hand_computed():
    anchors = anchor_lib.generate_anchors((16, 16), [8], [1.0], [0.5, 1.0, 2.0])
    assert list(anchors) == [3]
    boxes = anchors[3].numpy()
    assert boxes.shape == (2 * 2 * 3, 4)
    s = math.sqrt(2.0)
    # Cell (0, 0), centre (4, 4): ratio 0.5 is wide (h = 8/sqrt2, w = 8*sqrt2), 1 square, 2 tall.
    np.testing.assert_allclose(
        boxes[:3],
        [
            [4 - 2 * s, 4 - 4 * s, 4 + 2 * s, 4 + 4 * s],
            [0, 0, 8, 8],
            [4 - 4 * s, 4 - 2 * s, 4 + 4 * s, 4 + 2 * s],
        ],
        atol=1e-5,
    )
    # Next come cell (0, 1) (centre (4, 12)), then (1, 0) (centre (12, 4)): rows outer.
    np.testing.assert_allclose(boxes[4], [0, 8, 8, 16], atol=1e-5)
    np.testing.assert_allclose(boxes[7], [8, 0, 16, 8], atol=1e-5)
    np.testing.assert_allclose(boxes[10], [8, 8, 16, 16], atol=1e-5)


@pytest.mark.parametrize("size", [(64, 96), (100, 60)])
def test_matches_loop_reference_ratio_outer_scale_inner(size):
    strides, scales, ratios = [8, 16, 32], [2.0, 3.0], [0.5, 1.0, 2.0]
    anchors = anchor_lib.generate_anchors(size, strides, scales, ratios)
    assert sorted(anchors) == [3, 4, 5]
    for stride in strides:
        expected = reference_level(*size, stride, scales, ratios)
        got = anchors[int(math.log2(stride))].numpy()
        rows, cols, num = expected.shape[:3]
        assert (rows, cols) == (math.ceil(size[0] / stride), math.ceil(size[1] / stride))
        # An RPN output [H_l, W_l, A] reshaped to H_l * W_l * A lines up with the anchors.
        np.testing.assert_allclose(got, expected.reshape(-1, 4), atol=1e-4)
        np.testing.assert_allclose(got.reshape(rows, cols, num, 4), expected, atol=1e-4)


def test_level_counts_and_the_largest_anchor():
    strides, scales, ratios = [8, 16, 32, 64, 128], [3.0], [0.5, 1.0, 2.0]
    per_level = anchor_lib.generate_anchors((640, 640), strides, scales, ratios)
    counts = [int(per_level[level].shape[0]) for level in range(3, 8)]
    assert counts == [3 * 80 * 80, 3 * 40 * 40, 3 * 20 * 20, 3 * 10 * 10, 3 * 5 * 5]
    # Largest anchor at stride 128, scale 3, ratio 2: 384 * sqrt(2) tall.
    last = per_level[7].numpy()[-1]
    np.testing.assert_allclose(last[2] - last[0], 384 * math.sqrt(2), rtol=1e-5)


def test_non_power_of_two_stride_is_an_error():
    with pytest.raises(ValueError, match="power of two"):
        anchor_lib.generate_anchors((64, 64), [12], [1.0], [1.0])
