"""Learning-rate schedules at chosen steps (hand-computed), optimizer settings, strategy choice."""

from __future__ import annotations

import math
import os

import keras
import pytest
from model_fixtures import REPO

from maskspine.config import load_config
from maskspine.training.optimizer import (
    WarmupCosine,
    WarmupMultiStep,
    build_optimizer,
    learning_rate_schedule,
)

CONFIG = os.path.join(REPO, "configs", "mask_rcnn_49_640.yaml")


def test_reference_multistep_schedule_values():
    # the reference: lr 0.14, warm-up 4000 steps from 0.1 * lr, /10 at epochs 320 and 340
    config = load_config(CONFIG)
    schedule = learning_rate_schedule(config, steps_per_epoch=100)
    expected = {
        0: 0.014,
        2000: 0.014 + 0.5 * (0.14 - 0.014),
        4000: 0.14,
        31_999: 0.14,
        32_000: 0.014,
        33_999: 0.014,
        34_000: 0.0014,
    }
    for step, value in expected.items():
        assert float(schedule(step)) == pytest.approx(value, rel=1e-5), step


def test_reference_log_learning_rates_are_reproduced():
    # The reference's log: "step: 100 ... lr: 0.017150", "step: 200 ... lr: 0.020300"
    # (lr 0.14, warmup_ratio 0.1, warmup_step 4000).
    schedule = WarmupMultiStep(0.14, 4000, 0.1, [10**9])
    assert float(schedule(100)) == pytest.approx(0.017150, abs=1e-6)
    assert float(schedule(200)) == pytest.approx(0.020300, abs=1e-6)


def test_cosine_schedule_values():
    schedule = WarmupCosine(
        lr=0.02, warmup_steps=100, warmup_ratio=0.1, total_steps=1100, min_lr=0.0002
    )
    assert float(schedule(0)) == pytest.approx(0.002)
    assert float(schedule(100)) == pytest.approx(0.02)
    middle = 0.0002 + 0.5 * (0.02 - 0.0002) * (1 + math.cos(math.pi * 0.5))
    assert float(schedule(600)) == pytest.approx(middle, rel=1e-5)
    assert float(schedule(1100)) == pytest.approx(0.0002, rel=1e-5)
    assert float(schedule(5000)) == pytest.approx(0.0002, rel=1e-5)


def test_schedules_serialize():
    for schedule in (
        WarmupMultiStep(0.1, 10, 0.1, [50, 80]),
        WarmupCosine(0.1, 10, 0.1, 100, 0.001),
    ):
        clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
        assert float(clone(60)) == pytest.approx(float(schedule(60)))


@pytest.mark.parametrize(
    ("opt_type", "cls"),
    [
        ("sgd", keras.optimizers.SGD),
        ("adam", keras.optimizers.Adam),
        ("adamw", keras.optimizers.AdamW),
    ],
)
def test_optimizer_type_clipping_accumulation(opt_type, cls):
    config = load_config(
        CONFIG,
        [f"opt_type={opt_type}", "grad_clip=5.0", "accumulate_step=4", "weight_decay=0.0001"],
    )
    optimizer = build_optimizer(config, steps_per_epoch=100)
    assert isinstance(optimizer, cls)
    assert optimizer.global_clipnorm == 5.0
    assert optimizer.gradient_accumulation_steps == 4
    assert optimizer.weight_decay == pytest.approx(0.0001)
    if opt_type == "sgd":
        assert optimizer.momentum == pytest.approx(0.9)


def test_weight_decay_skips_batch_norm_and_biases():
    config = load_config(CONFIG, ["weight_decay=0.0001"])
    optimizer = build_optimizer(config, steps_per_epoch=10)
    conv = keras.layers.Conv2D(2, 3, name="c")
    conv.build((None, 8, 8, 1))
    norm = keras.layers.BatchNormalization(name="n")
    norm.build((None, 8, 8, 2))
    optimizer.build(conv.trainable_variables + norm.trainable_variables)
    decayed = {
        v.name: optimizer._use_weight_decay(v)
        for v in conv.trainable_variables + norm.trainable_variables
    }
    assert decayed == {"kernel": True, "bias": False, "gamma": False, "beta": False}


def test_accumulation_divides_the_schedule_steps():
    # lr_steps are epochs of optimizer steps: with accumulate_step=2 an epoch of 100
    # batches is 50 optimizer steps
    config = load_config(CONFIG, ["accumulate_step=2", "lr_steps=[2]", "warmup_step=0"])
    inner = build_optimizer(config, steps_per_epoch=100)._learning_rate
    assert float(inner(99)) == pytest.approx(0.14) and float(inner(100)) == pytest.approx(0.014)


def test_strategy_for_cpu_replicas_and_tf_config(monkeypatch):
    from maskspine.training.strategy import choose_strategy, workers_in_tf_config

    strategy = choose_strategy(cpu_replicas=2)  # conftest made two logical CPU devices
    assert strategy.num_replicas_in_sync == 2
    monkeypatch.setenv(
        "TF_CONFIG",
        '{"cluster": {"worker": ["localhost:1", "localhost:2"]}, "task": {"type": "worker", "index": 0}}',
    )
    assert workers_in_tf_config() == 2
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG"):
        workers_in_tf_config()


@pytest.fixture
def restore_policy():
    yield
    keras.config.set_dtype_policy("float32")


def test_mixed_precision_on_cpu_is_bfloat16_and_trains(tiny_config, restore_policy):
    import numpy as np
    import tensorflow as tf
    from model_fixtures import make_batch

    from maskspine.modeling.mask_rcnn import build_mask_rcnn
    from maskspine.training.optimizer import set_precision

    tiny_config.mixed_precision = True
    assert set_precision(tiny_config) == "mixed_bfloat16"
    model = build_mask_rcnn(tiny_config)
    assert model.backbone.get_layer("stem_conv").compute_dtype == "bfloat16"
    assert model.backbone.get_layer("stem_conv").kernel.dtype == "float32"
    model.compile(optimizer=build_optimizer(tiny_config, steps_per_epoch=10))
    batch, _ = make_batch(2)
    history = model.fit(tf.data.Dataset.from_tensors(batch).repeat(2), verbose=0).history
    assert all(np.isfinite(values[-1]) for values in history.values())
    outputs = model(batch["images"])
    assert outputs["detection_boxes"].dtype == tf.float32
    assert outputs["detection_masks"].dtype == tf.float32


def test_float16_policy_wraps_the_optimizer_with_the_reference_loss_scale(restore_policy):
    config = load_config(CONFIG, ["loss_scale=256"])
    keras.config.set_dtype_policy("mixed_float16")  # what set_precision picks on a GPU
    optimizer = build_optimizer(config, steps_per_epoch=10)
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    assert optimizer.initial_scale == 256.0
    assert isinstance(optimizer.inner_optimizer, keras.optimizers.SGD)
