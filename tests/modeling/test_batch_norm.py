"""maskspine's BatchNormalization (TensorFlow's fused kernel) against Keras' own layer with
the same weights: outputs, moving statistics and gradients, in training, inference and
frozen, in float32 and under the mixed bfloat16 policy, compiled by XLA too, and Keras' path
where the kernel does not apply."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from maskspine.modeling.layers import BatchNormalization


def _pair(shape, epsilon=1e-3, momentum=0.9, **kwargs):
    """Ours and Keras' layer, built on `shape`, with the same random gamma, beta and moving
    statistics."""
    ours = BatchNormalization(epsilon=epsilon, momentum=momentum, **kwargs)
    theirs = keras.layers.BatchNormalization(epsilon=epsilon, momentum=momentum, **kwargs)
    rng = np.random.default_rng(0)
    for layer in (ours, theirs):
        layer.build(shape)
    for a, b in zip(ours.weights, theirs.weights):
        value = rng.uniform(0.5, 1.5, a.shape).astype("float32")
        a.assign(value)
        b.assign(value)
    return ours, theirs


def _step(layer, x, training=True, jit_compile=False):
    """Output, gradients of a weighted sum with respect to x, gamma and beta, moving
    statistics after the call."""
    weights = tf.random.stateless_normal(x.shape, seed=[1, 2])

    @tf.function(jit_compile=jit_compile)
    def run(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=training)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * weights)
        grads = tape.gradient(loss, [x] + [w for w in (layer.gamma, layer.beta) if w is not None])
        return y, grads

    y, grads = run(x)
    return (
        np.asarray(tf.cast(y, tf.float32)),
        [np.asarray(tf.cast(g, tf.float32)) for g in grads],
        np.asarray(layer.moving_mean),
        np.asarray(layer.moving_variance),
    )


@pytest.mark.parametrize("shape", [(2, 9, 7, 16), (512, 7, 7, 8), (1, 1, 1, 4), (3, 2, 2, 5)])
def test_training_call_equals_keras(shape):
    x = tf.random.stateless_normal(shape, seed=[3, 4]) * 3.0 + 1.5
    ours, theirs = _pair(shape)
    got, want = _step(ours, x), _step(theirs, x)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=2e-5)  # outputs
    for g, w in zip(got[1], want[1]):  # gradients: x, gamma, beta
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * np.abs(w).max())
    np.testing.assert_allclose(got[2], want[2], rtol=1e-5, atol=1e-6)  # moving mean
    np.testing.assert_allclose(got[3], want[3], rtol=1e-5, atol=1e-6)  # moving variance


def test_the_fused_kernel_runs_in_training_and_inference():
    ours, _ = _pair((2, 4, 4, 3))
    x = tf.zeros((2, 4, 4, 3))
    for training in (True, False):
        graph = tf.function(lambda x, t=training: ours(x, training=t)).get_concrete_function(x)
        types = {op.type for op in graph.graph.get_operations()}
        assert "FusedBatchNormV3" in types, types
        assert "Mean" not in types and "Rsqrt" not in types, types


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_inference_and_frozen_calls_equal_keras(dtype):
    shape = (3, 10, 6, 8)
    x = tf.random.stateless_normal(shape, seed=[13, 14]) * 2.0 + 0.5
    ours, theirs = _pair(shape, dtype=dtype)
    if dtype == "mixed_bfloat16":
        x = tf.cast(x, tf.bfloat16)
    tolerance = {"rtol": 1e-4, "atol": 2e-5} if dtype == "float32" else {"rtol": 1e-2, "atol": 2e-2}
    got, want = _step(ours, x, training=False), _step(theirs, x, training=False)
    np.testing.assert_allclose(got[0], want[0], **tolerance)
    for layer in (ours, theirs):  # frozen: training, but the moving statistics are used
        layer.trainable = False
    got, want = _step(ours, x), _step(theirs, x)
    np.testing.assert_allclose(got[0], want[0], **tolerance)
    np.testing.assert_allclose(got[1][0], want[1][0], **tolerance)  # the gradient of x
    np.testing.assert_allclose(got[2], want[2])  # the moving statistics did not move
    np.testing.assert_allclose(got[3], want[3])


@pytest.mark.parametrize("static", [True, False], ids=["static-shape", "unknown-shape"])
@pytest.mark.parametrize("shape", [(2, 3, 3, 4), (1, 1, 1, 4)])
def test_moving_variance_is_the_biased_batch_variance(shape, static):
    """The kernel's unbiased variance is turned into the biased one from the static shape
    where the trace knows it and from the tensor's shape where it does not (a batch of
    unknown size): both against numpy's population variance over N, H, W (0 for one value
    per channel)."""
    x = np.random.default_rng(5).normal(2.0, 3.0, shape).astype("float32")
    layer = BatchNormalization(momentum=0.0, epsilon=1e-3)
    layer.build(shape)
    call = tf.function(
        lambda x: layer(x, training=True),
        input_signature=[tf.TensorSpec(shape if static else [None, None, None, 4])],
    )
    call(tf.constant(x))
    np.testing.assert_allclose(layer.moving_mean, x.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(layer.moving_variance, x.var(axis=(0, 1, 2)), rtol=1e-5)
    normalised = (x - x.mean(axis=(0, 1, 2))) / np.sqrt(x.var(axis=(0, 1, 2)) + 1e-3)
    layer.moving_mean.assign(np.zeros(4))  # the output uses the batch's statistics
    y = layer(tf.constant(x), training=True)
    np.testing.assert_allclose(y, normalised, rtol=1e-4, atol=1e-5)


def test_bfloat16_policy_equals_keras():
    shape = (4, 8, 8, 16)
    x = tf.cast(tf.random.stateless_normal(shape, seed=[7, 8]), tf.bfloat16)
    ours, theirs = _pair(shape, dtype="mixed_bfloat16")
    got, want = _step(ours, x), _step(theirs, x)
    assert ours(x, training=True).dtype == tf.bfloat16
    # both normalise in float32 and round the output to bfloat16 (8 bits of mantissa)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-2, atol=1e-2)
    for g, w in zip(got[1], want[1]):
        np.testing.assert_allclose(g, w, rtol=2e-2, atol=2e-2 * np.abs(w).max())
    np.testing.assert_allclose(got[2], want[2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[3], want[3], rtol=1e-5, atol=1e-6)


def test_compiled_by_xla_equals_keras():
    shape = (2, 6, 6, 8)
    x = tf.random.stateless_normal(shape, seed=[9, 10])
    ours, theirs = _pair(shape)
    got, want = _step(ours, x, jit_compile=True), _step(theirs, x)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=2e-5)
    for g, w in zip(got[1], want[1]):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * np.abs(w).max())
    np.testing.assert_allclose(got[3], want[3], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "shape, kwargs",
    [((2, 5, 3), {}), ((2, 4, 4, 3), {"epsilon": 1e-6}), ((2, 4, 4, 3), {"center": False})],
)
def test_where_the_kernel_does_not_apply_the_layer_is_keras(shape, kwargs):
    x = tf.random.stateless_normal(shape, seed=[11, 12])
    ours, theirs = _pair(shape, **kwargs)
    got, want = _step(ours, x), _step(theirs, x)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(got[3], want[3], rtol=1e-5, atol=1e-6)


def test_config_round_trip():
    layer = BatchNormalization(momentum=0.97, epsilon=1e-4, name="bn")
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(again) is BatchNormalization
    assert again.get_config() == layer.get_config()


@pytest.mark.parametrize("jit_compile, fused", [("false", True), ("true", False)])
def test_the_factory_leaves_batch_norm_to_xla_when_compiled(jit_compile, fused):
    from model_fixtures import REPO, TINY_OVERRIDES

    from maskspine.config import load_config
    from maskspine.modeling.factory import _sublayers, build_mask_rcnn

    config = load_config(
        f"{REPO}/configs/mask_rcnn_49_640.yaml", [*TINY_OVERRIDES, f"jit_compile={jit_compile}"]
    )
    model = build_mask_rcnn(config)
    norms = [
        layer
        for part in (model.backbone, model.rpn_head, model.box_head, model.mask_head)
        for layer in _sublayers(part)
        if isinstance(layer, BatchNormalization)
    ]
    assert len(norms) > 10
    assert {layer.fused for layer in norms} == {fused}
