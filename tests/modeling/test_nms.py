"""The tiled NMS (static shapes, XLA) against TensorFlow's NMS ops: `padded_nms` against
`tf.image.non_max_suppression_padded`, `combined_nms` against
`tf.image.combined_non_max_suppression`, and both through `generate_proposals` and
`detect_boxes` (both NMS rules), compiled with XLA and not."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from maskspine.modeling.detection import detect_boxes
from maskspine.modeling.nms import combined_nms, padded_nms, sort_candidates, tiled_nms
from maskspine.modeling.rpn import generate_proposals


def clustered_boxes(rng: np.random.Generator, shape: tuple, size: float = 100.0) -> np.ndarray:
    """Boxes [*shape, 4] yxyx in [0, size], in clusters so that many overlap."""
    centres = rng.uniform(0.1 * size, 0.9 * size, (*shape[:-1], 6, 2))
    pick = rng.integers(0, 6, shape)
    centre = np.take_along_axis(centres, pick[..., None], axis=-2) + rng.normal(0, 4, (*shape, 2))
    half = rng.uniform(3, 25, (*shape, 2))
    return np.clip(np.concatenate([centre - half, centre + half], -1), 0, size).astype(np.float32)


def sorted_rows(rng, rows, count, dots=0):
    """Boxes sorted by a random descending score per row; the last `dots` are zero boxes."""
    boxes = clustered_boxes(rng, (rows, count))
    scores = rng.uniform(size=(rows, count)).astype(np.float32)
    scores[:, ::7] = scores[:, ::7].round(1)  # ties
    order = np.argsort(-scores, axis=1, kind="stable")
    boxes = np.take_along_axis(boxes, order[..., None], 1)
    scores = np.take_along_axis(scores, order, 1)
    if dots:
        boxes[:, -dots:] = 0.0
    return boxes, scores


def padded_nms_both(boxes, scores, max_output, threshold):
    expected = padded_nms(boxes, scores, max_output, threshold)
    graph = tf.function(
        lambda b, s: padded_nms(b, s, max_output, threshold, implementation="tiled")
    )
    return expected, graph(boxes, scores)


@pytest.mark.parametrize(
    ("count", "max_output", "threshold", "dots"),
    [
        (300, 40, 0.5, 0),
        (300, 200, 0.5, 30),
        (50, 120, 0.7, 5),
        (130, 300, 0.3, 0),
        (20, 8, 0.6, 20),
    ],
)
def test_tiled_padded_nms_keeps_what_tensorflow_keeps(count, max_output, threshold, dots):
    rng = np.random.default_rng(count + max_output)
    boxes, scores = sorted_rows(rng, 3, count, dots)
    (indices, num_valid), (got_indices, got_num_valid) = padded_nms_both(
        boxes, scores, max_output, threshold
    )
    np.testing.assert_array_equal(got_num_valid.numpy(), num_valid.numpy())
    np.testing.assert_array_equal(got_indices.numpy(), indices.numpy())
    if dots == count:
        assert (num_valid.numpy() == 0).all()
    else:
        assert (num_valid.numpy() > 0).all()


def test_tiled_nms_result_does_not_depend_on_the_tile_size():
    rng = np.random.default_rng(2)
    boxes, _ = sorted_rows(rng, 2, 200)
    candidates = np.ones((2, 200), bool)
    results = [
        tiled_nms(boxes, candidates, max_output_size=150, iou_threshold=0.5, rule=rule, tile_size=t)
        for rule in ("combined", "padded")
        for t in (8, 64, 256)
    ]
    for indices, num_valid in results[1:3]:
        np.testing.assert_array_equal(indices.numpy(), results[0][0].numpy())
        np.testing.assert_array_equal(num_valid.numpy(), results[0][1].numpy())


def test_tiled_nms_rules_differ_at_equal_iou():
    # Box 1 overlaps box 0 at IoU exactly 0.5: the padded rule drops it, the combined keeps it.
    boxes = np.array([[[0, 0, 10, 10], [0, 0, 10, 5], [20, 20, 30, 30]]], np.float32)
    for rule, kept in (("padded", [0, 2]), ("combined", [0, 1, 2])):
        indices, num_valid = tiled_nms(
            boxes, np.ones((1, 3), bool), max_output_size=3, iou_threshold=0.5, rule=rule
        )
        assert indices.numpy()[0, : int(num_valid[0])].tolist() == kept


@pytest.mark.parametrize("most", [0, 40, 64, 65, 200, 256, 257, 600])
def test_sort_candidates_orders_the_candidates_as_a_stable_sort(most):
    rng = np.random.default_rng(most)
    scores = rng.uniform(0, 0.5, (3, 600)).astype(np.float32)
    for row, count in enumerate([most, most // 2, 0]):
        scores[row, rng.permutation(600)[:count]] = rng.uniform(0.51, 1, count).round(2)  # ties
    assert (scores > 0.5).sum(axis=1).max() == most
    compiled = tf.function(lambda s: sort_candidates(s, 0.5), jit_compile=True)
    for values, order in (sort_candidates(scores, 0.5), compiled(scores)):
        for row in range(3):
            count = int((scores[row] > 0.5).sum())
            expected = np.argsort(-scores[row], kind="stable")[:count]
            np.testing.assert_array_equal(order.numpy()[row, :count], expected)
            np.testing.assert_array_equal(values.numpy()[row, :count], scores[row, expected])
            assert (values.numpy()[row, count:] <= 0.5).all()


def combined_both(boxes, scores, **kwargs):
    expected = combined_nms(boxes, scores, **kwargs)
    graph = tf.function(lambda b, s: combined_nms(b, s, implementation="tiled", **kwargs))
    return expected, graph(boxes, scores)


@pytest.mark.parametrize(
    ("per_class", "total", "score_threshold", "shared_boxes"),
    [(30, 60, 0.3, False), (30, 60, 0.3, True), (5, 500, 0.1, False), (300, 100, 0.0, True)],
)
def test_tiled_combined_nms_keeps_what_tensorflow_keeps(
    per_class, total, score_threshold, shared_boxes
):
    rng = np.random.default_rng(per_class + total)
    batch, count, classes = 2, 200, 5
    boxes = clustered_boxes(rng, (batch, count, 1 if shared_boxes else classes))
    scores = (rng.uniform(size=(batch, count, classes)) ** 2).astype(np.float32)
    kwargs = dict(
        max_output_size_per_class=per_class,
        max_total_size=total,
        iou_threshold=0.5,
        score_threshold=score_threshold,
    )
    expected, got = combined_both(boxes, scores, **kwargs)
    for name, want, have in zip(("boxes", "scores", "classes", "num_valid"), expected, got):
        np.testing.assert_array_equal(have.numpy(), want.numpy(), err_msg=name)
    assert got[0].shape == (batch, total, 4)


def test_tiled_combined_nms_with_nothing_above_the_threshold():
    rng = np.random.default_rng(3)
    boxes = clustered_boxes(rng, (2, 40, 1))
    scores = rng.uniform(0, 0.5, (2, 40, 3)).astype(np.float32)
    kwargs = dict(max_output_size_per_class=10, max_total_size=10, iou_threshold=0.5)
    expected, got = combined_both(boxes, scores, score_threshold=0.5, **kwargs)
    assert (got[3].numpy() == 0).all() and (expected[3].numpy() == 0).all()
    assert not got[0].numpy().any() and not got[1].numpy().any()


# --- through the proposal generator and the detector ------------------------------------------


def proposal_inputs(rng, batch=2, counts=None):
    counts = counts or {3: 400, 4: 160, 5: 40, 6: 12}
    anchors = {
        level: clustered_boxes(rng, (k,), 128.0).astype(np.float32) for level, k in counts.items()
    }
    logits = {level: rng.normal(0, 2, (batch, k)).astype(np.float32) for level, k in counts.items()}
    deltas = {
        level: rng.normal(0, 0.2, (batch, k, 4)).astype(np.float32) for level, k in counts.items()
    }
    deltas[3][:, :20, 2] = -20.0  # degenerate boxes for the size filter
    image_shape = np.array([[128.0, 128.0], [100.0, 120.0]], np.float32)[:batch]
    return logits, deltas, anchors, image_shape


@pytest.mark.parametrize(
    ("nms_rule", "nms_pre", "max_per_img"),
    [("combined", 200, 150), ("padded", 200, 150), ("combined", 100, 1000), ("padded", 300, 500)],
)
def test_generate_proposals_tiled_equals_tensorflow_ops(nms_rule, nms_pre, max_per_img):
    rng = np.random.default_rng(nms_pre + max_per_img)
    logits, deltas, anchors, image_shape = proposal_inputs(rng)
    settings = dict(
        nms_pre=nms_pre,
        max_per_img=max_per_img,
        iou_threshold=0.6,
        min_bbox_size=1.0,
        means=[0.0] * 4,
        stds=[1.0] * 4,
        nms_rule=nms_rule,
    )
    expected = generate_proposals(logits, deltas, anchors, image_shape, **settings)

    def tiled(*args):
        return generate_proposals(*args, nms_implementation="tiled", **settings)

    # Graph mode: the same decoded boxes go into both NMS, the same must come out.
    got = tf.function(tiled)(logits, deltas, anchors, image_shape)
    for name, want, have in zip(("proposals", "scores", "valid"), expected, got, strict=True):
        assert have.shape == want.shape == (2, max_per_img, 4)[: len(want.shape)], name
        np.testing.assert_array_equal(have.numpy(), want.numpy(), err_msg=name)
    # Compiled, the decoding rounds differently (fused multiply-adds): equal to rounding.
    compiled = tf.function(tiled, jit_compile=True)(logits, deltas, anchors, image_shape)
    np.testing.assert_allclose(compiled[0].numpy(), expected[0].numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(compiled[1].numpy(), expected[1].numpy(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(compiled[2].numpy(), expected[2].numpy())


def detection_inputs(rng, batch=2, count=300, classes=6):
    proposals = clustered_boxes(rng, (batch, count), 128.0)
    logits = rng.normal(0, 2, (batch, count, classes)).astype(np.float32)
    deltas = rng.normal(0, 0.3, (batch, count, classes, 4)).astype(np.float32)
    # Ties: duplicated proposals with the same outputs (equal boxes and scores).
    proposals[:, 1::10] = proposals[:, ::10]
    logits[:, 1::10] = logits[:, ::10]
    deltas[:, 1::10] = deltas[:, ::10]
    valid = np.ones((batch, count), bool)
    valid[1, -40:] = False
    image_shape = np.array([[128.0, 128.0], [110.0, 90.0]], np.float32)[:batch]
    return logits, deltas, proposals, valid, image_shape


@pytest.mark.parametrize(
    ("nms_rule", "score_thr", "max_per_img"),
    [("combined", 0.05, 100), ("padded", 0.05, 100), ("combined", 0.3, 500), ("padded", 0.2, 30)],
)
def test_detect_boxes_tiled_equals_tensorflow_ops(nms_rule, score_thr, max_per_img):
    rng = np.random.default_rng(int(score_thr * 100) + max_per_img)
    inputs = detection_inputs(rng)
    settings = dict(
        means=[0.0] * 4,
        stds=[0.1, 0.1, 0.2, 0.2],
        score_thr=score_thr,
        iou_threshold=0.5,
        max_per_img=max_per_img,
        nms_rule=nms_rule,
    )
    expected = detect_boxes(*inputs, **settings)
    assert 0 < int(expected["num_detections"][0]) <= max_per_img

    def tiled(*args):
        return detect_boxes(*args, nms_implementation="tiled", **settings)

    got = tf.function(tiled)(*inputs)
    for key, want in expected.items():
        np.testing.assert_array_equal(got[key].numpy(), want.numpy(), err_msg=key)
    compiled = tf.function(tiled, jit_compile=True)(*inputs)
    for key, want in expected.items():
        tolerance = {"detection_boxes": 1e-4, "detection_scores": 1e-6}.get(key, 0)
        np.testing.assert_allclose(
            compiled[key].numpy(), want.numpy(), rtol=0, atol=tolerance, err_msg=key
        )


def test_detect_boxes_tiled_with_every_score_below_the_threshold():
    rng = np.random.default_rng(5)
    inputs = detection_inputs(rng, count=50)
    for nms_rule in ("combined", "padded"):
        got = detect_boxes(
            *inputs,
            means=[0.0] * 4,
            stds=[0.1, 0.1, 0.2, 0.2],
            score_thr=0.999,
            iou_threshold=0.5,
            max_per_img=20,
            nms_rule=nms_rule,
            nms_implementation="tiled",
        )
        assert (got["num_detections"].numpy() == 0).all()
        assert not got["detection_boxes"].numpy().any()
        assert not got["detection_classes"].numpy().any()


def test_unknown_implementation_is_a_clear_error():
    with pytest.raises(ValueError, match="tiled"):
        padded_nms(tf.zeros([1, 4, 4]), tf.zeros([1, 4]), 2, 0.5, implementation="xla")
