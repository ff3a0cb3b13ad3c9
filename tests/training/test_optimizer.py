"""Learning-rate schedules at chosen steps (hand-computed), optimizer settings, strategy choice."""

from __future__ import annotations

import math
import os

import keras
import numpy as np
import pytest
from model_fixtures import REPO

from maskspine.config import load_config
from maskspine.training.optimizer import (
    CoupledWeightDecay,
    FusedUpdates,
    WarmupMultiStep,
    build_optimizer,
    learning_rate_schedule,
    warmup_cosine,
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
    schedule = warmup_cosine(
        lr=0.02, warmup_steps=100, warmup_ratio=0.1, total_steps=1100, min_lr=0.0002
    )
    assert float(schedule(0)) == pytest.approx(0.002)
    assert float(schedule(50)) == pytest.approx(0.002 + 0.5 * (0.02 - 0.002))
    assert float(schedule(100)) == pytest.approx(0.02)
    middle = 0.0002 + 0.5 * (0.02 - 0.0002) * (1 + math.cos(math.pi * 0.5))
    assert float(schedule(600)) == pytest.approx(middle, rel=1e-5)
    quarter = 0.0002 + 0.5 * (0.02 - 0.0002) * (1 + math.cos(math.pi * 0.25))
    assert float(schedule(350)) == pytest.approx(quarter, rel=1e-5)
    assert float(schedule(1100)) == pytest.approx(0.0002, rel=1e-5)
    assert float(schedule(5000)) == pytest.approx(0.0002, rel=1e-5)


def reference_cosine(step, lr, warmup_steps, warmup_ratio, total_steps, min_lr):
    """The schedule as the module docstring states it, in plain Python."""
    if step < warmup_steps:
        return lr * (warmup_ratio + (1 - warmup_ratio) * step / warmup_steps)
    progress = min(max((step - warmup_steps) / max(total_steps - warmup_steps, 1), 0.0), 1.0)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


@pytest.mark.parametrize(
    ("warmup_steps", "warmup_ratio", "total_steps"),
    [(0, 0.1, 40), (10, 0.0, 40), (10, 0.5, 10), (10, 0.1, 4)],
    ids=["no-warmup", "from-zero", "run-ends-with-warmup", "run-shorter-than-warmup"],
)
def test_cosine_schedule_from_the_config_every_step(warmup_steps, warmup_ratio, total_steps):
    config = load_config(CONFIG, [
        "lr_type=cosine", "lr=0.04", "min_lr=0.001", f"warmup_step={warmup_steps}",
        f"warmup_ratio={warmup_ratio}", "epoch_size=2",
    ])  # fmt: skip
    schedule = learning_rate_schedule(config, steps_per_epoch=total_steps // 2)
    for step in range(max(total_steps, warmup_steps) + 5):
        expected = reference_cosine(step, 0.04, warmup_steps, warmup_ratio, total_steps, 0.001)
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-9), step


def test_schedules_serialize():
    for schedule in (
        WarmupMultiStep(0.1, 10, 0.1, [50, 80]),
        warmup_cosine(0.1, 10, 0.1, 100, 0.001),
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
    if opt_type == "adamw":  # decoupled, as AdamW is defined
        assert optimizer.weight_decay == pytest.approx(0.0001)
    else:  # the reference's L2, coupled to the gradient; Keras' decoupled decay off
        assert optimizer.l2_weight_decay == pytest.approx(0.0001)
        assert optimizer.weight_decay is None
    if opt_type == "sgd":
        assert optimizer.momentum == pytest.approx(0.9)


def _two_steps(config, weights, gradients):
    """Runs two optimizer steps of `build_optimizer(config)` on Dense layer weights
    (kernel decays, bias does not) with the given per-step gradients; returns the weights."""
    layer = keras.layers.Dense(2, name="d")
    layer.build((None, 2))
    layer.kernel.assign(weights["kernel"])
    layer.bias.assign(weights["bias"])
    optimizer = build_optimizer(config, steps_per_epoch=100)
    variables = [layer.kernel, layer.bias]
    for step in gradients:
        optimizer.apply_gradients([(np.asarray(step[v.name], np.float32), v) for v in variables])
    return {v.name: v.numpy() for v in variables}


def test_sgd_weight_decay_is_coupled_l2_through_momentum():
    # constant lr (no warm-up, no decay in sight): the textbook momentum SGD with L2,
    # v = mu * v + (g + wd * w); w -= lr * v, computed by hand below.
    lr, mu, wd = 0.1, 0.9, 0.01
    config = load_config(
        CONFIG,
        [f"lr={lr}", f"momentum={mu}", f"weight_decay={wd}", "warmup_step=0", "lr_steps=[100]"],
    )
    w0 = {"kernel": np.array([[1.0, -2.0], [0.5, 4.0]]), "bias": np.array([3.0, -1.0])}
    g = [
        {"kernel": np.array([[0.2, 0.0], [-0.4, 0.1]]), "bias": np.array([0.5, 0.5])},
        {"kernel": np.array([[-0.1, 0.3], [0.0, 0.2]]), "bias": np.array([-0.5, 1.0])},
    ]
    got = _two_steps(config, w0, g)

    # kernel: coupled decay
    v1 = g[0]["kernel"] + wd * w0["kernel"]
    w1 = w0["kernel"] - lr * v1
    v2 = mu * v1 + g[1]["kernel"] + wd * w1
    w2 = w1 - lr * v2
    np.testing.assert_allclose(got["kernel"], w2, rtol=1e-6, atol=1e-7)
    # by hand for one entry: w0 = 1, g = 0.2, -0.1
    # v1 = 0.2 + 0.01 = 0.21, w1 = 0.979; v2 = 0.189 - 0.1 + 0.00979 = 0.09879, w2 = 0.969121
    assert got["kernel"][0, 0] == pytest.approx(0.969121, abs=1e-6)
    # bias: excluded from decay
    b1 = w0["bias"] - lr * g[0]["bias"]
    b2 = b1 - lr * (mu * g[0]["bias"] + g[1]["bias"])
    np.testing.assert_allclose(got["bias"], b2, rtol=1e-6, atol=1e-7)


def test_adam_weight_decay_enters_the_moments_and_adamw_stays_decoupled():
    lr, wd = 0.01, 0.1
    w0 = {"kernel": np.array([[1.0, -2.0], [0.5, 4.0]]), "bias": np.array([3.0, -1.0])}
    g = [
        {"kernel": np.array([[0.2, 0.0], [-0.4, 0.1]]), "bias": np.array([0.5, 0.5])},
        {"kernel": np.array([[-0.1, 0.3], [0.0, 0.2]]), "bias": np.array([-0.5, 1.0])},
    ]
    common = [f"lr={lr}", f"weight_decay={wd}", "warmup_step=0", "lr_steps=[100]"]

    def adam(w, grads, coupled):
        m = np.zeros_like(w)
        v = np.zeros_like(w)
        for t, grad in enumerate(grads, start=1):
            if coupled:
                grad = grad + wd * w
            else:  # decoupled: w -= lr * wd * w before the Adam step
                w = w - lr * wd * w
            m = 0.9 * m + 0.1 * grad
            v = 0.999 * v + 0.001 * grad * grad
            alpha = lr * np.sqrt(1 - 0.999**t) / (1 - 0.9**t)
            w = w - alpha * m / (np.sqrt(v) + 1e-7)
        return w

    kernels = [step["kernel"] for step in g]
    got = _two_steps(load_config(CONFIG, ["opt_type=adam", *common]), w0, g)
    np.testing.assert_allclose(got["kernel"], adam(w0["kernel"], kernels, True), rtol=1e-5)
    got = _two_steps(load_config(CONFIG, ["opt_type=adamw", *common]), w0, g)
    np.testing.assert_allclose(got["kernel"], adam(w0["kernel"], kernels, False), rtol=1e-5)


@pytest.mark.parametrize("opt_type", ["sgd", "adam", "adamw"])
def test_zero_weight_decay_works_for_every_optimizer(opt_type):
    config = load_config(CONFIG, [f"opt_type={opt_type}", "weight_decay=0", "warmup_step=0"])
    w0 = {"kernel": np.ones((2, 2)), "bias": np.zeros(2)}
    g = [{"kernel": np.full((2, 2), 0.5), "bias": np.ones(2)}]
    got = _two_steps(config, w0, g)
    assert np.all(got["kernel"] < 1.0) and np.all(got["bias"] < 0.0)


def test_negative_weight_decay_is_a_config_error():
    from maskspine.config import ConfigError

    with pytest.raises(ConfigError, match="weight_decay"):
        load_config(CONFIG, ["weight_decay=-0.1"])


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


# float16 convolutions are emulated on CPUs (minutes for this test): it runs bfloat16 here,
# float16's loss scaling is tested below and on GPUs.
@pytest.mark.slow  # bfloat16 kernels without native support: over a minute
@pytest.mark.parametrize("precision", ["bfloat16"])
def test_a_mixed_precision_model_trains_on_cpu_with_float32_outputs(tiny_config, precision):
    import numpy as np
    import tensorflow as tf
    from model_fixtures import make_batch

    from maskspine.modeling.factory import build_mask_rcnn

    tiny_config.precision = precision
    model = build_mask_rcnn(tiny_config)
    # the model's own policy, not the process's
    assert keras.config.dtype_policy().name == "float32"
    assert model.precision == precision
    assert model.backbone.get_layer("stem_conv").compute_dtype == precision
    assert model.backbone.get_layer("stem_conv").kernel.dtype == "float32"
    assert model.box_head.convs[0].compute_dtype == precision
    optimizer = build_optimizer(tiny_config, steps_per_epoch=10, precision=model.precision)
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer) == (precision == "float16")
    model.compile(optimizer=optimizer, auto_scale_loss=False)
    batch, _ = make_batch(2)
    history = model.fit(tf.data.Dataset.from_tensors(batch).repeat(2), verbose=0).history
    assert all(np.isfinite(values[-1]) for values in history.values())
    outputs = model({"images": batch["images"], "image_info": batch["image_info"]})
    for key in ("detection_boxes", "detection_scores", "detection_masks"):
        assert outputs[key].dtype == tf.float32, key
    # a float32 model of the same weights gives nearly the same detections
    tiny_config.precision = "float32"
    reference = build_mask_rcnn(tiny_config)
    reference.set_weights(model.get_weights())
    expected = reference({"images": batch["images"], "image_info": batch["image_info"]})
    assert abs(int(outputs["num_detections"][0]) - int(expected["num_detections"][0])) <= 5


def test_float16_wraps_the_optimizer_with_the_reference_loss_scale():
    config = load_config(CONFIG, ["loss_scale=256"])
    optimizer = build_optimizer(config, steps_per_epoch=10, precision="float16")
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    assert optimizer.initial_scale == 256.0
    assert isinstance(optimizer.inner_optimizer, keras.optimizers.SGD)


def test_auto_precision_follows_the_hardware(tmp_path, monkeypatch):
    from maskspine import precision

    amx = tmp_path / "amx"
    amx.write_text("processor : 0\nflags : fpu sse2 avx512f amx_bf16 amx_tile\n")
    plain = tmp_path / "plain"
    plain.write_text("processor : 0\nflags : fpu sse2 avx2 fma\n")
    assert precision.cpu_has_native_bfloat16(str(amx))
    assert not precision.cpu_has_native_bfloat16(str(plain))
    assert not precision.cpu_has_native_bfloat16(str(tmp_path / "absent"))
    zen4 = tmp_path / "zen4"
    zen4.write_text("processor : 0\nflags : fpu avx512f avx512_bf16 avx512_vnni\n")
    assert precision.cpu_bfloat16_flags(str(amx)) == ("amx_bf16",)
    assert precision.cpu_bfloat16_flags(str(zen4)) == ("avx512_bf16",)
    assert precision.cpu_bfloat16_flags(str(plain)) == ()
    # oneDNN held below its bfloat16 instruction set emulates bfloat16: not native
    for isa, native in [
        ("AVX2", False),
        ("avx512_core", False),
        ("AVX512_CORE_BF16", True),
        ("AVX512_CORE_AMX", True),
        ("ALL", True),
        ("", True),
    ]:
        env = {"ONEDNN_MAX_CPU_ISA": isa}
        assert precision.cpu_has_native_bfloat16(str(zen4), environ=env) is native, isa
    assert not precision.cpu_has_native_bfloat16(str(zen4), environ={"DNNL_MAX_CPU_ISA": "AVX2"})
    assert not precision.cpu_has_native_bfloat16(str(plain), environ={})
    assert precision.onednn_isa_limit({"ONEDNN_MAX_CPU_ISA": " avx2 "}) == "AVX2"
    assert precision.onednn_isa_limit({}) is None
    # Eigen's kernels (oneDNN turned off) have no bfloat16 dot products: `auto` keeps float32.
    for setting, native in [("0", False), ("false", False), (" FALSE ", False), ("1", True)]:
        env = {"TF_ENABLE_ONEDNN_OPTS": setting}
        assert precision.cpu_has_native_bfloat16(str(zen4), environ=env) is native, setting
    monkeypatch.setattr(precision, "gpu_compute_capabilities", lambda: [])
    monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda: True)
    assert precision.resolve_precision("auto") == "bfloat16"
    monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda: False)
    assert precision.resolve_precision("auto") == "float32"
    monkeypatch.setattr(precision, "gpu_compute_capabilities", lambda: [(8, 6), (9, 0)])
    assert precision.resolve_precision("auto") == "bfloat16"
    monkeypatch.setattr(precision, "gpu_compute_capabilities", lambda: [(8, 6), (7, 5)])
    assert precision.resolve_precision("auto") == "float16"
    assert precision.resolve_precision("float32") == "float32"
    with pytest.raises(ValueError, match="precision"):
        precision.resolve_precision("int8")


@pytest.mark.slow  # float16 kernels are emulated on CPUs: minutes for one step of a tiny model
def test_a_float16_model_takes_a_loss_scaled_step_on_cpu(tiny_config):
    import numpy as np
    import tensorflow as tf
    from model_fixtures import make_batch

    from maskspine.modeling.factory import build_mask_rcnn

    tiny_config.precision = "float16"
    tiny_config.loss_scale = 1024.0
    model = build_mask_rcnn(tiny_config)
    assert model.box_head.convs[0].compute_dtype == "float16"
    model.compile(
        optimizer=build_optimizer(tiny_config, steps_per_epoch=10, precision=model.precision),
        auto_scale_loss=False,
    )
    batch, _ = make_batch(1)
    batch = {k: tf.constant(v) for k, v in batch.items()}
    assert model.optimizer.dynamic_scale.dtype == tf.float32
    # Dynamic loss scaling: a step whose scaled float16 gradients overflow is skipped and
    # halves the scale (whether the first one does depends on the initial weights); the
    # first finite step updates the weights.
    for _ in range(8):
        scale = float(model.optimizer.dynamic_scale)
        before = [w.numpy() for w in model.trainable_weights]
        logs = model.train_step(batch)
        assert np.isfinite(float(logs["loss"]))
        weights = model.trainable_weights
        changed = sum(not np.array_equal(a, w.numpy()) for a, w in zip(before, weights))
        if changed == 0:
            assert float(model.optimizer.dynamic_scale) == scale / 2
            continue
        assert changed > len(before) // 2  # unscaled gradients reached the weights
        assert float(model.optimizer.dynamic_scale) == scale
        break
    else:
        pytest.fail("eight float16 steps in a row were skipped as overflowing")


class KerasSGDWithL2(CoupledWeightDecay, keras.optimizers.SGD):
    """Keras' own SGD update under the same coupled decay: the reference for `SGDWithL2`."""


class KerasAdamWithL2(CoupledWeightDecay, keras.optimizers.Adam):
    """Keras' own Adam update under the same coupled decay: the reference for `AdamWithL2`."""


_KERAS_REFERENCE = {
    "sgd": lambda o: KerasSGDWithL2(
        momentum=o.momentum, nesterov=o.nesterov, l2_weight_decay=o.l2_weight_decay, **_common(o)
    ),
    "adam": lambda o: KerasAdamWithL2(l2_weight_decay=o.l2_weight_decay, **_common(o)),
    "adamw": lambda o: keras.optimizers.AdamW(weight_decay=o.weight_decay, **_common(o)),
}


#: SGD: the same float32 arithmetic. Adam: TensorFlow's kernel forms 1 - beta_2 in float32
#: (1 - 0.999f = 0.00099998713) where Keras takes it from Python's double (0.001), a 1.3e-5
#: relative difference in the second moment's update; each step moves by about lr = 0.05,
#: so a wrong formula is off by orders of magnitude more than these tolerances.
_TOLERANCE = {
    "sgd": dict(rtol=2e-6, atol=2e-7),
    "adam": dict(rtol=1e-4, atol=1e-5),
    "adamw": dict(rtol=1e-4, atol=1e-5),
}


def _common(optimizer) -> dict:
    return dict(
        learning_rate=optimizer._learning_rate,
        global_clipnorm=optimizer.global_clipnorm,
        gradient_accumulation_steps=optimizer.gradient_accumulation_steps,
    )


def _train(optimizer, steps: int, strategy=None):
    """`steps` optimizer steps in a tf.function on a conv kernel, a bias and a BatchNorm
    scale (fixed random starts and per-step gradients, the same on every replica); returns
    the variables' values."""
    import tensorflow as tf

    strategy = strategy or tf.distribute.get_strategy()
    rng = np.random.default_rng(0)
    shapes = {"kernel": (3, 3, 4, 8), "bias": (8,), "gamma": (8,)}
    starts = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    grads = [
        {k: rng.normal(scale=2.0, size=s).astype(np.float32) for k, s in shapes.items()}
        for _ in range(steps)
    ]
    with strategy.scope():
        variables = [keras.Variable(starts[k], name=k) for k in shapes]
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma"])
        optimizer.build(variables)

    def apply(gradients):
        # each replica's own copy (on its device), as a replica's computed gradients are
        optimizer.apply_gradients(zip([tf.identity(g) for g in gradients], variables))

    @tf.function
    def step(gradients):
        strategy.run(apply, args=(gradients,))

    for values in grads:
        step([tf.constant(values[k]) for k in shapes])
    return {k: np.asarray(v.numpy()) for k, v in zip(shapes, variables)}


def _fused_and_keras(opt_type: str, overrides: list[str], strategy=None):
    """`build_optimizer`'s optimizer of `opt_type` and Keras' own class set up alike."""
    import tensorflow as tf

    config = load_config(
        CONFIG,
        [f"opt_type={opt_type}", "lr=0.05", "lr_type=cosine", "warmup_step=3", "epoch_size=1"]
        + overrides,
    )
    with (strategy or tf.distribute.get_strategy()).scope():
        fused = build_optimizer(config, steps_per_epoch=12)
        reference = _KERAS_REFERENCE[opt_type](fused)
    assert isinstance(fused, FusedUpdates) and not isinstance(reference, FusedUpdates)
    return fused, reference


@pytest.mark.parametrize("opt_type", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("accumulate", [1, 2])
def test_fused_updates_equal_keras_own_optimizers(opt_type, accumulate):
    # Warm-up into the cosine decay, global-norm clipping that bites (gradients of norm ~20
    # against 5), weight decay on the kernel only: the fused ops against Keras' classes.
    fused, reference = _fused_and_keras(
        opt_type, ["grad_clip=5.0", "weight_decay=0.01", f"accumulate_step={accumulate}"]
    )
    got, expected, start = _train(fused, 12), _train(reference, 12), _train(reference, 0)
    for name in expected:
        assert np.abs(expected[name] - start[name]).max() > 0.01  # the variables moved
        np.testing.assert_allclose(got[name], expected[name], **_TOLERANCE[opt_type])
    assert int(fused.iterations.numpy()) == int(reference.iterations.numpy()) == 12 // accumulate


@pytest.mark.parametrize("opt_type", ["sgd", "adamw"])
def test_fused_updates_under_two_replicas_equal_keras_own(opt_type):
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    fused, reference = _fused_and_keras(opt_type, ["weight_decay=0.01"], strategy)
    got, expected = _train(fused, 5, strategy), _train(reference, 5, strategy)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], **_TOLERANCE[opt_type])
    if opt_type == "sgd":  # the replicas' gradients are summed: twice one device's step
        one = _train(_fused_and_keras(opt_type, ["weight_decay=0.01"])[0], 1)
        two = _train(_fused_and_keras(opt_type, ["weight_decay=0.01"], strategy)[0], 1, strategy)
        start = _train(_fused_and_keras(opt_type, [])[0], 0)
        np.testing.assert_allclose(
            two["bias"] - start["bias"], 2 * (one["bias"] - start["bias"]), rtol=1e-5
        )


def test_the_schedule_is_traced_once_and_each_update_is_one_fused_op():
    import tensorflow as tf

    config = load_config(CONFIG, ["opt_type=adamw", "lr_type=cosine", "weight_decay=0.01"])
    optimizer = build_optimizer(config, steps_per_epoch=10)
    variables = [keras.Variable(np.ones((3, 3), np.float32), name=f"kernel{i}") for i in range(6)]
    optimizer.build(variables)

    @tf.function
    def step():
        optimizer.apply_gradients([(tf.ones((3, 3)), v) for v in variables])

    ops = [op.type for op in step.get_concrete_function().graph.get_operations()]
    # The warm-up's cond once for the decay and once for the update (Keras' AdamW: once per
    # decayed variable plus once, 7 here)
    assert sum(t in ("If", "StatelessIf") for t in ops) == 2
    assert ops.count("ResourceApplyAdam") == len(variables)
