"""The numpy box format converters: a hand case, round trips, dtypes, bad shapes."""

from __future__ import annotations

import numpy as np
import pytest

from maskspine.boxes import xywh_to_yxyx, yxyx_to_xywh


def test_converters_hand_case_and_round_trip():
    yxyx = np.array([[10.0, 20.0, 40.0, 80.0]])
    xywh = yxyx_to_xywh(yxyx)
    assert isinstance(xywh, np.ndarray)
    np.testing.assert_allclose(xywh, [[20.0, 10.0, 60.0, 30.0]])
    np.testing.assert_allclose(xywh_to_yxyx(xywh), yxyx)
    assert xywh_to_yxyx([[1, 2, 3, 4]]).dtype == np.float32
    assert yxyx_to_xywh(np.zeros((2, 4), np.float64)).dtype == np.float64

    rng = np.random.default_rng(4)
    corners = np.sort(rng.uniform(0, 100, (3, 4, 2, 2)), axis=-2)  # [..., low/high, (y, x)]
    boxes = np.concatenate([corners[..., 0, :], corners[..., 1, :]], axis=-1)  # y1 x1 y2 x2
    np.testing.assert_allclose(xywh_to_yxyx(yxyx_to_xywh(boxes)), boxes, atol=1e-9)


def test_converters_need_four_coordinates():
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        yxyx_to_xywh(np.zeros((2, 3)))
