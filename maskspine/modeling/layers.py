"""Building blocks: conv-BN-activation, residual and bottleneck blocks, stochastic depth.

The blocks are functions that add plain Keras layers to a functional graph (the
way `keras.applications` builds ResNets), so a model made of them saves and
loads as `.keras` without custom objects beyond the two small layers here.
Tensors are NHWC.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from maskspine.choices import CONV_PADDINGS

KERNEL_INITIALIZER = "VarianceScaling"


@keras.saving.register_keras_serializable(package="maskspine")
class StochasticDepth(layers.Layer):
    """Drops the residual branch of a whole sample with probability `rate` in training
    and rescales the kept ones by 1 / (1 - rate) (Huang et al. 2016)."""

    def __init__(self, rate: float, **kwargs):
        super().__init__(**kwargs)
        self.rate = float(rate)
        self.seed_generator = keras.random.SeedGenerator()

    def call(self, inputs, training=None):
        if not training or self.rate == 0.0:
            return inputs
        keep = 1.0 - self.rate
        batch = ops.shape(inputs)[0]
        noise = keras.random.uniform((batch, 1, 1, 1), dtype=inputs.dtype, seed=self.seed_generator)
        mask = ops.floor(keep + noise)
        return inputs / keep * mask

    def get_config(self) -> dict:
        return {**super().get_config(), "rate": self.rate}


@keras.saving.register_keras_serializable(package="maskspine")
class InputSizeCheck(layers.Layer):
    """Passes images through, failing with a clear error when their height or width is
    not a multiple of `divisor` (SpineNet's: `spinenet.INPUT_SIZE_DIVISOR`, 128, the
    stride of its coarsest blocks, whatever its max_level)."""

    def __init__(self, divisor: int, **kwargs):
        super().__init__(**kwargs)
        self.divisor = int(divisor)

    def _message(self, height, width) -> str:
        return (
            f"input size {height}x{width} is not divisible by {self.divisor} (the stride "
            f"of the backbone's coarsest blocks); resize or pad the images to a multiple of "
            f"{self.divisor}"
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def call(self, inputs):
        height, width = inputs.shape[1], inputs.shape[2]
        if height is not None and width is not None:
            if height % self.divisor or width % self.divisor:
                raise ValueError(self._message(height, width))
            return inputs
        import tensorflow as tf  # dynamic shapes only arise with the TF backend here

        shape = tf.shape(inputs)
        check = tf.debugging.assert_equal(
            tf.math.floormod(shape[1:3], self.divisor),
            0,
            message=f"input size is not divisible by {self.divisor} (the stride of the "
            "backbone's coarsest blocks)",
        )
        with tf.control_dependencies([check]):
            return tf.identity(inputs)

    def get_config(self) -> dict:
        return {**super().get_config(), "divisor": self.divisor}


def batch_norm(x, *, momentum: float, epsilon: float, name: str):
    """BatchNormalization with Keras-style `momentum` (moving-average decay)."""
    return layers.BatchNormalization(momentum=momentum, epsilon=epsilon, name=name)(x)


#: `padding` values of `conv_bn`: Keras 'same', or symmetric zeros then 'valid' for strides > 1.
PADDINGS = CONV_PADDINGS


def conv_bn(
    x,
    filters: int,
    kernel_size: int,
    *,
    strides: int = 1,
    activation: str | None = "relu",
    momentum: float = 0.99,
    epsilon: float = 1e-3,
    kernel_regularizer=None,
    padding: str = "same",
    name: str,
):
    """Conv2D (no bias) -> BatchNorm -> optional activation.

    `padding` "same" is Keras' (for stride 2 on an even size: one more zero after than
    before); "symmetric" pads a strided conv with (k - 1) // 2 zeros before and the rest
    after, then convolves 'valid' (tensorflow/tpu `conv2d_fixed_padding`); both are 'same'
    at stride 1.
    """
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    conv_padding = "same"
    if padding == "symmetric" and strides > 1:
        before = (kernel_size - 1) // 2
        after = kernel_size - 1 - before
        x = layers.ZeroPadding2D(((before, after), (before, after)), name=f"{name}_pad")(x)
        conv_padding = "valid"
    x = layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=conv_padding,
        use_bias=False,
        kernel_initializer=KERNEL_INITIALIZER,
        kernel_regularizer=kernel_regularizer,
        name=f"{name}_conv",
    )(x)
    x = batch_norm(x, momentum=momentum, epsilon=epsilon, name=f"{name}_bn")
    if activation:
        x = layers.Activation(activation, name=f"{name}_{activation}")(x)
    return x


def _join(shortcut, branch, stochastic_depth_rate: float, activation: str, name: str):
    """The end of a residual or bottleneck block: the branch (dropped per sample with
    stochastic depth) added to the shortcut, then the activation."""
    if stochastic_depth_rate:
        branch = StochasticDepth(stochastic_depth_rate, name=f"{name}_drop")(branch)
    merged = layers.Add(name=f"{name}_add")([shortcut, branch])
    return layers.Activation(activation, name=f"{name}_out")(merged)


def residual_block(
    x,
    filters: int,
    *,
    strides: int = 1,
    use_projection: bool = False,
    stochastic_depth_rate: float = 0.0,
    activation: str = "relu",
    momentum: float = 0.99,
    epsilon: float = 1e-3,
    kernel_regularizer=None,
    name: str,
):
    """Two 3x3 convs with an identity (or 1x1 projection) shortcut; output `filters` channels."""
    common = dict(momentum=momentum, epsilon=epsilon, kernel_regularizer=kernel_regularizer)
    shortcut = x
    if use_projection:
        shortcut = conv_bn(
            x, filters, 1, strides=strides, activation=None, name=f"{name}_proj", **common
        )
    y = conv_bn(x, filters, 3, strides=strides, activation=activation, name=f"{name}_1", **common)
    y = conv_bn(y, filters, 3, activation=None, name=f"{name}_2", **common)
    return _join(shortcut, y, stochastic_depth_rate, activation, name)


def bottleneck_block(
    x,
    filters: int,
    *,
    strides: int = 1,
    use_projection: bool = False,
    stochastic_depth_rate: float = 0.0,
    activation: str = "relu",
    momentum: float = 0.99,
    epsilon: float = 1e-3,
    kernel_regularizer=None,
    name: str,
):
    """1x1 -> 3x3 -> 1x1 bottleneck with shortcut; output `4 * filters` channels."""
    common = dict(momentum=momentum, epsilon=epsilon, kernel_regularizer=kernel_regularizer)
    shortcut = x
    if use_projection:
        shortcut = conv_bn(
            x, 4 * filters, 1, strides=strides, activation=None, name=f"{name}_proj", **common
        )
    y = conv_bn(x, filters, 1, activation=activation, name=f"{name}_1", **common)
    y = conv_bn(y, filters, 3, strides=strides, activation=activation, name=f"{name}_2", **common)
    y = conv_bn(y, 4 * filters, 1, activation=None, name=f"{name}_3", **common)
    return _join(shortcut, y, stochastic_depth_rate, activation, name)
