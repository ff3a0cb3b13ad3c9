"""Building blocks: conv-BN-activation, residual and bottleneck blocks, stochastic depth.

The blocks are functions that add plain Keras layers to a functional graph (the
way `keras.applications` builds ResNets), so a model made of them saves and
loads as `.keras` without custom objects beyond the small layers here.
Tensors are NHWC.
"""

from __future__ import annotations

import weakref

import keras
import tensorflow as tf
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


#: The smallest epsilon TensorFlow's fused BatchNorm takes as given (it raises smaller ones to
#: this for cuDNN); below it the layer keeps Keras' computation.
FUSED_MIN_EPSILON = 1.001e-5

#: Compute dtypes in which a BatchNormalization after a Conv2D is folded into it in inference.
FOLDED_DTYPES = ("float32", "bfloat16", "float16")


@keras.saving.register_keras_serializable(package="maskspine")
class BatchNormalization(layers.BatchNormalization):
    """Keras' BatchNormalization, run on 4-D NHWC inputs by TensorFlow's fused kernel
    (`FusedBatchNormV3` and `FusedBatchNormGradV3`) instead of Keras' moments and
    element-wise ops. In training that computes the batch's mean and variance in one pass
    and the gradient in one op (Keras' ops took about a tenth of a SpineNet-49 Mask R-CNN
    training step at 640 on a CPU, `benchmarks/op_profile.py`); in inference (and when
    frozen) the kernel takes bfloat16 / float16 inputs without casting them to float32 and
    back. The results are Keras':
    in training, inputs normalised by the batch mean and biased variance (per channel over
    N, H, W) and the moving statistics updated with the biased variance (the kernel returns
    the unbiased one; it is rescaled by (n - 1) / n here); otherwise normalised by the
    moving statistics; in float32 inside the kernel whatever the input's dtype. Masked,
    renormalised, synchronised (SyncBN) and non-NHWC calls, epsilons below
    `FUSED_MIN_EPSILON`, and layers built with `fused=False` (the factory's choice for a
    model XLA compiles: XLA fuses Keras' ops itself) take Keras' path unchanged. Variables
    and saved weights are Keras' own; the config adds `fused`.

    After a maskspine `Conv2D` (linked by `fold_batch_norm`, or found by a call on the
    conv's output in a functional model, so a loaded `.keras` file links again), the
    normalisation on the moving statistics is folded into that convolution (`folds`)."""

    def __init__(self, *, fused: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.fused = bool(fused)
        self.folded = False  # set by `fold_batch_norm`: folded into `self._conv` (`folds`)
        self._conv = None  # a weak reference to that Conv2D

    def get_config(self) -> dict:
        return {**super().get_config(), "fused": self.fused}

    def __call__(self, inputs, *args, **kwargs):
        # A symbolic call on a Conv2D's output (building or loading a functional model).
        history = getattr(inputs, "_keras_history", None)
        producer = getattr(history, "operation", None)
        if isinstance(producer, Conv2D) and producer.activation is keras.activations.linear:
            fold_batch_norm(producer, self)
        return super().__call__(inputs, *args, **kwargs)

    def _plain(self) -> bool:
        """Settings that the fused kernel and the fold both take: a fused layer on the last
        axis, without renormalisation, with an epsilon the kernel keeps as given."""
        return (
            self.fused
            and self.axis in (-1, 3)
            and not self.renorm
            and self.epsilon >= FUSED_MIN_EPSILON
        )

    def _fusable(self, inputs, mask) -> bool:
        return (
            self._plain()
            and mask is None
            and len(inputs.shape) == 4
            and not self.synchronized
            and inputs.dtype in (tf.float32, tf.bfloat16, tf.float16)
        )

    def folds(self, training) -> bool:
        """Whether a call with this `training` flag is folded into the Conv2D before it
        (`fold_batch_norm`): on the moving statistics (inference, or frozen), for a fused
        layer (not in a model built for XLA, which folds itself)."""
        return (
            self.folded
            and self._conv is not None
            and self._conv() is not None
            and self._plain()
            and not (training and self.trainable)
            and self.compute_dtype in FOLDED_DTYPES
        )

    def scale_and_shift(self) -> tuple:
        """(scale, shift), float32 [C]: the normalisation on the moving statistics as
        `x * scale + shift`, scale = gamma / sqrt(moving variance + epsilon) and
        shift = beta - moving mean x scale."""
        variance = tf.cast(self.moving_variance, tf.float32)
        scale = tf.math.rsqrt(variance + self.epsilon)
        if self.scale:
            scale *= tf.cast(self.gamma, tf.float32)
        shift = -tf.cast(self.moving_mean, tf.float32) * scale
        if self.center:
            shift += tf.cast(self.beta, tf.float32)
        return scale, shift

    def call(self, inputs, training=None, mask=None):
        if mask is None and self.folds(training):
            conv = self._conv()
            conv_inputs = conv.inputs_of(inputs)
            if conv_inputs is not None:  # `inputs` is that conv's output in this trace
                return conv.convolve_folded(conv_inputs, self)
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels])
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels])
        moving_mean = tf.cast(self.moving_mean, tf.float32)
        moving_variance = tf.cast(self.moving_variance, tf.float32)
        if not (training and self.trainable):
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs,
                gamma,
                beta,
                mean=moving_mean,
                variance=moving_variance,
                epsilon=self.epsilon,
                data_format="NHWC",
                is_training=False,
            )
            return tf.cast(outputs, self.compute_dtype)
        outputs, mean, unbiased = tf.compat.v1.nn.fused_batch_norm(
            inputs, gamma, beta, epsilon=self.epsilon, data_format="NHWC", is_training=True
        )
        variance = _biased_variance(unbiased, inputs)
        self.moving_mean.assign(moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(
            moving_variance * self.momentum + variance * (1.0 - self.momentum)
        )
        return tf.cast(outputs, self.compute_dtype)


def _biased_variance(unbiased, inputs):
    """The biased batch variance, float32 [C], that Keras keeps in its moving variance, from the
    fused kernel's `unbiased` one over the n = N x H x W values per channel of NHWC `inputs`:
    unbiased x (n - 1) / n, and 0 for n <= 1. The factor is a Python number where the shape is
    static (a trace of a training step then holds one multiplication per normalisation instead
    of about twenty ops of shape arithmetic), a tensor where it is not."""
    if None not in inputs.shape[:3]:
        count = inputs.shape[0] * inputs.shape[1] * inputs.shape[2]
        return unbiased * ((count - 1.0) / count) if count > 1 else tf.zeros_like(unbiased)
    shape = tf.shape(inputs)
    count = tf.cast(shape[0] * shape[1] * shape[2], tf.float32)
    return tf.where(count > 1.0, unbiased * ((count - 1.0) / count), 0.0)


@keras.saving.register_keras_serializable(package="maskspine")
class Conv2D(layers.Conv2D):
    """Keras' Conv2D into which the BatchNormalization after it can be folded
    (`fold_batch_norm`). When that normalisation runs on its moving statistics (inference,
    or frozen), it convolves this layer's input with the kernel scaled per output channel
    (in float32, then cast to the compute dtype) and adds the folded bias with `BiasAdd`
    (`convolve_folded`), instead of normalising this layer's output; in a traced function
    the unused plain convolution is pruned. TensorFlow fuses Conv2D + FusedBatchNorm (+ ReLU)
    into one oneDNN kernel only in float32, and that kernel is slow without AVX-512;
    Conv2D + BiasAdd (+ ReLU) it fuses in every precision. This layer's own output stays
    the plain convolution, so a model reading it (a feature extractor) gets what Keras'
    layer gives. Its variables and saved weights are Keras' own.

    `weight_gradient_parts` > 1 (training only): the kernel's gradient is the sum of that
    many `Conv2DBackpropFilter`s, each on a slice of the batch, which TensorFlow's inter-op
    pool runs at once; the forward convolution and the input's gradient are unchanged. For a
    convolution whose weight gradient nothing else can run beside (SpineNet's stem: the last
    op of the backward pass), so that one thread per op (`intra_op_threads: 1`) still keeps
    two cores busy. A batch of unknown size, or one the parts do not divide, takes Keras'
    gradient."""

    def __init__(self, *args, weight_gradient_parts: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        if int(weight_gradient_parts) < 1:
            raise ValueError(f"weight_gradient_parts must be >= 1, got {weight_gradient_parts}")
        self.weight_gradient_parts = int(weight_gradient_parts)
        self._folding = False  # a BatchNormalization folds into it: remember the calls
        self._calls = []  # [(outputs, inputs)] of the calls in the current trace
        self._calls_graph = None  # the graph of those tensors (None: eager)

    def get_config(self) -> dict:
        return {**super().get_config(), "weight_gradient_parts": self.weight_gradient_parts}

    def call(self, inputs, training=None):
        if training and self._splits_weight_gradient(inputs):
            outputs = self._convolve_split_gradient(inputs, self.weight_gradient_parts)
        else:
            outputs = super().call(inputs)
        if self._folding:
            graph = None if tf.executing_eagerly() else outputs.graph
            if graph is None or graph is not self._calls_graph:
                self._calls = []  # eager calls, or a new trace: the old tensors are dead
                self._calls_graph = graph
            self._calls.append((outputs, inputs))
        return outputs

    def _splits_weight_gradient(self, inputs) -> bool:
        """Whether `weight_gradient_parts` applies to this call: more than one part, a
        static batch they divide, NHWC, dilation 1 and no groups."""
        parts = self.weight_gradient_parts
        batch = inputs.shape[0]
        return (
            parts > 1
            and batch is not None
            and batch % parts == 0
            and all(rate == 1 for rate in self.dilation_rate)
            and self.groups == 1
            and self.data_format == "channels_last"
        )

    def _convolve_split_gradient(self, inputs, parts: int):
        """Keras' call (convolution, bias, activation) with the kernel's gradient summed
        over `parts` slices of the batch (`_splits_weight_gradient` says where it applies)."""
        strides = [1, *self.strides, 1]
        padding = self.padding.upper()
        kernel = tf.convert_to_tensor(self.kernel)  # the compute dtype under autocast

        @tf.custom_gradient
        def convolve(x, k):
            def gradient(dy):
                with tf.name_scope(f"{self.name}_split_weight_gradient"):  # in profiles
                    dx = tf.raw_ops.Conv2DBackpropInput(
                        input_sizes=tf.shape(x),
                        filter=k,
                        out_backprop=dy,
                        strides=strides,
                        padding=padding,
                    )
                    dk = tf.add_n(
                        [
                            tf.raw_ops.Conv2DBackpropFilter(
                                input=x_part,
                                filter_sizes=tf.shape(k),
                                out_backprop=dy_part,
                                strides=strides,
                                padding=padding,
                            )
                            for x_part, dy_part in zip(tf.split(x, parts), tf.split(dy, parts))
                        ]
                    )
                    return dx, dk

            return self.convolution_op(x, k), gradient

        outputs = convolve(inputs, kernel)
        if self.use_bias:
            outputs = ops.add(outputs, ops.reshape(self.bias, (1, 1, 1, self.filters)))
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def inputs_of(self, outputs):
        """The input of the call of this layer that returned `outputs` (the same tensor
        object) in the current trace or eager step, or None; forgets that call."""
        for i, (known, inputs) in enumerate(self._calls):
            if known is outputs:
                del self._calls[i]
                return inputs
        return None

    def convolve_folded(self, inputs, norm: BatchNormalization):
        """`norm(self(inputs))` on `norm`'s moving statistics as one convolution with the
        kernel scaled per output channel and a `BiasAdd`: NHWC `inputs` -> NHWC outputs in
        the compute dtype."""
        scale, shift = norm.scale_and_shift()
        kernel = tf.cast(tf.cast(self.kernel, tf.float32) * scale, self.compute_dtype)
        if self.use_bias:
            shift += tf.cast(self.bias, tf.float32) * scale
        outputs = self.convolution_op(inputs, kernel)
        return tf.nn.bias_add(outputs, tf.cast(shift, self.compute_dtype))


def fold_batch_norm(conv: Conv2D, norm: BatchNormalization) -> None:
    """Folds `norm` into `conv` where `norm.folds` says so: `norm` then convolves the input
    of the `conv` call whose output it is given (`Conv2D.convolve_folded`). `conv` has no
    activation."""
    if conv.activation is not keras.activations.linear:
        raise ValueError(f"{conv.name}: a Conv2D with an activation cannot fold {norm.name}")
    conv._folding = True
    norm._conv = weakref.ref(conv)
    norm.folded = True


def batch_norm(x, *, momentum: float, epsilon: float, name: str):
    """BatchNormalization with Keras-style `momentum` (moving-average decay); after a
    maskspine Conv2D it is folded into that convolution in inference (`fold_batch_norm`)."""
    return BatchNormalization(momentum=momentum, epsilon=epsilon, name=name)(x)


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
    weight_gradient_parts: int = 1,
    name: str,
):
    """Conv2D (no bias) -> BatchNorm -> optional activation.

    `padding` "same" is Keras' (for stride 2 on an even size: one more zero after than
    before); "symmetric" pads a strided conv with (k - 1) // 2 zeros before and the rest
    after, then convolves 'valid' (tensorflow/tpu `conv2d_fixed_padding`); both are 'same'
    at stride 1. `weight_gradient_parts`: the conv's (`Conv2D`), 1 for Keras' gradient.
    """
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    conv_padding = "same"
    if padding == "symmetric" and strides > 1:
        before = (kernel_size - 1) // 2
        after = kernel_size - 1 - before
        x = layers.ZeroPadding2D(((before, after), (before, after)), name=f"{name}_pad")(x)
        conv_padding = "valid"
    conv = Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=conv_padding,
        use_bias=False,
        kernel_initializer=KERNEL_INITIALIZER,
        kernel_regularizer=kernel_regularizer,
        weight_gradient_parts=weight_gradient_parts,
        name=f"{name}_conv",
    )
    x = batch_norm(conv(x), momentum=momentum, epsilon=epsilon, name=f"{name}_bn")
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
