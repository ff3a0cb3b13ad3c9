"""Two mirrored CPU replicas compute the same loss and the same update as one replica on
the same global batch."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from model_fixtures import make_batch

from maskspine.modeling.mask_rcnn import MaskRCNN, build_mask_rcnn

#: Every anchor / RoI sampled and BN frozen: nothing random and nothing that depends on how
#: the batch is split, so one step must agree to float tolerance.
DETERMINISTIC = {
    "train_cfg.rpn.sampler.num": 2048,
    "train_cfg.rcnn.sampler.num": 512,
    "train_cfg.rcnn.sampler.pos_fraction": 1.0,
    "roi.sample_num": 512,
    "mask_roi.sample_num": 512,
}


def build(config, strategy):
    with strategy.scope():
        model = build_mask_rcnn(config)
        for layer in model._flatten_layers():
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
        model.compile(optimizer=keras.optimizers.SGD(0.05), jit_compile=False)
    return model


def two_cpu_strategy() -> tf.distribute.MirroredStrategy:
    return tf.distribute.MirroredStrategy(
        [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    )


def test_fit_still_calls_the_symbolic_build_the_model_skips(tiny_config, monkeypatch):
    """MaskRCNN overrides Keras' private `_maybe_symbolic_build` (mask_rcnn.py says why): a
    Keras whose fit no longer calls it would average a batch with bool tensors over the
    replicas and fail. Stops at the call, before anything is traced."""

    class Reached(Exception):
        pass

    def stop(self, iterator=None, data_batch=None):
        raise Reached

    monkeypatch.setattr(MaskRCNN, "_maybe_symbolic_build", stop)
    model = build(tiny_config, two_cpu_strategy())
    batch, _ = make_batch(2)
    assert batch["gt_is_crowd"].dtype == bool
    with pytest.raises(Reached):
        model.fit(tf.data.Dataset.from_tensors(batch), verbose=0)


@pytest.mark.slow  # two replicas' traces of the train step: over a minute on 2 cores
def test_two_replicas_match_one_replica(tiny_config):
    for key, value in DETERMINISTIC.items():
        section, *rest = key.split(".")
        target = getattr(tiny_config, section)
        for part in rest[:-1]:
            target = getattr(target, part)
        setattr(target, rest[-1], value)
    tiny_config.train_cfg.rpn_proposal.max_per_img = 100
    one, _ = make_batch(1)
    batch = {key: np.repeat(value, 4, axis=0) for key, value in one.items()}
    data = tf.data.Dataset.from_tensors(batch)

    single = build(tiny_config, tf.distribute.get_strategy())
    mirrored = build(tiny_config, two_cpu_strategy())
    mirrored.set_weights(single.get_weights())

    loss_one = single.fit(data, verbose=0).history
    loss_two = mirrored.fit(data, verbose=0).history
    for name in ("loss", "rpn_cls_loss", "rcnn_cls_loss", "mask_loss"):
        assert loss_two[name][0] == pytest.approx(loss_one[name][0], rel=1e-4), name
    for a, b in zip(single.trainable_weights, mirrored.trainable_weights):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-6, err_msg=a.path)
