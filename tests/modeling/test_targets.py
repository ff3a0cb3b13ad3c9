"""Assigner, sampler, RPN / R-CNN / mask targets against hand-built cases and numpy references."""

import math

import numpy as np
import pytest
import tensorflow as tf

from maskspine.modeling import targets
from maskspine.modeling.anchors import generate_anchors

RPN_ASSIGNER = dict(pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3)
PAD = [-1.0, -1.0, -1.0, -1.0]


#: The coders of the reference's config (rpn.bbox_coder, bbox_head.bbox_coder).
RPN_CODER = {"means": (0.0, 0.0, 0.0, 0.0), "stds": (1.0, 1.0, 1.0, 1.0)}
RCNN_CODER = {"means": (0.0, 0.0, 0.0, 0.0), "stds": (0.1, 0.1, 0.2, 0.2)}


def _rpn_targets(*args, **kwargs):
    return targets.rpn_targets(*args, **{**RPN_CODER, **kwargs})


def _rcnn_targets(*args, **kwargs):
    return targets.rcnn_targets(*args, **{**RCNN_CODER, **kwargs})


def numpy_iou(a, b):
    """IoU and intersection-over-area-of-a, [N, M], by explicit loops."""
    iou = np.zeros((len(a), len(b)), np.float32)
    ioa = np.zeros((len(a), len(b)), np.float32)
    for i, (ay1, ax1, ay2, ax2) in enumerate(a):
        for j, (by1, bx1, by2, bx2) in enumerate(b):
            ih = max(0.0, min(ay2, by2) - max(ay1, by1))
            iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
            inter = np.float32(ih * iw)
            area_a = np.float32(max(0.0, ay2 - ay1) * max(0.0, ax2 - ax1))
            area_b = np.float32(max(0.0, by2 - by1) * max(0.0, bx2 - bx1))
            union = area_a + area_b - inter
            iou[i, j] = inter / union if union > 0 else 0.0
            ioa[i, j] = inter / area_a if area_a > 0 else 0.0
    return iou, ioa


def numpy_max_iou_assigner(boxes, gts, valid, crowd, boxes_valid, pos, neg, min_pos, low_quality):
    """mmdetection's MaxIoUAssigner, one image, written as its loops, plus crowd ignoring."""
    iou, ioa = numpy_iou(boxes, gts)
    matchable = valid & ~crowd
    labels = -np.ones(len(boxes), np.int64)
    matched = np.zeros(len(boxes), np.int64)
    if matchable.any():
        columns = np.flatnonzero(matchable)
        max_iou = iou[:, columns].max(axis=1)
        argmax = columns[iou[:, columns].argmax(axis=1)]
    else:
        max_iou = np.zeros(len(boxes), np.float32)
        argmax = np.zeros(len(boxes), np.int64)
    labels[(max_iou >= 0) & (max_iou < neg)] = 0
    labels[max_iou >= pos] = 1
    matched[max_iou >= pos] = argmax[max_iou >= pos]
    if low_quality:
        for j in np.flatnonzero(matchable):
            column = np.where(boxes_valid, iou[:, j], -1.0)
            best = column.max()
            if best >= min_pos and best > 0:
                for i in np.flatnonzero(column == best):
                    labels[i] = 1
                    matched[i] = j
    crowd_columns = np.flatnonzero(valid & crowd)
    if len(crowd_columns):
        near_crowd = ioa[:, crowd_columns].max(axis=1) >= 0.5
        labels[(labels == 0) & near_crowd] = -1
    labels[~boxes_valid] = -1
    matched[labels != 1] = 0
    return labels, matched


def assign_one(boxes, gts, valid, crowd, boxes_valid=None, **kwargs):
    kwargs = {**RPN_ASSIGNER, "match_low_quality": True, **kwargs}
    labels, matched = targets.assign_max_iou(
        tf.constant([boxes], tf.float32),
        tf.constant([gts], tf.float32),
        tf.constant([valid]),
        tf.constant([crowd]),
        boxes_valid=None if boxes_valid is None else tf.constant([boxes_valid]),
        **kwargs,
    )
    return labels.numpy()[0], matched.numpy()[0]


# gt 0: [0,0,10,10]; gt 1: [50,50,60,60]; gt 2: crowd [100,100,200,200]; gt 3: padding.
GTS = [[0, 0, 10, 10], [50, 50, 60, 60], [100, 100, 200, 200], PAD]
GT_VALID = [True, True, True, False]
GT_CROWD = [False, False, True, False]
BOXES = [
    [0, 0, 10, 10],  # 0: IoU 1 with gt 0 -> positive, gt 0
    [0, 0, 10, 20],  # 1: IoU 0.5 -> between thresholds, ignored
    [20, 20, 30, 30],  # 2: IoU 0 -> negative
    [0, 0, 10, 40],  # 3: IoU 0.25 -> negative
    [50, 50, 60, 65],  # 4: IoU 2/3 with gt 1, the best box of gt 1 -> low-quality positive
    [110, 110, 120, 120],  # 5: inside the crowd region -> ignored
    [90, 90, 110, 110],  # 6: 25 % inside the crowd region -> negative
    [100, 100, 200, 200],  # 7: IoU 1 with the crowd gt, never matched -> ignored (in crowd)
    [-1, -1, -1, -1],  # 8: degenerate, IoU 0 with everything -> negative
]


def test_assigner_hand_case():
    labels, matched = assign_one(BOXES, GTS, GT_VALID, GT_CROWD)
    np.testing.assert_array_equal(labels, [1, -1, 0, 0, 1, -1, 0, -1, 0])
    np.testing.assert_array_equal(matched, [0, 0, 0, 0, 1, 0, 0, 0, 0])


def test_assigner_without_low_quality_matches():
    labels, _ = assign_one(BOXES, GTS, GT_VALID, GT_CROWD, match_low_quality=False)
    assert labels[4] == -1  # 2/3 is between 0.3 and 0.7
    labels, _ = assign_one(BOXES, GTS, GT_VALID, GT_CROWD, min_pos_iou=0.7)
    assert labels[4] == -1  # the best IoU of gt 1 is below min_pos_iou


def test_assigner_invalid_boxes_are_ignored_and_do_not_take_low_quality_matches():
    boxes = BOXES + [[50, 50, 60, 61]]  # 9: IoU 10/11 with gt 1 but invalid
    valid = [True] * 9 + [False]
    labels, matched = assign_one(boxes, GTS, GT_VALID, GT_CROWD, boxes_valid=valid)
    assert labels[9] == -1
    assert labels[4] == 1 and matched[4] == 1  # still gt 1's best valid box
    labels, _ = assign_one(boxes, GTS, GT_VALID, GT_CROWD)
    assert labels[9] == 1 and labels[4] == -1  # box 9 is now the best (and > 0.7)


def test_assigner_low_quality_ties_and_last_gt_wins():
    gts = [[0, 0, 10, 10], [0, 0, 10, 12]]
    boxes = [
        [0, 0, 10, 20],  # IoU 0.5 with gt 0, 0.6 with gt 1
        [0, -10, 10, 10],  # IoU 0.5 with gt 0, 10/22 with gt 1
        [40, 40, 50, 50],
    ]
    labels, matched = assign_one(boxes, gts, [True, True], [False, False])
    # gt 0's best IoU (0.5) is shared by boxes 0 and 1: both positive. Box 0 is also gt 1's
    # best, and gt 1 comes later, so box 0 ends up matched to gt 1.
    np.testing.assert_array_equal(labels, [1, 1, 0])
    np.testing.assert_array_equal(matched, [1, 0, 0])


def test_assigner_no_valid_gt_means_all_negative():
    labels, matched = assign_one(
        BOXES[:5], [PAD, PAD], [False, False], [False, False], boxes_valid=[True] * 4 + [False]
    )
    np.testing.assert_array_equal(labels, [0, 0, 0, 0, -1])
    np.testing.assert_array_equal(matched, 0)


def test_assigner_matches_numpy_reference_on_random_integer_boxes():
    rng = np.random.default_rng(0)
    batch, num_boxes, num_gts = 3, 60, 6

    def boxes(count):
        y1, x1 = rng.integers(0, 30, (2, count))
        h, w = rng.integers(1, 12, (2, count))
        return np.stack([y1, x1, y1 + h, x1 + w], -1).astype(np.float32)

    all_boxes = np.stack([boxes(num_boxes) for _ in range(batch)])
    all_gts = np.stack([boxes(num_gts) for _ in range(batch)])
    gt_valid = rng.random((batch, num_gts)) < 0.8
    gt_crowd = rng.random((batch, num_gts)) < 0.2
    boxes_valid = rng.random((batch, num_boxes)) < 0.9
    for thresholds in [dict(RPN_ASSIGNER), dict(pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5)]:
        labels, matched = targets.assign_max_iou(
            all_boxes,
            all_gts,
            gt_valid,
            gt_crowd,
            boxes_valid=boxes_valid,
            match_low_quality=True,
            **thresholds,
        )
        for b in range(batch):
            expected_labels, expected_matched = numpy_max_iou_assigner(
                all_boxes[b],
                all_gts[b],
                gt_valid[b],
                gt_crowd[b],
                boxes_valid[b],
                thresholds["pos_iou_thr"],
                thresholds["neg_iou_thr"],
                thresholds["min_pos_iou"],
                True,
            )
            np.testing.assert_array_equal(labels[b].numpy(), expected_labels)
            np.testing.assert_array_equal(matched[b].numpy(), expected_matched)


def check_sample(labels, indices, sampled_labels):
    """Every sampled index is unique, points at a box of the sampled label, and padding is -1."""
    for b in range(labels.shape[0]):
        real = sampled_labels[b] >= 0
        assert len(set(indices[b][real].tolist())) == real.sum()
        np.testing.assert_array_equal(labels[b][indices[b][real]], sampled_labels[b][real])
        # Positives first, then negatives, then padding.
        order = {1: 0, 0: 1, -1: 2}
        ranks = [order[v] for v in sampled_labels[b]]
        assert ranks == sorted(ranks)


def make_labels(rng, counts, size):
    labels = np.full(size, -1, np.int32)
    positions = rng.permutation(size)
    labels[positions[: counts[0]]] = 1
    labels[positions[counts[0] : counts[0] + counts[1]]] = 0
    return labels


def test_sampler_counts_fractions_and_padding():
    rng = np.random.default_rng(1)
    cases = [(300, 1000), (10, 1000), (10, 20), (0, 500), (500, 0)]
    labels = np.stack([make_labels(rng, c, 2000) for c in cases])
    indices, sampled = targets.sample_balanced(labels, num=256, pos_fraction=0.5, seed=3)
    indices, sampled = indices.numpy(), sampled.numpy()
    assert indices.shape == sampled.shape == (5, 256)
    check_sample(labels, indices, sampled)
    counts = [((s == 1).sum(), (s == 0).sum(), (s == -1).sum()) for s in sampled]
    assert counts == [(128, 128, 0), (10, 246, 0), (10, 20, 226), (0, 256, 0), (128, 0, 128)]


def test_sampler_neg_pos_upper_bound_and_fewer_boxes_than_num():
    rng = np.random.default_rng(2)
    labels = np.stack([make_labels(rng, (10, 40), 60), make_labels(rng, (0, 40), 60)])
    indices, sampled = targets.sample_balanced(
        labels, num=100, pos_fraction=0.25, neg_pos_ub=2.0, seed=5
    )
    indices, sampled = indices.numpy(), sampled.numpy()
    assert indices.shape == (2, 100)
    check_sample(labels, indices, sampled)
    # 10 positives -> at most 20 negatives; no positive -> at most 2 * max(0, 1) = 2.
    assert [(s == 1).sum() for s in sampled] == [10, 0]
    assert [(s == 0).sum() for s in sampled] == [20, 2]


def test_sampler_is_uniform_over_candidates():
    labels = np.full((4000, 12), -1, np.int32)
    labels[:, :8] = 1  # 8 positives, 4 ignored; each positive kept with probability 2 / 8
    indices, sampled = targets.sample_balanced(labels, num=4, pos_fraction=0.5, seed=7)
    indices, sampled = indices.numpy(), sampled.numpy()
    assert (sampled[:, :2] == 1).all() and (sampled[:, 2:] == -1).all()
    frequency = np.bincount(indices[:, :2].ravel(), minlength=12) / 4000
    np.testing.assert_allclose(frequency[:8], 0.25, atol=0.03)
    assert frequency[8:].sum() == 0


def test_sampler_stateless_seed_is_reproducible():
    labels = np.tile(np.array([[1] * 20 + [0] * 80], np.int32), (2, 1))
    seed = tf.constant([1, 2], tf.int32)
    first = targets.sample_balanced(labels, num=16, pos_fraction=0.25, seed=seed)[0].numpy()
    second = targets.sample_balanced(labels, num=16, pos_fraction=0.25, seed=seed)[0].numpy()
    np.testing.assert_array_equal(first, second)


def test_rpn_targets_tiny_hand_case():
    # 32x32 input, stride 16, one square anchor per cell:
    # [0,0,16,16], [0,16,16,32], [16,0,32,16], [16,16,32,32].
    anchors = generate_anchors((32, 32), [16], [1.0], [1.0])[4]
    gt_boxes = tf.constant([[[0, 0, 16, 20], PAD], [[16, 16, 32, 32], PAD]], tf.float32)
    gt_classes = tf.constant([[3, -1], [1, -1]])
    gt_crowd = tf.zeros([2, 2], tf.bool)
    # Image 1 only fills the top 16 rows of the input: anchors 2 and 3 are in the padding.
    image_shape = tf.constant([[32, 32], [16, 32]], tf.float32)
    out = _rpn_targets(
        anchors, gt_boxes, gt_classes, gt_crowd, image_shape, num=4, pos_fraction=0.5, seed=0
    )
    # Image 0: IoU(anchor 0, gt) = 256 / 320 = 0.8 -> positive; anchor 1: 64 / 512 -> negative.
    np.testing.assert_array_equal(out["labels"], [[1, 0, 0, 0], [0, 0, -1, -1]])
    np.testing.assert_array_equal(out["objectness"], [[1, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(out["objectness_weight"], [[1, 1, 1, 1], [1, 1, 0, 0]])
    np.testing.assert_array_equal(out["box_weight"], [[1, 0, 0, 0], [0, 0, 0, 0]])
    # gt centre (8, 10), size (16, 20) vs anchor centre (8, 8), size 16.
    expected = np.zeros((2, 4, 4), np.float32)
    expected[0, 0] = [0.0, 2.0 / 16.0, 0.0, math.log(20.0 / 16.0)]
    np.testing.assert_allclose(out["box_deltas"], expected, atol=1e-6)


def test_rpn_targets_rejects_add_gt_as_proposals():
    anchors = generate_anchors((32, 32), [16], [1.0], [1.0])[4]
    with pytest.raises(ValueError, match="add_gt_as_proposals"):
        _rpn_targets(
            anchors,
            tf.constant([[PAD]]),
            tf.constant([[-1]]),
            tf.constant([[False]]),
            tf.constant([[32.0, 32.0]]),
            add_gt_as_proposals=True,
        )


def test_rcnn_targets_tiny_hand_case():
    proposals = tf.constant(
        [[[0, 0, 10, 10], [0, 0, 10, 12], [40, 40, 50, 50], [0, 0, 0, 0]]], tf.float32
    )
    proposals_valid = tf.constant([[True, True, True, False]])
    gt_boxes = tf.constant([[[0, 0, 10, 12], [60, 60, 70, 70], PAD]], tf.float32)
    gt_classes = tf.constant([[5, 2, -1]])
    gt_crowd = tf.constant([[False, True, False]])
    out = _rcnn_targets(
        proposals,
        proposals_valid,
        gt_boxes,
        gt_classes,
        gt_crowd,
        num=8,
        pos_fraction=0.5,
        add_gt_as_proposals=False,
        seed=0,
    )
    # Proposal 0: IoU 100/120 with gt 0 -> positive; proposal 1 equals gt 0 -> positive;
    # proposal 2: negative; proposal 3 invalid; the crowd gt is never a target.
    assert out["rois"].shape == (1, 8, 4)
    positive = out["positive"].numpy()[0]
    rois = out["rois"].numpy()[0]
    assert positive.sum() == 2 and out["roi_valid"].numpy()[0].sum() == 3
    np.testing.assert_array_equal(out["roi_valid"].numpy()[0], [1, 1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(rois[3:], 0.0)
    np.testing.assert_array_equal(out["class_targets"].numpy()[0], [5, 5, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(out["matched_gt"].numpy()[0], 0)
    np.testing.assert_array_equal(out["box_weight"].numpy()[0], positive.astype(np.float32))
    np.testing.assert_array_equal(rois[2], [40, 40, 50, 50])
    deltas = out["box_deltas"].numpy()[0]
    for roi, delta in zip(rois[:2], deltas[:2], strict=True):
        if roi[3] == 10:  # [0,0,10,10] -> [0,0,10,12]: centre x 5 -> 6, width 10 -> 12
            expected = [0.0, 0.1 / 0.1, 0.0, math.log(1.2) / 0.2]
        else:
            expected = [0.0, 0.0, 0.0, 0.0]
        np.testing.assert_allclose(delta, expected, atol=1e-5)
    np.testing.assert_array_equal(deltas[2:], 0.0)


def test_add_gt_as_proposals_makes_every_gt_positive():
    gt_boxes = tf.constant([[[0, 0, 10, 10], [20, 20, 40, 30], [60, 60, 70, 70], PAD]], tf.float32)
    gt_classes = tf.constant([[1, 4, 2, -1]])
    gt_crowd = tf.constant([[False, False, True, False]])
    proposals = tf.constant([[[80, 80, 90, 90], [100, 0, 120, 30]]], tf.float32)
    out = _rcnn_targets(
        proposals,
        tf.constant([[True, True]]),
        gt_boxes,
        gt_classes,
        gt_crowd,
        match_low_quality=False,
        num=16,
        pos_fraction=0.5,
        add_gt_as_proposals=True,
        seed=0,
    )
    positive = out["positive"].numpy()[0]
    rois = out["rois"].numpy()[0][positive]
    assert positive.sum() == 2  # gts 0 and 1; the crowd gt and the padding row are not added
    found = sorted(map(tuple, rois.tolist()))
    assert found == [(0.0, 0.0, 10.0, 10.0), (20.0, 20.0, 40.0, 30.0)]
    classes = out["class_targets"].numpy()[0][positive]
    matched = out["matched_gt"].numpy()[0][positive]
    for roi, cls, gt in zip(rois, classes, matched, strict=True):
        assert cls == {(0.0, 0.0): 1, (20.0, 20.0): 4}[tuple(roi[:2])]
        np.testing.assert_array_equal(gt_boxes.numpy()[0, gt], roi)
    np.testing.assert_allclose(out["box_deltas"].numpy()[0][positive], 0.0, atol=1e-6)
    assert out["roi_valid"].numpy()[0].sum() == 4  # 2 gts + 2 negative proposals


def full_image_mask(size=64):
    """A binary instance inside rows 16..48, columns 8..40: an ellipse with a square hole."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    inside = ((yy - 32) / 15.5) ** 2 + ((xx - 24) / 15.5) ** 2 <= 1.0
    hole = (np.abs(yy - 30) < 4) & (np.abs(xx - 20) < 5)
    mask = (inside & ~hole).astype(np.float32)
    mask[:16] = mask[48:] = 0
    mask[:, :8] = mask[:, 40:] = 0
    return mask


GT_BOX = [16.0, 8.0, 48.0, 40.0]


def crop_reference(full, roi, size):
    """Crop the full-image mask at an integer roi and shrink it by block averaging."""
    y1, x1, y2, x2 = (int(v) for v in roi)
    padded = np.pad(full, 64)
    crop = padded[y1 + 64 : y2 + 64, x1 + 64 : x2 + 64]
    factor = crop.shape[0] // size
    return crop.reshape(size, factor, size, factor).mean(axis=(1, 3))


def run_mask_targets(rois, gt_mask, mask_size=28, method="crop_and_resize"):
    rois = np.asarray(rois, np.float32)[None]
    gt_masks = np.stack([np.zeros_like(gt_mask), gt_mask])[None]  # instance 1 is ours
    matched = np.ones(rois.shape[:2], np.int32)
    gt_boxes = np.broadcast_to(np.array(GT_BOX, np.float32), rois.shape)
    out = targets.mask_targets(
        rois, gt_boxes, gt_masks, matched, mask_size=mask_size, method=method
    )
    return out.numpy()[0]


@pytest.mark.parametrize("method", ["crop_and_resize", "gather"])
def test_mask_targets_match_full_image_crop(method):
    full = full_image_mask()
    gt_mask = full[16:48, 8:40]  # cropped to the gt box at its own resolution (M = 32)
    rois = [
        [18, 10, 46, 38],  # inside the gt box
        [10, 2, 38, 30],  # sticking out at the top left
        [30, 30, 58, 58],  # sticking out at the bottom right
        [16, 8, 72, 64],  # twice the output size: 2x2 averages
        [-8, -16, 48, 40],
    ]
    got = run_mask_targets(rois, gt_mask, method=method)
    assert got.shape == (5, 28, 28)
    for roi, target in zip(rois, got, strict=True):
        np.testing.assert_allclose(target, crop_reference(full, roi, 28), atol=1e-4)


def test_mask_targets_with_resized_gt_masks_close_to_full_image_crop():
    full = full_image_mask()
    # M = 16: the gt-box crop at half resolution (2x2 averages), as the data pipeline would.
    gt_mask = full[16:48, 8:40].reshape(16, 2, 16, 2).mean(axis=(1, 3))
    rois = [[18, 10, 46, 38], [10, 2, 38, 30], [16, 8, 72, 64]]
    got = run_mask_targets(rois, gt_mask)
    for roi, target in zip(rois, got, strict=True):
        expected = crop_reference(full, roi, 28)
        assert np.abs(target - expected).mean() < 0.1  # blur of a 2x upsampling
        assert ((target >= 0.5) == (expected >= 0.5)).mean() > 0.95
        assert target.min() >= 0.0 and target.max() <= 1.0


def bilinear_reference(gt_mask, gt_box, roi, size):
    """Sample the gt mask, spread over its gt box (pixel i covering [i, i + 1) * box / M, 0
    outside), at the pixel centres of a size x size grid over the roi."""
    m = gt_mask.shape[0]
    padded = np.pad(gt_mask, 1)
    out = np.zeros((size, size))
    gy1, gx1, gy2, gx2 = gt_box
    y1, x1, y2, x2 = roi
    for i in range(size):
        for j in range(size):
            y = y1 + (i + 0.5) * (y2 - y1) / size
            x = x1 + (j + 0.5) * (x2 - x1) / size
            u = (y - gy1) / (gy2 - gy1) * m + 0.5  # index into the padded mask
            v = (x - gx1) / (gx2 - gx1) * m + 0.5
            if not (0 <= u <= m + 1 and 0 <= v <= m + 1):
                continue
            u0, v0 = min(int(u), m), min(int(v), m)
            fu, fv = u - u0, v - v0
            out[i, j] = (
                padded[u0, v0] * (1 - fu) * (1 - fv)
                + padded[u0 + 1, v0] * fu * (1 - fv)
                + padded[u0, v0 + 1] * (1 - fu) * fv
                + padded[u0 + 1, v0 + 1] * fu * fv
            )
    return out


@pytest.mark.parametrize("method", ["crop_and_resize", "gather"])
def test_mask_targets_match_bilinear_reference_for_fractional_rois(method):
    rng = np.random.default_rng(3)
    gt_mask = (rng.random((16, 16)) > 0.4).astype(np.float32)
    rois = [[20.3, 11.7, 45.1, 30.2], [5.5, 0.25, 50.75, 44.5], [30.0, 30.0, 31.5, 60.0]]
    got = run_mask_targets(rois, gt_mask, mask_size=14, method=method)
    for roi, target in zip(rois, got, strict=True):
        np.testing.assert_allclose(target, bilinear_reference(gt_mask, GT_BOX, roi, 14), atol=1e-4)


def test_everything_runs_inside_tf_function():
    anchors = tf.concat(list(generate_anchors((64, 64), [8, 16], [2.0], [0.5, 1, 2]).values()), 0)
    gt_boxes = tf.constant(
        [[[4, 4, 30, 40], [30, 10, 60, 30], PAD], [[0, 0, 64, 64], PAD, PAD]], tf.float32
    )
    gt_classes = tf.constant([[1, 2, -1], [3, -1, -1]])
    gt_crowd = tf.constant([[False, False, False], [False, False, False]])
    gt_masks = tf.ones([2, 3, 16, 16])
    proposals = tf.random.stateless_uniform([2, 20, 2], [0, 1], maxval=40.0)
    proposals = tf.concat([proposals, proposals + 20.0], axis=-1)
    image_shape = tf.constant([[64, 64], [64, 48]], tf.float32)

    @tf.function
    def compute(proposals):
        rpn = _rpn_targets(anchors, gt_boxes, gt_classes, gt_crowd, image_shape, num=32)
        rcnn = _rcnn_targets(
            proposals, tf.ones([2, 20], tf.bool), gt_boxes, gt_classes, gt_crowd, num=64
        )
        masks = targets.mask_targets(
            rcnn["rois"], rcnn["matched_gt_boxes"], gt_masks, rcnn["matched_gt"]
        )
        return rpn, rcnn, masks

    rpn, rcnn, masks = compute(proposals)
    assert rpn["objectness"].shape == (2, anchors.shape[0])
    assert rpn["box_deltas"].shape == (2, anchors.shape[0], 4)
    assert rcnn["rois"].shape == (2, 64, 4) and masks.shape == (2, 64, 28, 28)
    assert float(tf.reduce_sum(rpn["objectness_weight"][0])) == 32
    # Every valid gt is positive somewhere (gt boxes are added as proposals).
    for b, count in enumerate([2, 1]):
        matched = set(rcnn["matched_gt"][b].numpy()[rcnn["positive"][b].numpy()].tolist())
        assert matched == set(range(count))
    # All-ones masks: positives fully covered by their gt box get all-ones targets.
    positive = rcnn["positive"].numpy()
    rois, boxes = rcnn["rois"].numpy(), rcnn["matched_gt_boxes"].numpy()
    for b, k in zip(*np.nonzero(positive), strict=True):
        y1, x1, y2, x2 = rois[b, k]
        gy1, gx1, gy2, gx2 = boxes[b, k]
        if y1 >= gy1 + 2 and x1 >= gx1 + 2 and y2 <= gy2 - 2 and x2 <= gx2 - 2:
            np.testing.assert_allclose(masks[b, k], 1.0, atol=1e-5)


def _random_mask_target_case(rng, batch=2, num_gts=5, num_rois=40, mask_side=28, uint8=True):
    """Gt boxes and masks, and RoIs around them: overlapping, inside, sticking out, tiny,
    wholly outside, zero (padding RoIs of a sample), matched to padding gts (-1 boxes)."""
    centre = rng.uniform(10, 110, (batch, num_gts, 2))
    half = rng.uniform(2, 40, (batch, num_gts, 2))
    gt_boxes = np.concatenate([centre - half, centre + half], -1).astype(np.float32)
    gt_boxes[:, -1] = -1.0  # padding gt
    masks = rng.random((batch, num_gts, mask_side, mask_side))
    masks = (masks > 0.5).astype(np.uint8) if uint8 else masks.astype(np.float32)
    matched = rng.integers(0, num_gts, (batch, num_rois)).astype(np.int32)
    matched_boxes = np.take_along_axis(gt_boxes, matched[..., None], axis=1)
    size = matched_boxes[..., 2:] - matched_boxes[..., :2]
    start = matched_boxes[..., :2] + rng.uniform(-0.6, 0.9, size.shape) * size
    extent = size * np.exp(rng.uniform(np.log(0.02), np.log(2.0), size.shape))
    rois = np.concatenate([start, start + extent], -1).astype(np.float32)
    rois[:, :3] = 0.0  # padding RoIs
    rois[:, 3] = [-300.0, -300.0, -200.0, -200.0]  # far outside
    rois[:, 4] = matched_boxes[:, 4]  # the gt box itself
    return rois, matched_boxes, masks, matched


@pytest.mark.parametrize(
    ("mask_side", "mask_size", "uint8"), [(28, 28, True), (16, 28, False), (28, 14, False)]
)
def test_mask_targets_gather_method_equals_crop_and_resize(mask_side, mask_size, uint8):
    rng = np.random.default_rng(mask_side + mask_size)
    rois, matched_boxes, masks, matched = _random_mask_target_case(
        rng, mask_side=mask_side, uint8=uint8
    )
    expected = targets.mask_targets(rois, matched_boxes, masks, matched, mask_size=mask_size)
    got = targets.mask_targets(
        rois, matched_boxes, masks, matched, mask_size=mask_size, method="gather"
    )
    assert got.shape == expected.shape == (2, 40, mask_size, mask_size)
    assert 0.1 < float(tf.reduce_mean(expected)) < 0.9  # the case samples the masks
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=0, atol=1e-5)
    binary = targets.mask_targets(
        rois, matched_boxes, masks, matched, mask_size=mask_size, binarize=True, method="gather"
    )
    np.testing.assert_array_equal(binary.numpy(), (expected.numpy() >= 0.5).astype(np.float32))


def test_mask_targets_gather_method_compiles_with_xla():
    rng = np.random.default_rng(4)
    rois, matched_boxes, masks, matched = _random_mask_target_case(rng)
    compiled = tf.function(
        lambda *args: targets.mask_targets(*args, method="gather"), jit_compile=True
    )
    got = compiled(rois, matched_boxes, masks, matched)
    expected = targets.mask_targets(rois, matched_boxes, masks, matched)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=0, atol=1e-5)


def test_sampling_seed_depends_on_seed_step_and_replica():
    seeds = {
        (seed, step, replica): tuple(targets.sampling_seed(seed, step, replica).numpy())
        for seed in (0, 1)
        for step in (0, 1, 1000)
        for replica in (0, 1)
    }
    assert len(set(seeds.values())) == len(seeds)
    again = targets.sampling_seed(1, tf.constant(1000, tf.int64), tf.constant(1))
    assert tuple(again.numpy()) == seeds[(1, 1000, 1)]
    streams = targets.sampler_seeds(again)
    assert set(streams) == {"rpn", "rcnn"}
    assert tuple(streams["rpn"].numpy()) != tuple(streams["rcnn"].numpy())
    assert targets.sampler_seeds(None) == {"rpn": None, "rcnn": None}


def test_seeded_targets_repeat_for_a_seed_and_change_with_the_step():
    anchors = tf.concat(list(generate_anchors((64, 64), [8, 16], [2.0], [0.5, 1, 2]).values()), 0)
    gt_boxes = tf.constant([[[4, 4, 30, 40], [30, 10, 60, 30], PAD]] * 2, tf.float32)
    gt_classes = tf.constant([[1, 2, -1]] * 2)
    gt_crowd = tf.zeros([2, 3], tf.bool)
    proposals = tf.random.stateless_uniform([2, 200, 2], [0, 1], maxval=40.0)
    proposals = tf.concat([proposals, proposals + 20.0], axis=-1)
    image_shape = tf.constant([[64, 64], [64, 64]], tf.float32)

    def sample(step):
        seeds = targets.sampler_seeds(targets.sampling_seed(7, step, 0))
        rpn = _rpn_targets(
            anchors, gt_boxes, gt_classes, gt_crowd, image_shape, num=32, seed=seeds["rpn"]
        )
        rcnn = _rcnn_targets(
            proposals,
            tf.ones([2, 200], tf.bool),
            gt_boxes,
            gt_classes,
            gt_crowd,
            num=32,
            seed=seeds["rcnn"],
        )
        return rpn["objectness_weight"], rcnn["rois"]

    first, again, later = sample(3), sample(3), sample(4)
    compiled = tf.function(sample, jit_compile=True)(tf.constant(3, tf.int64))
    for a, b, c in zip(first, again, compiled, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        np.testing.assert_array_equal(a.numpy(), c.numpy())  # XLA draws the same sample
    assert not np.array_equal(first[0].numpy(), later[0].numpy())
    assert not np.array_equal(first[1].numpy(), later[1].numpy())
