"""Two mirrored CPU replicas compute the same loss and the same update as one replica on
the same global batch."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from model_fixtures import REPO, SAMPLE_EVERYTHING, TINY_OVERRIDES, make_batch

from maskspine.config import load_config
from maskspine.modeling.factory import build_mask_rcnn
from maskspine.modeling.mask_rcnn import MaskRCNN


def build(config, strategy):
    model = build_mask_rcnn(config, strategy)
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    with strategy.scope():
        model.compile(optimizer=keras.optimizers.SGD(0.05), jit_compile=False)
    return model


def two_cpu_strategy() -> tf.distribute.MirroredStrategy:
    return tf.distribute.MirroredStrategy(
        [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    )


def test_the_model_uses_no_private_keras_method_and_is_composed_outside_the_scope(
    tiny_config,
):
    """No override of Keras' private API (Keras' `_maybe_symbolic_build` averages a batch
    over the replicas, which fails on bool tensors, for a model composed in a strategy's
    scope); the factory composes the model outside the scope instead, and composing it
    inside one is a clear error."""
    overridden = {
        name
        for name in vars(MaskRCNN)
        if name.startswith("_") and not name.startswith("__") and hasattr(keras.Model, name)
    }
    assert overridden == set()
    strategy = two_cpu_strategy()
    with strategy.scope(), pytest.raises(RuntimeError, match="outside a distribution"):
        build_mask_rcnn(tiny_config)


@pytest.mark.slow  # two replicas' traces of the train step: over a minute on 2 cores
def test_two_replicas_match_one_replica():
    # Every anchor and RoI sampled and BN frozen (`build`): nothing random and nothing that
    # depends on how the batch is split, so one step must agree to float tolerance.
    tiny_config = load_config(
        os.path.join(REPO, "configs", "shapes_demo.yaml"),
        [*TINY_OVERRIDES, *SAMPLE_EVERYTHING, "train_cfg.rpn_proposal.max_per_img=100"],
    )
    one, _ = make_batch(1)
    batch = {key: np.repeat(value, 4, axis=0) for key, value in one.items()}
    data = tf.data.Dataset.from_tensors(batch)

    single = build(tiny_config, tf.distribute.get_strategy())
    strategy = two_cpu_strategy()
    mirrored = build(tiny_config, strategy)
    mirrored.set_weights(single.get_weights())

    loss_one = single.fit(data, verbose=0).history
    with strategy.scope():
        assert mirrored.distribute_strategy.num_replicas_in_sync == 2
        loss_two = mirrored.fit(data, verbose=0).history
    for name in ("loss", "rpn_cls_loss", "rcnn_cls_loss", "mask_loss"):
        assert loss_two[name][0] == pytest.approx(loss_one[name][0], rel=1e-4), name
    for a, b in zip(single.trainable_weights, mirrored.trainable_weights):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-6, err_msg=a.path)
