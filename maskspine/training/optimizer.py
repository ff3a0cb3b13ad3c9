"""Optimizer and learning-rate schedules as the reference configures them.

Warm-up: the rate grows linearly from `lr * warmup_ratio` at step 0 to `lr` at
`warmup_step`; then `multistep` divides by 10 at each epoch in `lr_steps`, or
`cosine` decays to `min_lr` at the last step (Keras' `CosineDecay`, see `warmup_cosine`).
"""

from __future__ import annotations

from typing import NamedTuple

import keras
import tensorflow as tf

from maskspine.config import Config

#: Variables without weight decay: BatchNorm scale/offset and biases.
NO_DECAY_NAMES = ("gamma", "beta", "bias")


@keras.saving.register_keras_serializable(package="maskspine")
class WarmupMultiStep(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up then step decay: lr * 0.1**k after the k-th boundary (in steps)."""

    def __init__(
        self,
        lr: float,
        warmup_steps: int,
        warmup_ratio: float,
        boundaries: list[int],
        factor: float = 0.1,
    ):
        self.lr = float(lr)
        self.warmup_steps = int(warmup_steps)
        self.warmup_ratio = float(warmup_ratio)
        self.boundaries = [int(b) for b in boundaries]
        self.factor = float(factor)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        decays = tf.add_n(
            [tf.constant(0.0)] + [tf.cast(step >= b, tf.float32) for b in self.boundaries]
        )
        rate = self.lr * tf.pow(self.factor, decays)
        return _warmup(rate, step, self.lr, self.warmup_steps, self.warmup_ratio)

    def get_config(self) -> dict:
        return {
            "lr": self.lr,
            "warmup_steps": self.warmup_steps,
            "warmup_ratio": self.warmup_ratio,
            "boundaries": self.boundaries,
            "factor": self.factor,
        }


def warmup_cosine(
    lr: float, warmup_steps: int, warmup_ratio: float, total_steps: int, min_lr: float
) -> keras.optimizers.schedules.CosineDecay:
    """Linear warm-up from `lr * warmup_ratio` (step 0) to `lr` (step `warmup_steps`), then
    cosine decay to `min_lr` at step `total_steps`, constant after: Keras' `CosineDecay`,
    whose warm-up starts at its `initial_learning_rate` and ends at `warmup_target`, and
    whose decay ends at `alpha * warmup_target`.

    The one difference kept: Keras refuses a decay of 0 steps; a run no longer than its
    warm-up (`total_steps <= warmup_steps`, short test runs) decays over one step instead.
    """
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=lr * warmup_ratio,
        decay_steps=max(total_steps - warmup_steps, 1),
        alpha=min_lr / lr,
        warmup_target=lr,
        warmup_steps=warmup_steps,
    )


def _warmup(rate, step, lr: float, warmup_steps: int, warmup_ratio: float):
    if warmup_steps <= 0:
        return rate
    warm = lr * (warmup_ratio + (1.0 - warmup_ratio) * step / warmup_steps)
    return tf.where(step < warmup_steps, warm, rate)


def learning_rate_schedule(
    config: Config, steps_per_epoch: int
) -> keras.optimizers.schedules.LearningRateSchedule:
    """The config's schedule; `lr_steps` are epochs, converted with `steps_per_epoch`
    (optimizer steps, i.e. after gradient accumulation)."""
    if config.lr_type == "multistep":
        return WarmupMultiStep(
            config.lr,
            config.warmup_step,
            config.warmup_ratio,
            [epoch * steps_per_epoch for epoch in config.lr_steps],
        )
    return warmup_cosine(
        config.lr,
        config.warmup_step,
        config.warmup_ratio,
        config.epoch_size * steps_per_epoch,
        config.min_lr,
    )


class FusedUpdates:
    """Mixin for Keras' SGD / Adam / AdamW on TensorFlow: the per-step scalars computed once
    per step and each variable updated by TensorFlow's fused training op.

    Keras evaluates the learning-rate schedule once per decayed variable in its decoupled
    weight decay (AdamW; 142 copies of the warm-up + cosine graph in the shapes demo) and
    updates each variable with about ten elementwise ops (Adam: the moments, the bias
    correction, the step). Here the schedule and Adam's scalars are computed once per step,
    and a variable's update is one `ResourceApplyAdam` / `ResourceApplyKerasMomentum`, which
    compute Keras' update formulas (Adam's
    `var -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)`, SGD's
    `m = momentum * m - lr * g; var += m`). The shapes demo's traced training step has 17,794
    ops instead of 32,470, traces and optimizes in half the time, and its update reads each
    tensor once.

    Same optimizer variables and checkpoints as Keras' classes; AMSGrad and SGD without
    momentum keep Keras' own update. The fused ops are in XLA's kernels, so the compiled
    (TPU / GPU) step uses them too.
    """

    def _apply_weight_decay(self, variables):
        if self.weight_decay is None:
            return
        # One schedule evaluation for all variables (Keras: one per variable).
        learning_rate = self.learning_rate

        def decay(variable, learning_rate):
            if self._use_weight_decay(variable):
                rate = tf.cast(learning_rate, variable.dtype)
                variable.assign_sub(variable * tf.cast(self.weight_decay, variable.dtype) * rate)

        def distributed(distribution, variables, learning_rate):
            for variable in variables:
                distribution.extended.update(
                    _tf_variable(variable), decay, args=(learning_rate,), group=False
                )

        tf.__internal__.distribute.interim.maybe_merge_call(
            distributed, self._distribution_strategy, variables, learning_rate
        )

    def _fuses_adam(self) -> bool:
        return isinstance(self, keras.optimizers.Adam) and not self.amsgrad

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if self._fuses_adam():
            step = tf.cast(self.iterations + 1, tf.float32)
            beta_1 = tf.constant(self.beta_1, tf.float32)
            beta_2 = tf.constant(self.beta_2, tf.float32)
            learning_rate = _StepScalars(
                tf.cast(learning_rate, tf.float32),
                tf.pow(beta_1, step),
                tf.pow(beta_2, step),
                beta_1,
                beta_2,
                tf.constant(self.epsilon, tf.float32),
            )
        super()._backend_update_step(grads, trainable_variables, learning_rate)

    def update_step(self, gradient, variable, learning_rate):
        if self._fuses_adam():
            if not isinstance(learning_rate, _StepScalars):
                raise TypeError(
                    f"{type(self).__name__}.update_step expects the step's scalars from "
                    f"_backend_update_step, got {learning_rate!r}"
                )
            self._fused_adam(gradient, variable, learning_rate)
        elif isinstance(self, keras.optimizers.SGD) and self.momentum != 0:
            dtype = variable.dtype
            tf.raw_ops.ResourceApplyKerasMomentum(
                var=_resource(variable),
                accum=_resource(self.momentums[self._get_variable_index(variable)]),
                lr=tf.cast(learning_rate, dtype),
                grad=_dense(gradient, dtype),
                momentum=tf.constant(self.momentum, dtype),
                use_nesterov=self.nesterov,
            )
        else:
            super().update_step(gradient, variable, learning_rate)

    def _fused_adam(self, gradient, variable, scalars: _StepScalars) -> None:
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(
            var=_resource(variable),
            m=_resource(self._momentums[index]),
            v=_resource(self._velocities[index]),
            beta1_power=tf.cast(scalars.beta_1_power, dtype),
            beta2_power=tf.cast(scalars.beta_2_power, dtype),
            lr=tf.cast(scalars.learning_rate, dtype),
            beta1=tf.cast(scalars.beta_1, dtype),
            beta2=tf.cast(scalars.beta_2, dtype),
            epsilon=tf.cast(scalars.epsilon, dtype),
            grad=_dense(gradient, dtype),
        )


class _StepScalars(NamedTuple):
    """Adam's float32 scalars of one step, made once for all variables. A named tuple: a
    distribution strategy's merge and update calls rebuild it as itself (a tuple subclass of
    another kind they would not)."""

    learning_rate: tf.Tensor
    beta_1_power: tf.Tensor
    beta_2_power: tf.Tensor
    beta_1: tf.Tensor
    beta_2: tf.Tensor
    epsilon: tf.Tensor


def _tf_variable(variable) -> tf.Variable:
    """The TensorFlow variable of a Keras variable (a TensorFlow variable as it is)."""
    return variable.value if isinstance(variable, keras.Variable) else variable


def _resource(variable) -> tf.Tensor:
    """The resource handle of a Keras or TensorFlow variable (in a distribution strategy's
    update: the variable of the device being updated)."""
    return _tf_variable(variable).handle


def _dense(gradient, dtype: tf.DType) -> tf.Tensor:
    """A gradient as a dense tensor of `dtype` (IndexedSlices from gathers included)."""
    return tf.cast(tf.convert_to_tensor(gradient), dtype)


class CoupledWeightDecay:
    """Mixin: L2 weight decay coupled to the gradient, `grad += l2_weight_decay * w`, as the
    reference's MindSpore SGD, Model Garden and the tensorflow/tpu code apply it (the L2
    term goes through momentum / Adam's moments, unlike Keras' decoupled `weight_decay`,
    `w -= lr * weight_decay * w`). With momentum 0.9 the coupled form regularises about ten
    times more for the same coefficient.

    Applied in `update_step`, i.e. per variable after the gradients are summed over
    replicas, averaged over accumulation steps, unscaled (mixed_float16) and clipped: the
    reference clips, then decays. Variables matched by `exclude_from_weight_decay` (the
    names of `NO_DECAY_NAMES`) are left alone.
    """

    def __init__(self, *args, l2_weight_decay: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.l2_weight_decay = float(l2_weight_decay)

    def update_step(self, gradient, variable, learning_rate):
        if self.l2_weight_decay and self._use_weight_decay(variable):
            decay = keras.ops.cast(self.l2_weight_decay, variable.dtype)
            gradient = keras.ops.cast(gradient, variable.dtype) + decay * variable
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self) -> dict:
        return {**super().get_config(), "l2_weight_decay": self.l2_weight_decay}


@keras.saving.register_keras_serializable(package="maskspine")
class SGDWithL2(CoupledWeightDecay, FusedUpdates, keras.optimizers.SGD):
    """Keras SGD (with momentum) plus coupled L2 weight decay (`CoupledWeightDecay`), its
    update fused (`FusedUpdates`)."""


@keras.saving.register_keras_serializable(package="maskspine")
class AdamWithL2(CoupledWeightDecay, FusedUpdates, keras.optimizers.Adam):
    """Keras Adam plus coupled L2 weight decay (`CoupledWeightDecay`), its update fused
    (`FusedUpdates`)."""


@keras.saving.register_keras_serializable(package="maskspine")
class AdamW(FusedUpdates, keras.optimizers.AdamW):
    """Keras AdamW (decoupled weight decay), its schedule evaluated once per step and its
    update fused (`FusedUpdates`)."""


def build_optimizer(
    config: Config, steps_per_epoch: int, precision: str = "float32"
) -> keras.optimizers.Optimizer:
    """The optimizer of `opt_type` with the schedule, weight decay (not on BatchNorm or
    biases), global-norm clipping (`grad_clip` > 0), gradient accumulation
    (`accumulate_step` > 1) and, for a model of `precision` float16 (`model.precision`),
    dynamic loss scaling starting at `loss_scale`.

    `weight_decay` is the reference's L2 decay, coupled to the gradient, for `sgd` and
    `adam` (`SGDWithL2`, `AdamWithL2`); `adamw` decays decoupled, as AdamW is defined.
    """
    accumulate = max(int(config.accumulate_step), 1)
    schedule = learning_rate_schedule(config, max(steps_per_epoch // accumulate, 1))
    common = dict(
        learning_rate=schedule,
        global_clipnorm=config.grad_clip if config.grad_clip > 0 else None,
        gradient_accumulation_steps=accumulate if accumulate > 1 else None,
    )
    if config.opt_type == "sgd":
        optimizer = SGDWithL2(
            momentum=config.momentum, l2_weight_decay=config.weight_decay, **common
        )
    elif config.opt_type == "adam":
        optimizer = AdamWithL2(l2_weight_decay=config.weight_decay, **common)
    else:
        optimizer = AdamW(weight_decay=config.weight_decay, **common)
    if config.weight_decay:
        optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY_NAMES))
    if precision == "float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=config.loss_scale)
    return optimizer


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    """The rate the optimizer uses at its current step."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    rate = inner.learning_rate
    return float(rate.numpy() if hasattr(rate, "numpy") else rate)
