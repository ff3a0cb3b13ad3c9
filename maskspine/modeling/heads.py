"""R-CNN heads on RoI features: the box head (convs + FC, class logits and box deltas)
and the mask head (FCN, per-class 28x28 mask logits).

Both take RoI features [B, N, S, S, C] (NHWC per RoI) and fold the RoIs into the
batch for the convolutions. Layer choices follow the reference: 3x3 convs without
bias followed by BatchNorm and ReLU, one FC of `fc_out_channels`, class-specific
box deltas, a 2x transposed conv (with bias) and a 1x1 conv with one channel per
class (background included) in the mask head. The options `conv_bias`, `fc_norm`,
`deconv_norm` and `activation` give the heads of tensorflow/tpu and Model Garden
(convs with bias before their BatchNorm, a BatchNorm after the FC and after the
transposed conv, swish for SpineNet-190).
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

from maskspine.modeling.layers import BatchNormalization, Conv2D, fold_batch_norm


def _fold(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """[B, N, ...] -> [B*N, ...], with the dynamic (B, N) to unfold later."""
    shape = tf.shape(x)
    return tf.reshape(x, tf.concat([[-1], shape[2:]], 0)), shape[:2]


def _unfold(x: tf.Tensor, batch_and_rois: tf.Tensor) -> tf.Tensor:
    return tf.reshape(x, tf.concat([batch_and_rois, tf.shape(x)[1:]], 0))


def _activation_layer(activation: str, name: str) -> layers.Layer:
    """ReLU as `layers.ReLU` (the weights files of existing models name it so), others as
    `layers.Activation`."""
    if activation == "relu":
        return layers.ReLU(name=name)
    return layers.Activation(activation, name=name)


def _conv_bn_relu_stack(
    count: int,
    filters: int,
    momentum: float,
    epsilon: float,
    name: str,
    use_bias: bool = False,
    activation: str = "relu",
) -> list[layers.Layer]:
    stack = []
    for i in range(count):
        conv = Conv2D(
            filters,
            3,
            padding="same",
            use_bias=use_bias,
            kernel_initializer=keras.initializers.VarianceScaling(2.0, "fan_out", "normal"),
            name=f"{name}_conv{i + 1}",
        )
        norm = BatchNormalization(momentum=momentum, epsilon=epsilon, name=f"{name}_bn{i + 1}")
        fold_batch_norm(conv, norm)
        stack += [conv, norm, _activation_layer(activation, f"{name}_{activation}{i + 1}")]
    return stack


def _build_stack(stack: list[layers.Layer], shape: tuple) -> tuple:
    """Builds conv / BN / ReLU layers in order from an NHWC shape; returns the output shape."""
    for layer in stack:
        layer.build(shape)
        shape = tuple(layer.compute_output_shape(shape))
    return shape


def _run_stack(stack: list[layers.Layer], x, training):
    """Applies conv / BN / ReLU layers in order; BatchNorm and the convs that fold it get
    the training flag."""
    for layer in stack:
        takes_training = isinstance(layer, (layers.BatchNormalization, Conv2D))
        x = layer(x, training=training) if takes_training else layer(x)
    return x


@keras.saving.register_keras_serializable(package="maskspine")
class BoxHead(layers.Layer):
    """Box head: `num_shared_convs` 3x3 conv-BN-ReLU, flatten, `num_shared_fcs` FC-ReLU,
    then class logits and box deltas.

    Call: roi_features [B, N, S, S, C] -> (class_logits [B, N, num_classes],
    box_deltas [B, N, K, 4] with K = num_classes, or 1 when class-agnostic).
    `num_classes` includes background (index 0). `conv_bias`: the convs have a bias;
    `fc_norm`: FC -> BatchNorm -> activation; `activation`: "relu" or "swish".
    """

    def __init__(
        self,
        num_classes: int,
        num_shared_convs: int = 4,
        conv_out_channels: int = 256,
        num_shared_fcs: int = 1,
        fc_out_channels: int = 1024,
        reg_class_agnostic: bool = False,
        norm_momentum: float = 0.99,
        norm_epsilon: float = 1e-3,
        conv_bias: bool = False,
        fc_norm: bool = False,
        activation: str = "relu",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.num_shared_convs = num_shared_convs
        self.conv_out_channels = conv_out_channels
        self.num_shared_fcs = num_shared_fcs
        self.fc_out_channels = fc_out_channels
        self.reg_class_agnostic = reg_class_agnostic
        self.norm_momentum = norm_momentum
        self.norm_epsilon = norm_epsilon
        self.conv_bias = conv_bias
        self.fc_norm = fc_norm
        self.activation = activation
        self.convs = _conv_bn_relu_stack(
            num_shared_convs,
            conv_out_channels,
            norm_momentum,
            norm_epsilon,
            "box_head",
            use_bias=conv_bias,
            activation=activation,
        )
        self.flatten = layers.Flatten(name="box_head_flatten")
        self.fcs = [
            layers.Dense(
                fc_out_channels,
                activation=None if fc_norm else activation,
                kernel_initializer="glorot_uniform",
                name=f"box_head_fc{i + 1}",
            )
            for i in range(num_shared_fcs)
        ]
        # With fc_norm: FC i -> fc_norms[i] -> activation.
        self.fc_norms = [
            BatchNormalization(
                momentum=norm_momentum, epsilon=norm_epsilon, name=f"box_head_fc{i + 1}_bn"
            )
            for i in range(num_shared_fcs if fc_norm else 0)
        ]
        self.class_logits = layers.Dense(
            num_classes,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
            name="box_head_class_logits",
        )
        self.box_classes = 1 if reg_class_agnostic else num_classes
        self.box_deltas = layers.Dense(
            self.box_classes * 4,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
            name="box_head_box_deltas",
        )

    def build(self, input_shape):
        """input_shape: [B, N, S, S, C]."""
        shape = _build_stack(self.convs, (None, *input_shape[2:]))
        shape = (None, shape[1] * shape[2] * shape[3])
        for i, layer in enumerate(self.fcs):
            layer.build(shape)
            shape = (None, self.fc_out_channels)
            if self.fc_norm:
                self.fc_norms[i].build(shape)
        self.class_logits.build(shape)
        self.box_deltas.build(shape)
        self.built = True

    def call(self, roi_features, training=None):
        x, batch_and_rois = _fold(roi_features)
        x = _run_stack(self.convs, x, training)
        x = self.flatten(x)
        for i, layer in enumerate(self.fcs):
            x = layer(x)
            if self.fc_norm:
                x = self.fc_norms[i](x, training=training)
                x = keras.activations.get(self.activation)(x)
        logits = _unfold(self.class_logits(x), batch_and_rois)
        deltas = self.box_deltas(x)
        deltas = tf.reshape(deltas, tf.concat([batch_and_rois, [self.box_classes, 4]], 0))
        return logits, deltas

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "num_shared_convs": self.num_shared_convs,
            "conv_out_channels": self.conv_out_channels,
            "num_shared_fcs": self.num_shared_fcs,
            "fc_out_channels": self.fc_out_channels,
            "reg_class_agnostic": self.reg_class_agnostic,
            "norm_momentum": self.norm_momentum,
            "norm_epsilon": self.norm_epsilon,
            "conv_bias": self.conv_bias,
            "fc_norm": self.fc_norm,
            "activation": self.activation,
        }


@keras.saving.register_keras_serializable(package="maskspine")
class MaskHead(layers.Layer):
    """Mask head: `num_convs` 3x3 conv-BN-ReLU, a 2x2 stride-2 transposed conv + ReLU,
    and a 1x1 conv with one mask-logit channel per class, of which each RoI computes only the
    channel of its own class (the one class pick: inference takes the detected class, the
    loss the target class; the other channels are never used).

    Call: (roi_features [B, K, S, S, C], classes [B, K] int contiguous labels, 0 or negative
    for padding) -> mask_logits [B, K, 2S, 2S] of each RoI's class (28x28 for the usual
    S = 14). A class-agnostic head (num_classes 1) gives its one channel to every RoI.
    `conv_bias`: the 3x3 convs have a bias; `deconv_norm`: transposed conv -> BatchNorm ->
    activation; `activation`: "relu" or "swish".
    """

    def __init__(
        self,
        num_classes: int,
        num_convs: int = 4,
        conv_out_channels: int = 256,
        norm_momentum: float = 0.99,
        norm_epsilon: float = 1e-3,
        conv_bias: bool = False,
        deconv_norm: bool = False,
        activation: str = "relu",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.num_convs = num_convs
        self.conv_out_channels = conv_out_channels
        self.norm_momentum = norm_momentum
        self.norm_epsilon = norm_epsilon
        self.conv_bias = conv_bias
        self.deconv_norm = deconv_norm
        self.activation = activation
        self.convs = _conv_bn_relu_stack(
            num_convs,
            conv_out_channels,
            norm_momentum,
            norm_epsilon,
            "mask_head",
            use_bias=conv_bias,
            activation=activation,
        )
        self.upsample = layers.Conv2DTranspose(
            conv_out_channels,
            2,
            strides=2,
            activation=None if deconv_norm else activation,
            kernel_initializer=keras.initializers.VarianceScaling(2.0, "fan_out", "normal"),
            name="mask_head_deconv",
        )
        self.upsample_norm = (
            BatchNormalization(
                momentum=norm_momentum, epsilon=norm_epsilon, name="mask_head_deconv_bn"
            )
            if deconv_norm
            else None
        )
        self.mask_logits = layers.Conv2D(
            num_classes,
            1,
            kernel_initializer=keras.initializers.VarianceScaling(2.0, "fan_out", "normal"),
            name="mask_head_logits",
        )

    def build(self, input_shape):
        """input_shape: [B, K, S, S, C]."""
        shape = _build_stack(self.convs, (None, *input_shape[2:]))
        self.upsample.build(shape)
        if self.upsample_norm is not None:
            self.upsample_norm.build((None, 2 * shape[1], 2 * shape[2], self.conv_out_channels))
        self.mask_logits.build((None, 2 * shape[1], 2 * shape[2], self.conv_out_channels))
        self.built = True

    def call(self, roi_features, classes, training=None):
        x, batch_and_rois = _fold(roi_features)
        x = _run_stack(self.convs, x, training)
        x = self.upsample(x)  # [N, M, M, C]
        if self.upsample_norm is not None:
            x = self.upsample_norm(x, training=training)
            x = keras.activations.get(self.activation)(x)
        # The 1x1 logits conv, one output channel per RoI: its class's kernel column.
        kernel = tf.reshape(self.mask_logits.kernel, [-1, self.num_classes])  # [C, classes]
        channel = tf.reshape(tf.maximum(tf.cast(classes, tf.int32), 0), [-1])
        if self.num_classes == 1:
            channel = tf.zeros_like(channel)
        weights = tf.cast(tf.gather(tf.transpose(kernel), channel), x.dtype)  # [N, C]
        bias = tf.cast(tf.gather(self.mask_logits.bias, channel), x.dtype)  # [N]
        logits = tf.einsum("nhwc,nc->nhw", x, weights) + bias[:, None, None]
        return _unfold(logits, batch_and_rois)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "num_convs": self.num_convs,
            "conv_out_channels": self.conv_out_channels,
            "norm_momentum": self.norm_momentum,
            "norm_epsilon": self.norm_epsilon,
            "conv_bias": self.conv_bias,
            "deconv_norm": self.deconv_norm,
            "activation": self.activation,
        }
