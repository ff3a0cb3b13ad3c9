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


def test_box_formats_both_ways():
    from maskspine.boxes import convert_boxes

    yxyx = np.array([[10.0, 20.0, 40.0, 80.0]])
    np.testing.assert_allclose(convert_boxes(yxyx, "yxyx", "xyxy"), [[20.0, 10.0, 80.0, 40.0]])
    np.testing.assert_allclose(convert_boxes(yxyx, "yxyx", "xywh"), [[20.0, 10.0, 60.0, 30.0]])
    np.testing.assert_allclose(
        convert_boxes([[20.0, 10.0, 80.0, 40.0]], "xyxy", "xywh"), [[20.0, 10.0, 60.0, 30.0]]
    )
    for box_format in ("yxyx", "xyxy", "xywh"):
        there = convert_boxes(yxyx, "yxyx", box_format)
        np.testing.assert_allclose(convert_boxes(there, box_format, "yxyx"), yxyx)
    with pytest.raises(ValueError, match="box_format"):
        convert_boxes(yxyx, "yxyx", "cxcywh")


def test_box_overlaps_match_pycocotools():
    from pycocotools import mask as mask_utils

    from maskspine.boxes import box_overlaps, yxyx_to_xywh

    rng = np.random.default_rng(7)
    corners = rng.uniform(0, 50, (12, 2, 2))
    a = np.concatenate([corners[:6].min(1), corners[:6].max(1)], -1)  # yxyx
    b = np.concatenate([corners[6:].min(1), corners[6:].max(1)], -1)
    b[0] = a[0]  # identical: IoU 1
    b[1] = [100, 100, 110, 110]  # disjoint: IoU 0
    iou, ioa = box_overlaps(a, b)
    xywh_a, xywh_b = yxyx_to_xywh(a).tolist(), yxyx_to_xywh(b).tolist()
    np.testing.assert_allclose(iou, mask_utils.iou(xywh_a, xywh_b, [0] * len(b)), atol=1e-12)
    # pycocotools' crowd IoU is the intersection over the detection's (the first's) area
    np.testing.assert_allclose(ioa, mask_utils.iou(xywh_a, xywh_b, [1] * len(b)), atol=1e-12)
    assert iou[0, 0] == pytest.approx(1.0) and iou[1, 1] == 0.0
    zero = box_overlaps([[5, 5, 5, 5]], [[5, 5, 5, 5]])
    assert zero[0][0, 0] == 0.0 and zero[1][0, 0] == 0.0  # no area: 0, not NaN


def test_matching_pairs_by_class_and_iou_greedily_by_score():
    from maskspine.evaluation.matching import (
        match_by_box_distance,
        match_by_iou,
        summarize_pairs,
    )

    reference = [
        {"box": [0, 0, 10, 10], "score": 0.5, "label": 1},
        {"box": [0, 0, 10, 10], "score": 0.9, "label": 1},  # matched first: the higher score
        {"box": [50, 50, 60, 60], "score": 0.8, "label": 2},
    ]
    other = [
        {"box": [0, 0, 10, 11], "score": 0.85, "label": 1},  # IoU 10/11 with both at 0..10
        {"box": [50, 50, 60, 60], "score": 0.7, "label": 3},  # same box, another class
    ]
    pairs, missing, extra = match_by_iou(reference, other)
    assert [(a["score"], b["score"]) for a, b in pairs] == [(0.9, 0.85)]
    assert (missing, extra) == (2, 1)
    figures = summarize_pairs(pairs)
    assert figures["box_diff_max"] == pytest.approx(1.0)
    assert figures["score_diff_max"] == pytest.approx(0.05)
    index_pairs, unmatched, unused = match_by_box_distance(reference, other, tolerance=1.0)
    assert index_pairs == [(0, 0)] and unmatched == [1, 2] and unused == [1]
