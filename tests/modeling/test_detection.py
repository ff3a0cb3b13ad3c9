"""Proposal generation and final detection NMS against per-class / per-level
`tf.image.non_max_suppression` and a numpy box decoder written here."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from maskspine.modeling.detection import detect_boxes
from maskspine.modeling.rpn import generate_proposals

MAX_RATIO = abs(np.log(16 / 1000))


def decode_numpy(deltas, anchors, means, stds, max_ratio=MAX_RATIO):
    """mmdetection's delta2bbox in yxyx order, written independently for the tests."""
    d = deltas * np.asarray(stds) + np.asarray(means)
    ah, aw = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    acy, acx = anchors[..., 0] + 0.5 * ah, anchors[..., 1] + 0.5 * aw
    dh, dw = np.clip(d[..., 2], -max_ratio, max_ratio), np.clip(d[..., 3], -max_ratio, max_ratio)
    cy, cx = acy + d[..., 0] * ah, acx + d[..., 1] * aw
    h, w = ah * np.exp(dh), aw * np.exp(dw)
    return np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1)


def clip_numpy(boxes, height, width):
    out = boxes.copy()
    out[..., [0, 2]] = np.clip(out[..., [0, 2]], 0, height)
    out[..., [1, 3]] = np.clip(out[..., [1, 3]], 0, width)
    return out


def random_boxes(rng, n, size):
    y1, x1 = rng.uniform(0, size * 0.8, (2, n))
    h, w = rng.uniform(4, size * 0.4, (2, n))
    return np.stack([y1, x1, np.minimum(y1 + h, size), np.minimum(x1 + w, size)], -1).astype(
        np.float32
    )


def test_detect_boxes_matches_per_class_nms():
    rng = np.random.RandomState(0)
    batch, n, classes, size = 2, 40, 4, 100.0
    means, stds = [0.0, 0.0, 0.0, 0.0], [0.1, 0.1, 0.2, 0.2]
    proposals = np.stack([random_boxes(rng, n, size) for _ in range(batch)])
    # clusters of overlapping proposals so NMS has work to do
    proposals[:, n // 2 :] = proposals[:, : n // 2] + rng.uniform(-3, 3, (batch, n // 2, 4))
    logits = rng.normal(0, 2, (batch, n, classes)).astype(np.float32)
    deltas = rng.normal(0, 0.5, (batch, n, classes, 4)).astype(np.float32)
    valid = np.ones((batch, n), bool)
    valid[1, -5:] = False
    image_shape = np.array([[size, size], [80.0, 90.0]], np.float32)
    score_thr, iou_thr, max_per_img = 0.1, 0.5, 15

    got = detect_boxes(
        logits,
        deltas,
        proposals,
        valid,
        image_shape,
        means=means,
        stds=stds,
        score_thr=score_thr,
        iou_threshold=iou_thr,
        max_per_img=max_per_img,
    )

    exp_scores = np.exp(logits - logits.max(-1, keepdims=True))
    exp_scores /= exp_scores.sum(-1, keepdims=True)
    for b in range(batch):
        candidates = []
        for c in range(1, classes):
            boxes = clip_numpy(
                decode_numpy(deltas[b, :, c], proposals[b], means, stds), *image_shape[b]
            )
            scores = np.where(valid[b], exp_scores[b, :, c], 0.0).astype(np.float32)
            keep = tf.image.non_max_suppression(
                boxes, scores, max_per_img, iou_threshold=iou_thr, score_threshold=score_thr
            ).numpy()
            candidates += [(scores[i], c, boxes[i]) for i in keep]
        candidates.sort(key=lambda t: -t[0])
        candidates = candidates[:max_per_img]
        count = int(got["num_detections"][b])
        assert count == len(candidates)
        np.testing.assert_allclose(
            got["detection_scores"][b, :count], [t[0] for t in candidates], atol=1e-5
        )
        np.testing.assert_array_equal(
            got["detection_classes"][b, :count], [t[1] for t in candidates]
        )
        np.testing.assert_allclose(
            got["detection_boxes"][b, :count], [t[2] for t in candidates], atol=1e-3
        )
        assert (got["detection_classes"][b, count:].numpy() == 0).all()


def test_generate_proposals_matches_per_level_nms():
    rng = np.random.RandomState(1)
    batch, size = 2, 128.0
    counts = {3: 60, 4: 30, 5: 12}
    anchors = {level: random_boxes(rng, k, size) for level, k in counts.items()}
    logits = {level: rng.normal(0, 2, (batch, k)).astype(np.float32) for level, k in counts.items()}
    deltas = {
        level: rng.normal(0, 0.3, (batch, k, 4)).astype(np.float32) for level, k in counts.items()
    }
    # a few degenerate boxes that the size filter must drop
    deltas[3][:, :5, 2] = -20.0
    image_shape = np.array([[size, size], [100.0, 120.0]], np.float32)
    means, stds = [0.0] * 4, [1.0] * 4
    nms_pre, max_per_img, iou_thr, min_size = 20, 25, 0.6, 1.0

    boxes, scores, valid = generate_proposals(
        logits,
        deltas,
        anchors,
        image_shape,
        nms_pre=nms_pre,
        max_per_img=max_per_img,
        iou_threshold=iou_thr,
        min_bbox_size=min_size,
        means=means,
        stds=stds,
    )
    for b in range(batch):
        candidates = []
        for level in counts:
            top = np.argsort(-logits[level][b], kind="stable")[:nms_pre]
            decoded = decode_numpy(deltas[level][b, top], anchors[level][top], means, stds)
            decoded = clip_numpy(decoded, *image_shape[b]).astype(np.float32)
            sigmoid = 1 / (1 + np.exp(-logits[level][b, top]))
            ok = ((decoded[:, 2] - decoded[:, 0]) > min_size) & (
                (decoded[:, 3] - decoded[:, 1]) > min_size
            )
            decoded, sigmoid = decoded[ok], sigmoid[ok].astype(np.float32)
            keep = tf.image.non_max_suppression(
                decoded, sigmoid, max_per_img, iou_threshold=iou_thr
            ).numpy()
            candidates += [(sigmoid[i], decoded[i]) for i in keep]
        candidates.sort(key=lambda t: -t[0])
        candidates = candidates[:max_per_img]
        count = int(np.sum(valid[b]))
        assert count == len(candidates)
        np.testing.assert_allclose(scores[b, :count], [t[0] for t in candidates], atol=1e-5)
        np.testing.assert_allclose(boxes[b, :count], [t[1] for t in candidates], atol=1e-3)
