"""The detector compiled with XLA (`tf.function(jit_compile=True)`, no auto-clustering) with
every part's compilable option on, against the same model run by TensorFlow's graph
executor: inference outputs and one training step (losses, gradient norm, the SGD update).

Two things are set up so that the comparison measures the kernels and not chaos:
- a fresh model's RPN and class scores lie within float rounding of each other (tiny
  initial weights): rounding differences then reorder proposals, and the sampler, whose
  draw is per candidate position, picks other RoIs. `_separate_scores` draws those two
  output layers wider.
- BatchNorm with batch statistics over two 128-pixel images normalises the 1x1 and 2x2
  coarse levels over two to eight values, which turns rounding differences (XLA computes
  the moments in another order) into different features layer after layer (measured:
  the losses 1e-3 to 1e-1 apart relatively, the gradient norm up to twice the other's). The compared step runs BatchNorm on its
  moving statistics (`compute_losses(training=False)`: every loss, every gradient); the
  batch-statistics step is compiled and run in its own test.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from model_fixtures import REPO, TINY_OVERRIDES, XLA_OVERRIDES, make_batch

from maskspine.config import ConfigError, load_config
from maskspine.modeling.factory import build_mask_rcnn
from maskspine.modeling.targets import sampling_seed


@pytest.fixture
def xla_model():
    tf.config.optimizer.set_jit(False)  # only what jit_compile=True asks for is compiled
    config = load_config(
        os.path.join(REPO, "configs", "shapes_demo.yaml"), TINY_OVERRIDES + XLA_OVERRIDES
    )
    keras.utils.set_random_seed(0)
    model = build_mask_rcnn(config)
    _separate_scores(model)
    return model


def _separate_scores(model) -> None:
    """Objectness and class logits spread wider than the initial 0.01 normal (see the
    module docstring)."""
    for layer, seed in ((model.rpn_head.objectness, 1), (model.box_head.class_logits, 2)):
        kernel = layer.kernel
        kernel.assign(tf.random.stateless_normal(kernel.shape, [seed, 0]))


def _batch():
    batch, _ = make_batch(2)
    return {k: tf.constant(v) for k, v in batch.items()}


def test_inference_compiles_with_xla_and_matches_the_graph(xla_model):
    batch = _batch()
    inputs = {"images": batch["images"], "image_info": batch["image_info"]}
    compiled = tf.function(lambda x: xla_model(x, training=False), jit_compile=True)
    got = compiled(inputs)
    expected = tf.function(lambda x: xla_model(x, training=False))(inputs)
    count = expected["num_detections"].numpy()
    assert count.min() > 0
    np.testing.assert_array_equal(got["num_detections"].numpy(), count)
    np.testing.assert_array_equal(
        got["detection_classes"].numpy(), expected["detection_classes"].numpy()
    )
    for key, tolerance in (
        ("detection_boxes", 0.01),
        ("detection_scores", 1e-4),
        ("detection_masks", 1e-3),
    ):
        np.testing.assert_allclose(
            got[key].numpy(), expected[key].numpy(), rtol=0, atol=tolerance, err_msg=key
        )


def _training_step(model, optimizer, training):
    def step(batch, seed):
        with tf.GradientTape() as tape:
            losses = model.compute_losses(batch, training=training, sampling_seed=seed)
        gradients = tape.gradient(losses["loss"], model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return losses, tf.linalg.global_norm(gradients)

    return step


@pytest.mark.slow  # XLA compiles the training step: about a minute on 2 cores
def test_training_step_compiles_with_xla_and_matches_the_graph(xla_model):
    model = xla_model
    optimizer = keras.optimizers.SGD(0.01)
    optimizer.build(model.trainable_variables)
    batch = _batch()
    seed = sampling_seed(0, tf.constant(5, tf.int64), 0)
    start = [v.numpy() for v in model.trainable_variables]

    compiled = tf.function(_training_step(model, optimizer, False), jit_compile=True)
    got_losses, got_norm = compiled(batch, seed)
    got_weights = [v.numpy() for v in model.trainable_variables]
    for variable, value in zip(model.trainable_variables, start, strict=True):
        variable.assign(value)
    losses, norm = tf.function(_training_step(model, optimizer, False))(batch, seed)
    weights = [v.numpy() for v in model.trainable_variables]

    for name, value in losses.items():
        assert float(value) > 0, name
        np.testing.assert_allclose(float(got_losses[name]), float(value), rtol=1e-4, err_msg=name)
    np.testing.assert_allclose(float(got_norm), float(norm), rtol=1e-4)
    # The SGD update: weights after the step within 1 % of the step's size (plus the
    # rounding of the weights themselves).
    for variable, got, want, before in zip(
        model.trainable_variables, got_weights, weights, start, strict=True
    ):
        step_size = float(np.abs(want - before).max())
        np.testing.assert_allclose(
            got, want, rtol=0, atol=1e-2 * step_size + 1e-7, err_msg=variable.path
        )


@pytest.mark.slow  # XLA compiles the training step: about a minute on 2 cores
def test_training_step_with_batch_statistics_compiles_with_xla(xla_model):
    model = xla_model
    optimizer = keras.optimizers.SGD(0.01)
    optimizer.build(model.trainable_variables)
    compiled = tf.function(_training_step(model, optimizer, True), jit_compile=True)
    seed = sampling_seed(0, tf.constant(5, tf.int64), 0)
    losses, norm = compiled(_batch(), seed)
    assert all(np.isfinite(float(v)) for v in losses.values())
    assert np.isfinite(float(norm)) and float(norm) > 0
    again, _ = compiled(_batch(), seed)  # weights moved: another loss, same seed
    assert float(again["loss"]) != float(losses["loss"])


def test_the_options_are_checked_by_the_config():
    path = os.path.join(REPO, "configs", "shapes_demo.yaml")
    for key in ("roi.roi_layer.method", "train_cfg.rcnn.mask_target_method"):
        with pytest.raises(ConfigError, match="gather"):
            load_config(path, [*TINY_OVERRIDES, f"{key}=xla"])
    with pytest.raises(ConfigError, match="tiled"):
        load_config(path, [*TINY_OVERRIDES, "test_cfg.rcnn.nms_implementation=xla"])
    config = load_config(path, TINY_OVERRIDES + XLA_OVERRIDES)
    assert config.mask_roi.roi_layer.method == "gather"
    assert config.train_cfg.rpn_proposal.nms_implementation == "tiled"
