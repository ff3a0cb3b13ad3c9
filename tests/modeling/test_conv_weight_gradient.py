"""`Conv2D(weight_gradient_parts=P)`: in training the kernel's gradient is the sum of P
weight-gradient ops on slices of the batch. Checked against a weight gradient written here
in numpy (float64 loops over the window) and against Keras' own Conv2D; the ops the traced
gradient runs; where Keras' gradient stays (inference, a batch the parts do not divide);
bfloat16, XLA, the config, and SpineNet's stem."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from maskspine.graphs import graph_ops
from maskspine.modeling.layers import Conv2D


def _numpy_weight_gradient(x, dy, kernel_size: int, stride: int, padding: str) -> np.ndarray:
    """dL/dW of an NHWC convolution for the output gradient `dy`: the sum over images and
    output positions of the input window times dy, in float64. 'same' pads as TensorFlow:
    the total padding max((out - 1) * stride + k - in, 0), its smaller half before."""
    x = np.asarray(x, np.float64)
    dy = np.asarray(dy, np.float64)
    _, height, width, _ = x.shape
    _, out_h, out_w, _ = dy.shape
    if padding == "same":
        pad_h = max((out_h - 1) * stride + kernel_size - height, 0)
        pad_w = max((out_w - 1) * stride + kernel_size - width, 0)
        x = np.pad(
            x,
            ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)),
        )
    gradient = np.zeros((kernel_size, kernel_size, x.shape[-1], dy.shape[-1]))
    for i in range(kernel_size):
        for j in range(kernel_size):
            window = x[:, i : i + stride * out_h : stride, j : j + stride * out_w : stride, :]
            gradient[i, j] = np.einsum("nhwc,nhwo->co", window, dy)
    return gradient


def _layers(parts: int, stride: int, padding: str, use_bias: bool, activation, dtype="float32"):
    """Ours with `parts` and Keras' Conv2D, built on 9x9x3 inputs with the same weights."""
    options = dict(
        filters=5, kernel_size=3, strides=stride, padding=padding, use_bias=use_bias,
        activation=activation, dtype=dtype,
    )  # fmt: skip
    ours = Conv2D(weight_gradient_parts=parts, **options)
    theirs = keras.layers.Conv2D(**options)
    ours.build((None, 9, 9, 3))
    theirs.build((None, 9, 9, 3))
    rng = np.random.default_rng(1)
    for a, b in zip(ours.weights, theirs.weights):
        value = rng.normal(size=a.shape).astype("float32")
        a.assign(value)
        b.assign(value)
    return ours, theirs


def _gradients(layer, x, dy, training=True):
    """(outputs, d(sum(outputs * dy))/dx, the same by the kernel) in one tf.function."""

    @tf.function
    def run(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs = layer(x, training=training)
            loss = tf.reduce_sum(tf.cast(outputs, tf.float32) * dy)
        dx, dk = tape.gradient(loss, [x, layer.kernel])
        return outputs, dx, dk

    return run, [t.numpy() for t in run(x)]


@pytest.mark.parametrize(
    "stride,padding,use_bias,activation",
    [(1, "same", False, None), (2, "valid", False, None), (2, "same", True, "relu")],
)
def test_split_weight_gradient_equals_numpy_and_keras(stride, padding, use_bias, activation):
    ours, theirs = _layers(2, stride, padding, use_bias, activation)
    rng = np.random.default_rng(2)
    x = tf.constant(rng.normal(size=(4, 9, 9, 3)).astype("float32"))
    out_size = theirs.compute_output_shape((4, 9, 9, 3))
    dy = tf.constant(rng.normal(size=out_size).astype("float32"))
    run, (outputs, dx, dk) = _gradients(ours, x, dy)
    _, (outputs_keras, dx_keras, dk_keras) = _gradients(theirs, x, dy)

    np.testing.assert_array_equal(outputs, outputs_keras)  # the forward is Keras' own op
    np.testing.assert_allclose(dx, dx_keras, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dk, dk_keras, rtol=1e-5, atol=1e-5)
    if activation is None:  # with the ReLU, dy masked where the output is zero
        expected = _numpy_weight_gradient(x, dy, 3, stride, padding)
        np.testing.assert_allclose(dk, expected, rtol=1e-4, atol=1e-4)
    ops = graph_ops(run.get_concrete_function(x).graph)
    assert sum(op.type == "Conv2DBackpropFilter" for op in ops) == 2


def test_keras_gradient_where_the_parts_do_not_apply():
    """One weight-gradient op: a batch of 3 for 2 parts, one part, or no gradient taken in
    inference (the forward graph then has no gradient override at all)."""
    rng = np.random.default_rng(3)
    for parts, batch in ((2, 3), (1, 4)):
        ours, theirs = _layers(parts, 2, "valid", False, None)
        x = tf.constant(rng.normal(size=(batch, 9, 9, 3)).astype("float32"))
        dy = tf.ones(theirs.compute_output_shape((batch, 9, 9, 3)))
        run, (_, _, dk) = _gradients(ours, x, dy)
        _, (_, _, dk_keras) = _gradients(theirs, x, dy)
        np.testing.assert_allclose(dk, dk_keras, rtol=1e-5, atol=1e-5)
        ops = graph_ops(run.get_concrete_function(x).graph)
        assert sum(op.type == "Conv2DBackpropFilter" for op in ops) == 1
    ours, _ = _layers(2, 2, "valid", False, None)
    inference = tf.function(lambda x: ours(x, training=False))
    graph = inference.get_concrete_function(tf.TensorSpec((4, 9, 9, 3))).graph
    assert not any(op.type == "IdentityN" for op in graph_ops(graph))


def test_bfloat16_and_xla():
    """Under mixed_bfloat16 the kernel's gradient reaches the float32 variable; compiled by
    XLA it equals the graph's."""
    ours, theirs = _layers(2, 2, "valid", False, None, dtype="mixed_bfloat16")
    rng = np.random.default_rng(4)
    x = tf.constant(rng.normal(size=(4, 9, 9, 3)).astype("float32"))
    dy = tf.constant(rng.normal(size=(4, 4, 4, 5)).astype("float32"))
    _, (_, _, dk) = _gradients(ours, x, dy)
    _, (_, _, dk_keras) = _gradients(theirs, x, dy)
    assert dk.dtype == np.float32
    expected = _numpy_weight_gradient(
        tf.cast(tf.cast(x, tf.bfloat16), tf.float32), tf.cast(tf.cast(dy, tf.bfloat16), tf.float32),
        3, 2, "valid",
    )  # fmt: skip
    scale = np.abs(expected).max()
    np.testing.assert_allclose(dk / scale, expected / scale, atol=2e-2)
    np.testing.assert_allclose(dk / scale, dk_keras / scale, atol=2e-2)

    ours, _ = _layers(2, 1, "same", False, None)

    def gradient(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(ours(x, training=True) * tf.range(5, dtype=tf.float32))
        return tape.gradient(loss, ours.kernel)

    x = tf.constant(rng.normal(size=(4, 9, 9, 3)).astype("float32"))
    compiled = tf.function(gradient, jit_compile=True)(x).numpy()
    np.testing.assert_allclose(compiled, tf.function(gradient)(x).numpy(), rtol=1e-5, atol=1e-5)


def test_config_round_trip_and_checks():
    layer = Conv2D(4, 3, weight_gradient_parts=2)
    assert Conv2D.from_config(layer.get_config()).weight_gradient_parts == 2
    assert Conv2D.from_config(Conv2D(4, 3).get_config()).weight_gradient_parts == 1
    with pytest.raises(ValueError, match="weight_gradient_parts must be >= 1"):
        Conv2D(4, 3, weight_gradient_parts=0)


def test_spinenet_stem_splits_its_weight_gradient_and_no_other_conv():
    from maskspine.modeling.spinenet import build_spinenet

    backbone = build_spinenet("49S", (128, 128, 3), filter_size_scale=0.125)
    split = [
        layer.name
        for layer in backbone.layers
        if isinstance(layer, Conv2D) and layer.weight_gradient_parts > 1
    ]
    assert split == ["stem_conv"]
