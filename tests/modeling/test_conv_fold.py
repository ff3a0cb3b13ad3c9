"""A BatchNormalization folded into the Conv2D before it (`fold_batch_norm`) in inference:
outputs against the convolution and normalisation written here in numpy, the ops the traced
graph runs, where folding does not apply, a model reading the convolution's own output, a
`.keras` file loaded again, and weights files shared with Keras' Conv2D."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from maskspine.graphs import graph_ops
from maskspine.modeling.layers import BatchNormalization, Conv2D, fold_batch_norm

EPSILON = 1e-3


def _conv_bn(dtype: str, use_bias: bool = False, fold: bool = True, trainable: bool = True):
    """x -> Conv2D(3x3, 6 filters) -> BatchNormalization -> ReLU with random moving
    statistics, gamma and beta."""
    inputs = keras.Input((8, 8, 4))
    conv = Conv2D(6, 3, padding="same", use_bias=use_bias, dtype=dtype, name="conv")
    norm = BatchNormalization(epsilon=EPSILON, dtype=dtype, name="bn")
    outputs = keras.layers.ReLU(dtype=dtype)(norm(conv(inputs)))
    model = keras.Model(inputs, outputs)
    assert norm.folded  # linked by the call on the conv's output
    norm.folded = fold
    rng = np.random.default_rng(0)
    for weight in model.weights:
        low, high = (0.2, 2.0) if "variance" in weight.path or "gamma" in weight.path else (-1, 1)
        weight.assign(rng.uniform(low, high, weight.shape).astype("float32"))
    norm.trainable = trainable
    return model, conv, norm


def _numpy_reference(x: np.ndarray, conv: Conv2D, norm: BatchNormalization) -> np.ndarray:
    """The 3x3 'same' convolution by loops over the window, then the normalisation on the
    moving statistics and a ReLU, in float64."""
    kernel = np.asarray(conv.kernel, np.float64)
    padded = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    height, width = x.shape[1:3]
    out = np.zeros((*x.shape[:3], kernel.shape[-1]))
    for dy in range(3):
        for dx in range(3):
            out += padded[:, dy : dy + height, dx : dx + width] @ kernel[dy, dx]
    if conv.use_bias:
        out += np.asarray(conv.bias)
    mean, variance = np.asarray(norm.moving_mean), np.asarray(norm.moving_variance)
    gamma, beta = np.asarray(norm.gamma), np.asarray(norm.beta)
    return np.maximum((out - mean) / np.sqrt(variance + EPSILON) * gamma + beta, 0.0)


def _op_types(model, x, training) -> set[str]:
    graph = tf.function(lambda x: model(x, training=training)).get_concrete_function(x).graph
    return {op.type for op in graph_ops(graph)}


@pytest.mark.parametrize("use_bias", [False, True])
def test_bfloat16_inference_applies_the_normalisation_in_the_convolution(use_bias):
    model, conv, norm = _conv_bn("mixed_bfloat16", use_bias)
    x = tf.random.stateless_normal([2, 8, 8, 4], seed=[0, 1])
    want = _numpy_reference(np.asarray(x), conv, norm)
    got = np.asarray(tf.cast(model(x, training=False), tf.float32))
    # bfloat16 inputs, kernel and output: about 3 significant digits.
    np.testing.assert_allclose(got, want, rtol=3e-2, atol=3e-2 * np.abs(want).max())
    types = _op_types(model, x, training=False)
    assert "BiasAdd" in types and not any("FusedBatchNorm" in kind for kind in types)
    # The same layers without the fold (the normalisation's own kernel) agree as closely.
    unfolded, _, _ = _conv_bn("mixed_bfloat16", use_bias, fold=False)
    assert any("FusedBatchNorm" in kind for kind in _op_types(unfolded, x, training=False))
    plain = np.asarray(tf.cast(unfolded(x, training=False), tf.float32))
    np.testing.assert_allclose(got, plain, rtol=3e-2, atol=3e-2 * np.abs(want).max())


def test_a_frozen_normalisation_folds_in_training_too():
    model, conv, norm = _conv_bn("mixed_bfloat16", trainable=False)
    x = tf.random.stateless_normal([2, 8, 8, 4], seed=[0, 2])
    assert not any("FusedBatchNorm" in kind for kind in _op_types(model, x, training=True))
    want = _numpy_reference(np.asarray(x), conv, norm)
    got = np.asarray(tf.cast(model(x, training=True), tf.float32))
    np.testing.assert_allclose(got, want, rtol=3e-2, atol=3e-2 * np.abs(want).max())


def test_float32_inference_folds_and_training_keeps_the_normalisation():
    x = tf.random.stateless_normal([2, 8, 8, 4], seed=[0, 3])
    model, conv, norm = _conv_bn("float32")
    types = _op_types(model, x, training=False)
    assert "BiasAdd" in types and not any("FusedBatchNorm" in kind for kind in types)
    want = _numpy_reference(np.asarray(x), conv, norm)
    np.testing.assert_allclose(model(x, training=False), want, rtol=1e-4, atol=1e-4)
    model, _, norm = _conv_bn("mixed_bfloat16")
    before = np.asarray(norm.moving_mean)
    assert any("FusedBatchNorm" in kind for kind in _op_types(model, x, training=True))
    model(x, training=True)
    assert not np.allclose(np.asarray(norm.moving_mean), before)  # batch statistics used


def test_a_model_reading_the_convolution_gets_the_plain_convolution():
    model, conv, norm = _conv_bn("float32")
    both = keras.Model(model.input, [conv.output, model.output])
    x = tf.random.stateless_normal([2, 8, 8, 4], seed=[0, 4])
    want = _numpy_reference(np.asarray(x), conv, norm)
    kernel = np.asarray(conv.kernel, np.float64)
    padded = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    plain = sum(
        padded[:, dy : dy + 8, dx : dx + 8] @ kernel[dy, dx] for dy in range(3) for dx in range(3)
    )
    for run in (both, tf.function(both)):
        features, outputs = run(x, training=False)
        np.testing.assert_allclose(features, plain, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(outputs, want, rtol=1e-4, atol=1e-4)
    extractor = keras.Model(model.input, conv.output)
    np.testing.assert_allclose(tf.function(extractor)(x), plain, rtol=1e-4, atol=1e-4)


def test_a_loaded_keras_file_folds_again(tmp_path):
    model, conv, norm = _conv_bn("float32", use_bias=True)
    x = tf.random.stateless_normal([2, 8, 8, 4], seed=[0, 5])
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert loaded.get_layer("bn").folded
    types = _op_types(loaded, x, training=False)
    assert not any("FusedBatchNorm" in kind for kind in types)
    np.testing.assert_array_equal(loaded(x, training=False), model(x, training=False))
    want = _numpy_reference(np.asarray(x), conv, norm)
    np.testing.assert_allclose(loaded(x, training=False), want, rtol=1e-4, atol=1e-4)


def test_a_convolution_with_an_activation_cannot_fold():
    conv = Conv2D(4, 3, activation="relu", name="c")
    with pytest.raises(ValueError, match="c: a Conv2D with an activation cannot fold"):
        fold_batch_norm(conv, BatchNormalization(name="n"))
    inputs = keras.Input((6, 6, 3))  # built on such a conv's output: not folded, no error
    norm = BatchNormalization(name="n")
    norm(conv(inputs))
    assert not norm.folded


def test_weights_files_are_keras_conv2d_ones(tmp_path):
    def build(conv_class):
        inputs = keras.Input((6, 6, 3))
        x = conv_class(5, 3, name="conv")(inputs)
        return keras.Model(inputs, keras.layers.BatchNormalization(name="bn")(x))

    ours, theirs = build(Conv2D), build(keras.layers.Conv2D)
    rng = np.random.default_rng(1)
    for weight in ours.weights:
        weight.assign(rng.normal(size=weight.shape).astype("float32"))
    ours.save_weights(tmp_path / "ours.weights.h5")
    theirs.load_weights(tmp_path / "ours.weights.h5")
    for a, b in zip(ours.weights, theirs.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    again = keras.Model.from_config(ours.get_config())
    assert isinstance(again.get_layer("conv"), Conv2D)


def test_a_bfloat16_mask_rcnn_folds_every_normalisation_after_a_convolution():
    from model_fixtures import REPO, TINY_OVERRIDES

    from maskspine.config import load_config
    from maskspine.modeling.factory import build_mask_rcnn
    from maskspine.predict import predict_function

    config = load_config(
        f"{REPO}/configs/shapes_demo.yaml", [*TINY_OVERRIDES, "precision=bfloat16"]
    )
    model = build_mask_rcnn(config)
    norms = [layer for layer in model._flatten_layers() if isinstance(layer, BatchNormalization)]
    convs = [layer for layer in model._flatten_layers() if isinstance(layer, Conv2D)]
    folded = [norm for norm in norms if norm.folded]
    # Every normalisation but the RPN's per-level ones (none here) follows a convolution.
    assert len(folded) == len(norms) > 20 and len(convs) >= len(folded)
    rng = np.random.default_rng(2)
    for norm in norms:  # statistics of a trained model rather than 0 and 1
        norm.moving_mean.assign(rng.normal(0, 0.5, norm.moving_mean.shape).astype("float32"))
        norm.moving_variance.assign(rng.uniform(0.5, 2, norm.moving_variance.shape))
    images = tf.random.stateless_uniform([1, 128, 128, 3], seed=[4, 0]) * 2.0 - 1.0
    info = tf.constant([[[128, 128], [128, 128], [1, 1], [0, 0]]], tf.float32)
    features = model.backbone(images, training=False)
    for norm in folded:
        norm.folded = False
    unfolded = model.backbone(images, training=False)
    for level, value in features.items():
        got = np.asarray(tf.cast(value, tf.float32))
        want = np.asarray(tf.cast(unfolded[level], tf.float32))
        # bfloat16 through a dozen layers: within a few per cent of the feature scale.
        assert np.abs(got - want).max() <= 0.05 * np.abs(want).max(), level
    for norm in folded:
        norm.folded = True
    graph = predict_function(model).get_concrete_function(images, info).graph
    assert not any("FusedBatchNorm" in op.type for op in graph_ops(graph))
