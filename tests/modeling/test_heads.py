"""The R-CNN heads: output shapes, and the mask head's one class pick against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from maskspine.modeling.heads import BoxHead, MaskHead


@pytest.mark.parametrize("num_classes", [5, 1])
def test_mask_head_gives_each_roi_the_logits_of_its_class(num_classes):
    head = MaskHead(num_classes, num_convs=1, conv_out_channels=8, name="mask_head")
    head.build((None, None, 6, 6, 8))
    rng = np.random.default_rng(0)
    for weight in head.weights:  # random values, biases included
        weight.assign(rng.normal(size=weight.shape).astype(np.float32))
    features = tf.constant(rng.normal(size=(2, 3, 6, 6, 8)).astype(np.float32))
    classes = np.array([[0, 4, 2], [1, 3, -1]]) % max(num_classes, 5)
    classes[1, 2] = -1  # padding
    got = head(features, tf.constant(classes), training=False).numpy()
    assert got.shape == (2, 3, 12, 12)

    # Reference: every class channel of the 1x1 conv in numpy, then each RoI's own.
    x = features.numpy().reshape(6, 6, 6, 8)
    for layer in head.convs:
        x = layer(x, training=False)
    x = head.upsample(x).numpy()  # [6, 12, 12, 8]
    kernel = head.mask_logits.kernel.numpy().reshape(8, num_classes)
    everything = x @ kernel + head.mask_logits.bias.numpy()  # [6, 12, 12, classes]
    channels = np.maximum(classes, 0).reshape(-1) if num_classes > 1 else np.zeros(6, int)
    expected = everything[np.arange(6), :, :, channels].reshape(2, 3, 12, 12)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_box_head_shapes():
    head = BoxHead(4, num_shared_convs=1, conv_out_channels=8, fc_out_channels=16)
    head.build((None, None, 7, 7, 8))
    logits, deltas = head(tf.zeros([2, 5, 7, 7, 8]), training=False)
    assert logits.shape == (2, 5, 4) and deltas.shape == (2, 5, 4, 4)
