"""Losses against numpy transcriptions of mmdetection's definitions."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from maskspine.modeling.losses import mask_loss, rcnn_losses, rpn_losses, smooth_l1

# --- independent references (float64 numpy) --------------------------------------------------


def _np_smooth_l1(diff, beta):
    diff = np.abs(np.asarray(diff, np.float64))
    if beta == 0:
        return diff
    return np.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta)


def _np_sigmoid_bce(logits, labels):
    """-z log(sigmoid(x)) - (1 - z) log(1 - sigmoid(x)), computed naively in float64."""
    logits = np.asarray(logits, np.float64)
    p = 1.0 / (1.0 + np.exp(-logits))
    return -(labels * np.log(p) + (1 - labels) * np.log(1 - p))


def _np_rpn(logits, deltas, targets, beta, cls_weight, box_weight):
    samples = max(targets["objectness_weight"].sum(), 1.0)
    cls = (_np_sigmoid_bce(logits, targets["objectness"]) * targets["objectness_weight"]).sum()
    box = 0.0
    for b, a in zip(*np.nonzero(targets["box_weight"]), strict=True):
        box += _np_smooth_l1(deltas[b, a] - targets["box_deltas"][b, a], beta).sum()
    return cls_weight * cls / samples, box_weight * box / samples


def _np_rcnn(logits, deltas, classes, box_targets, positive, valid, beta, cls_weight, box_weight):
    num_valid = max(valid.sum(), 1.0)
    cls = box = 0.0
    for b in range(logits.shape[0]):
        for s in range(logits.shape[1]):
            if not valid[b, s]:
                continue
            row = logits[b, s].astype(np.float64)
            log_softmax = row - row.max() - np.log(np.exp(row - row.max()).sum())
            cls -= log_softmax[classes[b, s]]
            if positive[b, s]:
                pred = deltas[b, s, classes[b, s]] if deltas.ndim == 4 else deltas[b, s]
                box += _np_smooth_l1(pred - box_targets[b, s], beta).sum()
    return cls_weight * cls / num_valid, box_weight * box / num_valid


def _np_mask(logits, targets, classes, positive, weight):
    total, pixels = 0.0, 0
    for b, k in zip(*np.nonzero(positive), strict=True):
        channel = 0 if logits.shape[-1] == 1 else classes[b, k]
        total += _np_sigmoid_bce(logits[b, k, :, :, channel], targets[b, k]).sum()
        pixels += targets[b, k].size
    return weight * total / pixels if pixels else 0.0


def _picked(logits, classes, positive):
    """[B, K, M, M]: each RoI's class channel of all-class logits (what the mask head
    computes for the loss), channel 0 for RoIs that are not positive."""
    channel = np.where(positive, classes, 0) if logits.shape[-1] > 1 else np.zeros_like(classes)
    return np.take_along_axis(logits, channel[:, :, None, None, None], axis=-1)[..., 0]


# --- random inputs ---------------------------------------------------------------------------


def _rpn_inputs(rng, batch=2, anchors=60, num_positive=7, num_negative=20):
    logits = rng.normal(scale=2.0, size=(batch, anchors)).astype(np.float32)
    deltas = rng.normal(size=(batch, anchors, 4)).astype(np.float32)
    objectness = np.zeros((batch, anchors), np.float32)
    sampled = np.zeros((batch, anchors), np.float32)
    for b in range(batch):
        order = rng.permutation(anchors)
        objectness[b, order[:num_positive]] = 1
        sampled[b, order[: num_positive + num_negative]] = 1
    targets = {
        "objectness": objectness,
        "objectness_weight": sampled,
        # Targets near the predictions so that both branches of smooth L1 are used.
        "box_deltas": (
            deltas + rng.normal(scale=0.2, size=deltas.shape) * objectness[..., None]
        ).astype(np.float32)
        * objectness[..., None],
        "box_weight": objectness * sampled,
    }
    return logits, deltas, targets


def _rcnn_inputs(rng, batch=2, rois=16, num_classes=5, agnostic=False, num_positive=4):
    logits = rng.normal(scale=2.0, size=(batch, rois, num_classes)).astype(np.float32)
    shape = (batch, rois, 4) if agnostic else (batch, rois, num_classes, 4)
    deltas = rng.normal(size=shape).astype(np.float32)
    valid = np.ones((batch, rois), bool)
    valid[1, -5:] = False  # padding RoIs of the second image
    positive = np.zeros((batch, rois), bool)
    positive[:, :num_positive] = True
    classes = np.where(positive, rng.integers(1, num_classes, size=(batch, rois)), 0)
    classes = np.where(valid, classes, -1).astype(np.int32)  # garbage in padding
    box_targets = (rng.normal(scale=0.7, size=(batch, rois, 4)) * positive[..., None]).astype(
        np.float32
    )
    return logits, deltas, classes, box_targets, positive.astype(np.float32), valid


def _mask_inputs(rng, batch=2, rois=5, size=28, num_classes=4, num_positive=3):
    logits = rng.normal(scale=3.0, size=(batch, rois, size, size, num_classes)).astype(np.float32)
    targets = (rng.uniform(size=(batch, rois, size, size)) > 0.6).astype(np.float32)
    positive = np.zeros((batch, rois), bool)
    positive[0, :num_positive] = True
    positive[1, 1:num_positive] = True
    # A class-agnostic head (one channel) still gets the RoIs' real classes.
    classes = np.where(
        positive, rng.integers(1, num_classes if num_classes > 1 else 5, size=(batch, rois)), 0
    )
    return logits, targets, classes.astype(np.int32), positive


# --- smooth L1 -------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [1.0 / 9.0, 1.0, 0.0])
def test_smooth_l1_matches_numpy(beta):
    diff = np.linspace(-2.0, 2.0, 101).astype(np.float32)
    np.testing.assert_allclose(
        smooth_l1(tf.constant(diff), beta).numpy(), _np_smooth_l1(diff, beta), rtol=1e-6, atol=1e-7
    )


def test_smooth_l1_hand_values():
    out = smooth_l1(tf.constant([0.05, -1.0, 0.0]), 0.1).numpy()
    np.testing.assert_allclose(out, [0.5 * 0.05**2 / 0.1, 1.0 - 0.05, 0.0], rtol=1e-6)


# --- RPN -------------------------------------------------------------------------------------


def test_rpn_losses_match_numpy():
    rng = np.random.default_rng(0)
    logits, deltas, targets = _rpn_inputs(rng)
    out = rpn_losses(
        tf.constant(logits),
        tf.constant(deltas),
        {k: tf.constant(v) for k, v in targets.items()},
        beta=1.0 / 9.0,
        cls_weight=1.0,
        box_weight=2.0,
    )
    cls, box = _np_rpn(logits, deltas, targets, 1.0 / 9.0, 1.0, 2.0)
    assert out["rpn_cls_loss"].dtype == tf.float32 and out["rpn_cls_loss"].shape == ()
    np.testing.assert_allclose(out["rpn_cls_loss"].numpy(), cls, rtol=1e-5)
    np.testing.assert_allclose(out["rpn_box_loss"].numpy(), box, rtol=1e-5)


def test_rpn_losses_normalise_over_the_whole_batch():
    # Image 0 samples 4 anchors, image 1 samples 1: the normaliser is 5, not a mean of means.
    logits = tf.zeros([2, 4])
    targets = {
        "objectness": tf.zeros([2, 4]),
        "objectness_weight": tf.constant([[1.0, 1, 1, 1], [1, 0, 0, 0]]),
        "box_deltas": tf.zeros([2, 4, 4]),
        "box_weight": tf.zeros([2, 4]),
    }
    out = rpn_losses(logits, tf.zeros([2, 4, 4]), targets, beta=1.0)
    np.testing.assert_allclose(out["rpn_cls_loss"].numpy(), np.log(2.0), rtol=1e-6)


# --- R-CNN -----------------------------------------------------------------------------------


@pytest.mark.parametrize("agnostic", [False, True])
def test_rcnn_losses_match_numpy(agnostic):
    rng = np.random.default_rng(1)
    logits, deltas, classes, box_targets, positive, valid = _rcnn_inputs(rng, agnostic=agnostic)
    out = rcnn_losses(
        tf.constant(logits),
        tf.constant(deltas),
        tf.constant(classes),
        tf.constant(box_targets),
        tf.constant(positive),
        tf.constant(valid),
        beta=1.0,
        cls_weight=1.5,
        box_weight=1.0,
    )
    cls, box = _np_rcnn(logits, deltas, classes, box_targets, positive, valid, 1.0, 1.5, 1.0)
    np.testing.assert_allclose(out["rcnn_cls_loss"].numpy(), cls, rtol=1e-5)
    np.testing.assert_allclose(out["rcnn_box_loss"].numpy(), box, rtol=1e-5)


# --- mask ------------------------------------------------------------------------------------


def test_mask_loss_matches_numpy():
    rng = np.random.default_rng(2)
    logits, targets, classes, positive = _mask_inputs(rng)
    out = mask_loss(
        tf.constant(_picked(logits, classes, positive)), tf.constant(targets), tf.constant(positive)
    )
    np.testing.assert_allclose(
        out["mask_loss"].numpy(), _np_mask(logits, targets, classes, positive, 1.0), rtol=1e-5
    )


def test_mask_loss_class_agnostic_and_uint8_targets():
    rng = np.random.default_rng(3)
    logits, targets, classes, positive = _mask_inputs(rng, num_classes=1)
    out = mask_loss(
        tf.constant(_picked(logits, classes, positive)),
        tf.constant(targets.astype(np.uint8)),
        tf.constant(positive),
        weight=0.5,
    )
    np.testing.assert_allclose(
        out["mask_loss"].numpy(), _np_mask(logits, targets, classes, positive, 0.5), rtol=1e-5
    )


# --- edge cases, weights, precision, gradients, tf.function ----------------------------------


def _all_losses(rng, *, num_positive, weights=(1.0, 1.0, 1.0, 1.0, 1.0), dtype=tf.float32):
    logits, deltas, targets = _rpn_inputs(rng, num_positive=num_positive)
    r_logits, r_deltas, classes, box_targets, positive, valid = _rcnn_inputs(
        rng, num_positive=num_positive
    )
    m_logits, m_targets, m_classes, m_positive = _mask_inputs(rng, num_positive=num_positive)
    m_logits = _picked(m_logits, m_classes, m_positive)
    variables = [
        tf.Variable(tf.cast(x, dtype)) for x in (logits, deltas, r_logits, r_deltas, m_logits)
    ]

    def compute():
        out = rpn_losses(
            variables[0],
            variables[1],
            {k: tf.constant(v) for k, v in targets.items()},
            beta=1.0 / 9.0,
            cls_weight=weights[0],
            box_weight=weights[1],
        )
        out.update(
            rcnn_losses(
                variables[2],
                variables[3],
                tf.constant(classes),
                tf.constant(box_targets),
                tf.constant(positive),
                tf.constant(valid),
                beta=1.0,
                cls_weight=weights[2],
                box_weight=weights[3],
            )
        )
        out.update(
            mask_loss(
                variables[4],
                tf.constant(m_targets),
                tf.constant(m_positive),
                weight=weights[4],
            )
        )
        return out

    return compute, variables


def test_zero_positives_give_finite_losses_and_zero_box_and_mask_losses():
    compute, variables = _all_losses(np.random.default_rng(4), num_positive=0)
    with tf.GradientTape() as tape:
        out = compute()
        total = tf.add_n(list(out.values()))
    for name, value in out.items():
        assert np.isfinite(value.numpy()), name
    for name in ("rpn_box_loss", "rcnn_box_loss", "mask_loss"):
        assert out[name].numpy() == 0.0, name
    assert out["rpn_cls_loss"].numpy() > 0 and out["rcnn_cls_loss"].numpy() > 0
    for grad in tape.gradient(total, variables):
        assert np.isfinite(grad.numpy()).all()


def test_nothing_sampled_gives_zero_not_nan():
    out = rpn_losses(
        tf.zeros([1, 3]),
        tf.zeros([1, 3, 4]),
        {
            "objectness": tf.zeros([1, 3]),
            "objectness_weight": tf.zeros([1, 3]),
            "box_deltas": tf.zeros([1, 3, 4]),
            "box_weight": tf.zeros([1, 3]),
        },
        beta=1.0,
    )
    out.update(
        rcnn_losses(
            tf.zeros([1, 2, 3]),
            tf.zeros([1, 2, 3, 4]),
            -tf.ones([1, 2], tf.int32),
            tf.zeros([1, 2, 4]),
            tf.zeros([1, 2]),
            tf.zeros([1, 2], tf.bool),
            beta=1.0,
        )
    )
    assert all(v.numpy() == 0.0 for v in out.values()), out


def test_loss_weights_scale_linearly():
    base, _ = _all_losses(np.random.default_rng(5), num_positive=3)
    weights = (2.0, 0.5, 3.0, 0.25, 4.0)
    scaled, _ = _all_losses(np.random.default_rng(5), num_positive=3, weights=weights)
    base_out, scaled_out = base(), scaled()
    names = ["rpn_cls_loss", "rpn_box_loss", "rcnn_cls_loss", "rcnn_box_loss", "mask_loss"]
    for name, weight in zip(names, weights, strict=True):
        assert base_out[name].numpy() > 0
        np.testing.assert_allclose(
            scaled_out[name].numpy(), weight * base_out[name].numpy(), rtol=1e-6
        )


def test_gradients_are_finite_with_extreme_logits():
    compute, variables = _all_losses(np.random.default_rng(6), num_positive=3)
    for v in variables:
        v.assign(v * 100.0)
    with tf.GradientTape() as tape:
        out = compute()
        total = tf.add_n(list(out.values()))
    assert np.isfinite(total.numpy())
    grads = tape.gradient(total, variables)
    for grad in grads:
        assert np.isfinite(grad.numpy()).all()
        assert np.abs(grad.numpy()).sum() > 0


def test_half_precision_inputs_give_float32_losses():
    out32 = _all_losses(np.random.default_rng(7), num_positive=3)[0]()
    out16 = _all_losses(np.random.default_rng(7), num_positive=3, dtype=tf.float16)[0]()
    for name, value in out16.items():
        assert value.dtype == tf.float32, name
        np.testing.assert_allclose(value.numpy(), out32[name].numpy(), rtol=5e-3, atol=1e-3)


def test_losses_in_tf_function_match_eager():
    compute, _ = _all_losses(np.random.default_rng(8), num_positive=3)
    eager = compute()
    graph = tf.function(compute)()
    for name, value in eager.items():
        assert graph[name].shape == ()
        np.testing.assert_allclose(graph[name].numpy(), value.numpy(), rtol=1e-6)
