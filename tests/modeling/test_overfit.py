"""End to end: a small Mask R-CNN overfits two synthetic images until it finds every
shape with the right class, box IoU > 0.8 and mask IoU > 0.7 (slow), and a quick
variant that only checks the losses fall (default run)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from model_fixtures import make_batch

from maskspine.boxes import box_overlaps
from maskspine.modeling.factory import build_mask_rcnn


def train(config, batch, steps: int, frozen_bn_steps: int = 0):
    """Adam on one batch; then optionally more steps with BatchNorm frozen.

    With two 128 px images per batch the coarsest levels normalise over a handful of
    values, so batch statistics and moving statistics differ a lot; finishing with BN in
    inference mode lets the weights adapt to the statistics inference will use."""
    keras.utils.set_random_seed(0)
    model = build_mask_rcnn(config)
    model.compile(optimizer=keras.optimizers.Adam(1e-3, global_clipnorm=10.0), jit_compile=False)
    first = model.compute_losses(batch, training=False)
    data = tf.data.Dataset.from_tensors(batch)
    history = model.fit(data.repeat(steps), epochs=1, verbose=0)
    if frozen_bn_steps:
        for layer in model._flatten_layers():
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
        model.compile(
            optimizer=keras.optimizers.Adam(5e-4, global_clipnorm=10.0), jit_compile=False
        )
        history = model.fit(data.repeat(frozen_bn_steps), epochs=1, verbose=0)
    return model, first, history


def paste_numpy(mask28: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Box-relative mask -> full-image bool mask, sampling at each pixel centre (test reference)."""
    full = np.zeros((size, size), bool)
    y1, x1, y2, x2 = box
    for y in range(size):
        for x in range(size):
            cy, cx = y + 0.5, x + 0.5
            if y1 <= cy < y2 and x1 <= cx < x2:
                i = min(int((cy - y1) / (y2 - y1) * mask28.shape[0]), mask28.shape[0] - 1)
                j = min(int((cx - x1) / (x2 - x1) * mask28.shape[1]), mask28.shape[1] - 1)
                full[y, x] = mask28[i, j] >= 0.5
    return full


@pytest.mark.slow  # 40 training steps: over a minute
def test_losses_fall_quickly(tiny_config):
    batch, _ = make_batch(2)
    _, first, history = train(tiny_config, batch, steps=40)
    last = history.history["loss"][-1]  # mean over the 40 steps
    assert last < 0.6 * float(first["loss"])
    assert history.history["rcnn_cls_loss"][-1] < float(first["rcnn_cls_loss"])


@pytest.mark.slow
def test_overfits_boxes_and_masks(tiny_config):
    from maskspine.training.trainer import _op_determinism

    tiny_config.test_cfg.rcnn.score_thr = 0.3
    batch, truth = make_batch(2)
    # Deterministic kernels: the same weights on every run (multi-threaded float sums
    # otherwise change the 350 steps' end point from run to run).
    with _op_determinism(True):
        model, _, _ = train(tiny_config, batch, steps=300, frozen_bn_steps=150)
    out = {k: v.numpy() for k, v in model(batch["images"]).items()}
    for b, instances in enumerate(truth):
        n = int(out["num_detections"][b])
        for label, box, full in instances:
            candidates = [i for i in range(n) if out["detection_classes"][b, i] == label]
            assert candidates, f"image {b}: class {label} not detected"
            best = candidates[0]  # highest score of that class
            assert box_overlaps(out["detection_boxes"][b, best], box)[0][0, 0] > 0.8
            pasted = paste_numpy(
                out["detection_masks"][b, best], out["detection_boxes"][b, best], 128
            )
            mask_iou = (pasted & full).sum() / (pasted | full).sum()
            assert mask_iou > 0.7, f"image {b}: class {label} mask IoU {mask_iou:.3f}"
