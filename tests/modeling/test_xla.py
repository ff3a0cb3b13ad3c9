"""The detector built for XLA (`jit_compile: true`: every part's compilable kernel) and
compiled (`tf.function(jit_compile=True)`, no auto-clustering), against the same weights in
the model built for the graph (`jit_compile: false`: crop_and_resize, TensorFlow's NMS ops)
run by TensorFlow's graph executor: inference outputs and one training step (losses,
gradient norm, the SGD update).

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
from maskspine.training.trainer import _op_determinism


def _model(jit_compile: str):
    config = load_config(
        os.path.join(REPO, "configs", "shapes_demo.yaml"),
        [*TINY_OVERRIDES, f"jit_compile={jit_compile}"],
    )
    return build_mask_rcnn(config)


@pytest.fixture
def models():
    """(the model built for XLA, the model built for the graph), the same weights."""
    tf.config.optimizer.set_jit(False)  # only what jit_compile=True asks for is compiled
    keras.utils.set_random_seed(0)
    compiled, graph = _model("true"), _model("false")
    assert compiled.xla and not graph.xla
    _separate_scores(compiled)
    graph.set_weights(compiled.get_weights())
    return compiled, graph


def _separate_scores(model) -> None:
    """Objectness and class logits spread wider than the initial 0.01 normal (see the
    module docstring)."""
    for layer, seed in ((model.rpn_head.objectness, 1), (model.box_head.class_logits, 2)):
        kernel = layer.kernel
        kernel.assign(tf.random.stateless_normal(kernel.shape, [seed, 0]))


def _batch():
    batch, _ = make_batch(2)
    return {k: tf.constant(v) for k, v in batch.items()}


def test_inference_compiles_with_xla_and_matches_the_graph(models):
    xla_model, graph_model = models
    batch = _batch()
    inputs = {"images": batch["images"], "image_info": batch["image_info"]}
    compiled = tf.function(lambda x: xla_model(x, training=False), jit_compile=True)
    got = compiled(inputs)
    expected = tf.function(lambda x: graph_model(x, training=False))(inputs)
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
    def step(batch, step):
        with tf.GradientTape() as tape:
            losses = model.compute_losses(batch, training=training, step=step)
        gradients = tape.gradient(losses["loss"], model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return losses, tf.linalg.global_norm(gradients)

    return step


@pytest.mark.slow  # XLA compiles the training step: about a minute on 2 cores
def test_training_step_compiles_with_xla_and_matches_the_graph(models):
    model, graph_model = models
    step = tf.constant(5, tf.int64)
    batch = _batch()
    start = [v.numpy() for v in model.trainable_variables]

    optimizer = keras.optimizers.SGD(0.01)
    optimizer.build(model.trainable_variables)
    compiled = tf.function(_training_step(model, optimizer, False), jit_compile=True)
    got_losses, got_norm = compiled(batch, step)
    got_weights = [v.numpy() for v in model.trainable_variables]
    graph_optimizer = keras.optimizers.SGD(0.01)
    graph_optimizer.build(graph_model.trainable_variables)
    # The CPU gradient of crop_and_resize adds from several threads without order (a run
    # differs from the next by up to 1e-3 relative in the norm): deterministic kernels.
    with _op_determinism(True):
        graph_step = tf.function(_training_step(graph_model, graph_optimizer, False))
        losses, norm = graph_step(batch, step)
    weights = [v.numpy() for v in graph_model.trainable_variables]

    for name, value in losses.items():
        assert float(value) > 0, name
        np.testing.assert_allclose(float(got_losses[name]), float(value), rtol=1e-4, err_msg=name)
    np.testing.assert_allclose(float(got_norm), float(norm), rtol=1e-4)
    # The SGD update: weights after the step within 1 % of the step's size (plus the
    # rounding of the weights themselves).
    for variable, got, want, before in zip(
        graph_model.trainable_variables, got_weights, weights, start, strict=True
    ):
        step_size = float(np.abs(want - before).max())
        np.testing.assert_allclose(
            got, want, rtol=0, atol=1e-2 * step_size + 1e-7, err_msg=variable.path
        )


@pytest.mark.slow  # XLA compiles the training step: about a minute on 2 cores
def test_training_step_with_batch_statistics_compiles_with_xla(models):
    model, _ = models
    optimizer = keras.optimizers.SGD(0.01)
    optimizer.build(model.trainable_variables)
    compiled = tf.function(_training_step(model, optimizer, True), jit_compile=True)
    step = tf.constant(5, tf.int64)
    losses, norm = compiled(_batch(), step)
    assert all(np.isfinite(float(v)) for v in losses.values())
    assert np.isfinite(float(norm)) and float(norm) > 0
    again, _ = compiled(_batch(), step)  # weights moved: another loss, same samples
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
