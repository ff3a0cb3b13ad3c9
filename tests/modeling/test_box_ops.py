"""Box ops against pycocotools and hand-computed cases."""

import math

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import tensorflow as tf

from maskspine.modeling import box_ops

RCNN_STDS = (0.1, 0.1, 0.2, 0.2)  # the reference's bbox_head.bbox_coder.target_stds


def random_yxyx(rng, count, size=100.0, degenerate=False):
    y1 = rng.uniform(0, size, count)
    x1 = rng.uniform(0, size, count)
    h = rng.uniform(0 if degenerate else 1, 40, count)
    w = rng.uniform(0 if degenerate else 1, 40, count)
    if degenerate:
        h[::5] = 0.0
    return np.stack([y1, x1, y1 + h, x1 + w], axis=-1).astype(np.float32)


def coco_xywh(boxes_yxyx):
    y1, x1, y2, x2 = boxes_yxyx.T.astype(np.float64)
    return np.stack([x1, y1, x2 - x1, y2 - y1], axis=-1)


def test_box_area_hand_case():
    boxes = tf.constant([[0.0, 0.0, 10.0, 20.0], [5.0, 5.0, 5.0, 9.0], [-1, -1, -1, -1]])
    np.testing.assert_allclose(box_ops.box_area(boxes).numpy(), [200.0, 0.0, 0.0])


def test_pairwise_iou_matches_pycocotools():
    rng = np.random.default_rng(0)
    boxes1 = random_yxyx(rng, 30, degenerate=True)
    boxes2 = random_yxyx(rng, 20, degenerate=True)
    expected = mask_utils.iou(coco_xywh(boxes1), coco_xywh(boxes2), [0] * 20)
    iou, _ = box_ops.pairwise_overlaps(boxes1, boxes2)
    assert iou.shape == (30, 20)
    np.testing.assert_allclose(iou.numpy(), expected, atol=1e-5)


def test_pairwise_ioa_matches_pycocotools_crowd_iou():
    # pycocotools' IoU with an iscrowd gt is intersection over the detection's area.
    rng = np.random.default_rng(1)
    boxes1 = random_yxyx(rng, 25)
    boxes2 = random_yxyx(rng, 10)
    expected = mask_utils.iou(coco_xywh(boxes1), coco_xywh(boxes2), [1] * 10)
    _, ioa = box_ops.pairwise_overlaps(boxes1, boxes2)
    np.testing.assert_allclose(ioa.numpy(), expected, atol=1e-5)


def test_pairwise_iou_batched_and_zero_union():
    rng = np.random.default_rng(2)
    boxes1 = random_yxyx(rng, 2 * 7).reshape(2, 7, 4)
    boxes2 = random_yxyx(rng, 2 * 5).reshape(2, 5, 4)
    got = box_ops.pairwise_overlaps(boxes1, boxes2)[0].numpy()
    assert got.shape == (2, 7, 5)
    for b in range(2):
        expected = mask_utils.iou(coco_xywh(boxes1[b]), coco_xywh(boxes2[b]), [0] * 5)
        np.testing.assert_allclose(got[b], expected, atol=1e-5)
    padding = -np.ones((1, 4), np.float32)
    iou, ioa = box_ops.pairwise_overlaps(padding, padding)
    assert iou.numpy()[0, 0] == 0.0 and ioa.numpy()[0, 0] == 0.0


def test_encode_hand_case():
    anchor = tf.constant([[0.0, 0.0, 10.0, 10.0]])
    box = tf.constant([[2.0, 4.0, 12.0, 24.0]])  # centre (7, 14), size (10, 20)
    deltas = box_ops.encode_boxes(box, anchor, (0, 0, 0, 0), RCNN_STDS).numpy()[0]
    expected = np.array([0.2 / 0.1, 0.9 / 0.1, 0.0, math.log(2.0) / 0.2])
    np.testing.assert_allclose(deltas, expected, rtol=1e-5, atol=1e-6)
    means = (0.1, -0.2, 0.3, 0.0)
    deltas = box_ops.encode_boxes(box, anchor, means, (1, 1, 1, 1)).numpy()[0]
    np.testing.assert_allclose(deltas, [0.1, 1.1, -0.3, math.log(2.0)], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "means, stds",
    [((0, 0, 0, 0), (1, 1, 1, 1)), ((0, 0, 0, 0), RCNN_STDS), ((0.1, 0, -0.1, 0.2), RCNN_STDS)],
)
def test_encode_decode_round_trip(means, stds):
    rng = np.random.default_rng(3)
    anchors = random_yxyx(rng, 64).reshape(4, 16, 4)
    boxes = random_yxyx(rng, 64).reshape(4, 16, 4)
    deltas = box_ops.encode_boxes(boxes, anchors, means, stds)
    decoded = box_ops.decode_boxes(deltas, anchors, means, stds).numpy()
    np.testing.assert_allclose(decoded, boxes, atol=1e-3)


def test_decode_clamps_log_size_deltas():
    anchor = tf.constant([[0.0, 0.0, 10.0, 20.0]])
    deltas = tf.constant([[0.0, 0.0, 50.0, -50.0]])
    boxes = box_ops.decode_boxes(deltas, anchor).numpy()[0]
    limit = 1000.0 / 16.0
    height, width = boxes[2] - boxes[0], boxes[3] - boxes[1]
    np.testing.assert_allclose([height, width], [10.0 * limit, 20.0 / limit], rtol=1e-5)
    np.testing.assert_allclose([(boxes[0] + boxes[2]) / 2, (boxes[1] + boxes[3]) / 2], [5, 10])
    # With the R-CNN stds the clamp applies after de-normalisation (0.2 * 50 = 10 > 4.135).
    boxes = box_ops.decode_boxes(deltas, anchor, (0, 0, 0, 0), RCNN_STDS).numpy()[0]
    np.testing.assert_allclose(boxes[2] - boxes[0], 10.0 * limit, rtol=1e-5)
    # A custom bound.
    boxes = box_ops.decode_boxes(deltas, anchor, max_ratio=math.log(2.0)).numpy()[0]
    np.testing.assert_allclose([boxes[2] - boxes[0], boxes[3] - boxes[1]], [20.0, 10.0], rtol=1e-5)


def test_clip_boxes_batched_image_shape_and_python_pair():
    boxes = tf.constant(
        [
            [[-5.0, -5.0, 50.0, 50.0], [10.0, 20.0, 30.0, 40.0]],
            [[-5.0, -5.0, 50.0, 50.0], [10.0, 20.0, 30.0, 40.0]],
        ]
    )
    clipped = box_ops.clip_boxes(boxes, tf.constant([[40.0, 45.0], [20.0, 30.0]])).numpy()
    np.testing.assert_allclose(clipped[0], [[0, 0, 40, 45], [10, 20, 30, 40]])
    np.testing.assert_allclose(clipped[1], [[0, 0, 20, 30], [10, 20, 20, 30]])
    clipped = box_ops.clip_boxes(boxes, (25, 35)).numpy()
    np.testing.assert_allclose(clipped[1], [[0, 0, 25, 35], [10, 20, 25, 35]])
