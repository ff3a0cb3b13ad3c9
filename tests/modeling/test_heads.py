"""The R-CNN heads against numpy forward passes computed from their weights (3x3 convs,
inference BatchNorm, the 2x transposed conv, FCs, the mask head's one class pick)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from maskspine.modeling.heads import BoxHead, MaskHead

EPSILON = 1e-3


def randomize(head, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random values in every weight (BatchNorm variances positive); {path: value}."""
    values = {}
    for weight in head.weights:
        if weight.path.endswith("moving_variance"):
            value = rng.uniform(0.5, 1.5, size=weight.shape)
        else:
            value = rng.normal(size=weight.shape)
        weight.assign(value.astype(np.float32))
        values[weight.path] = weight.numpy()
    return values


def conv3x3_same(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """[N, H, W, C] x [3, 3, C, O] -> [N, H, W, O], stride 1, one zero of padding."""
    n, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((n, h, w, kernel.shape[-1]))
    for dy in range(3):
        for dx in range(3):
            out += padded[:, dy : dy + h, dx : dx + w, :] @ kernel[dy, dx]
    return out


def batch_norm(x: np.ndarray, weights: dict, name: str) -> np.ndarray:
    """Inference BatchNorm with the moving statistics of layer `name`."""
    gamma, beta = weights[f"{name}/gamma"], weights[f"{name}/beta"]
    mean, variance = weights[f"{name}/moving_mean"], weights[f"{name}/moving_variance"]
    return gamma * (x - mean) / np.sqrt(variance + EPSILON) + beta


def transposed_conv2x2(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Stride-2 2x2 transposed conv: input pixel (i, j) writes output pixels
    (2i + a, 2j + b) = x[i, j] @ kernel[a, b]; kernel [2, 2, O, C] (Keras' layout)."""
    n, h, w, _ = x.shape
    out = np.zeros((n, 2 * h, 2 * w, kernel.shape[2]))
    for a in range(2):
        for b in range(2):
            out[:, a::2, b::2, :] = x @ kernel[a, b].T
    return out + bias


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


@pytest.mark.parametrize(
    ("num_classes", "conv_bias", "deconv_norm"),
    [(5, False, False), (1, False, False), (5, True, True)],
    ids=["classes", "class-agnostic", "conv-bias-deconv-norm"],
)
def test_mask_head_against_numpy(num_classes, conv_bias, deconv_norm):
    head = MaskHead(num_classes, num_convs=2, conv_out_channels=8, conv_bias=conv_bias,
                    deconv_norm=deconv_norm, norm_epsilon=EPSILON, name="mask_head")  # fmt: skip
    head.build((None, None, 6, 6, 4))
    rng = np.random.default_rng(0)
    weights = randomize(head, rng)
    features = rng.normal(size=(2, 3, 6, 6, 4)).astype(np.float32)
    classes = np.array([[0, 4, 2], [1, 3, -1]])  # -1: padding, takes channel 0
    got = head(tf.constant(features), tf.constant(classes), training=False).numpy()
    assert got.shape == (2, 3, 12, 12) and np.isfinite(got).all()

    w = {k.removeprefix("mask_head/"): v for k, v in weights.items()}
    x = features.reshape(6, 6, 6, 4).astype(np.float64)
    for i in (1, 2):
        x = conv3x3_same(x, w[f"mask_head_conv{i}/kernel"])
        if conv_bias:
            x = x + w[f"mask_head_conv{i}/bias"]
        x = relu(batch_norm(x, w, f"mask_head_bn{i}"))
    x = transposed_conv2x2(x, w["mask_head_deconv/kernel"], w["mask_head_deconv/bias"])
    x = relu(batch_norm(x, w, "mask_head_deconv_bn") if deconv_norm else x)
    every_class = x @ w["mask_head_logits/kernel"][0, 0] + w["mask_head_logits/bias"]
    channel = np.maximum(classes, 0).reshape(-1) if num_classes > 1 else np.zeros(6, int)
    expected = every_class[np.arange(6), :, :, channel].reshape(2, 3, 12, 12)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(
    ("reg_class_agnostic", "fc_norm"), [(False, False), (True, True)], ids=["plain", "fc-norm"]
)
def test_box_head_against_numpy(reg_class_agnostic, fc_norm):
    head = BoxHead(4, num_shared_convs=1, conv_out_channels=8, fc_out_channels=16,
                   reg_class_agnostic=reg_class_agnostic, fc_norm=fc_norm,
                   norm_epsilon=EPSILON, name="box_head")  # fmt: skip
    head.build((None, None, 5, 5, 3))
    rng = np.random.default_rng(1)
    weights = randomize(head, rng)
    features = rng.normal(size=(2, 3, 5, 5, 3)).astype(np.float32)
    logits, deltas = head(tf.constant(features), training=False)
    boxes = 1 if reg_class_agnostic else 4
    assert logits.shape == (2, 3, 4) and deltas.shape == (2, 3, boxes, 4)
    assert np.isfinite(logits.numpy()).all() and np.isfinite(deltas.numpy()).all()

    w = {k.removeprefix("box_head/"): v for k, v in weights.items()}
    x = features.reshape(6, 5, 5, 3).astype(np.float64)
    x = relu(batch_norm(conv3x3_same(x, w["box_head_conv1/kernel"]), w, "box_head_bn1"))
    x = x.reshape(6, -1) @ w["box_head_fc1/kernel"] + w["box_head_fc1/bias"]  # H, W, C order
    x = relu(batch_norm(x, w, "box_head_fc1_bn") if fc_norm else x)
    expected_logits = x @ w["box_head_class_logits/kernel"] + w["box_head_class_logits/bias"]
    expected_deltas = x @ w["box_head_box_deltas/kernel"] + w["box_head_box_deltas/bias"]
    np.testing.assert_allclose(logits.numpy(), expected_logits.reshape(2, 3, 4), rtol=1e-4,
                               atol=1e-3)  # fmt: skip
    np.testing.assert_allclose(deltas.numpy(), expected_deltas.reshape(2, 3, boxes, 4),
                               rtol=1e-4, atol=1e-3)  # fmt: skip
