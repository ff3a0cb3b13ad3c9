"""The whole detector: parameter count, inference contract, losses and gradients,
distribution, serialization, config checks."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from model_fixtures import REPO, SAMPLE_EVERYTHING, TINY_OVERRIDES, make_batch

from maskspine.config import ConfigError, load_config
from maskspine.modeling.factory import build_mask_rcnn
from maskspine.modeling.mask_rcnn import LOSS_NAMES
from maskspine.training.trainer import _op_determinism

#: The reference's log prints "Number of parameters: 40785333" for SpineNet-49
#: Mask R-CNN with 81 classes (its README, "Training process").
REFERENCE_PARAMS_49 = 40_785_333


def test_spinenet49_mask_rcnn_has_the_reference_parameter_count():
    config = load_config(os.path.join(REPO, "configs", "mask_rcnn_49_640.yaml"))
    model = build_mask_rcnn(config)
    assert model.count_params() == REFERENCE_PARAMS_49


def test_build_model_is_exported_at_the_top_level(tiny_config):
    import maskspine

    assert maskspine.build_model(tiny_config).count_params() > 0


def numpy_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one yxyx box with each of [N, 4] boxes."""
    top_left = np.maximum(box[:2], boxes[:, :2])
    bottom_right = np.minimum(box[2:], boxes[:, 2:])
    intersection = np.prod(np.clip(bottom_right - top_left, 0, None), axis=1)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area = (box[2] - box[0]) * (box[3] - box[1])
    return intersection / (area + areas - intersection)


def seeded_model(config, seed: int = 0):
    """A fresh model with seeded weights: its untrained class scores are about
    1 / num_classes, far above the tests' score threshold, so it detects."""
    keras.utils.set_random_seed(seed)
    config.test_cfg.rcnn.score_thr = 0.01
    return build_mask_rcnn(config)


def test_inference_outputs_follow_the_contract(tiny_config):
    model = seeded_model(tiny_config)
    batch, _ = make_batch(2)
    out = tf.function(model)(tf.constant(batch["images"]))
    rcnn = tiny_config.test_cfg.rcnn
    d = rcnn.max_per_img
    assert out["detection_boxes"].shape == (2, d, 4)
    assert out["detection_scores"].shape == (2, d)
    assert out["detection_classes"].shape == (2, d) and out["detection_classes"].dtype == tf.int32
    assert out["num_detections"].shape == (2,) and out["num_detections"].dtype == tf.int32
    assert out["detection_masks"].shape == (2, d, 28, 28)
    masks = out["detection_masks"].numpy()
    assert (masks >= 0).all() and (masks <= 1).all()
    classes = out["detection_classes"].numpy()
    for b in range(2):
        n = int(out["num_detections"][b])
        assert n > 0
        boxes = out["detection_boxes"][b, :n].numpy()
        assert (boxes >= 0).all() and (boxes <= 128).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()  # not empty
        assert ((classes[b, :n] >= 1) & (classes[b, :n] < tiny_config.num_classes)).all()
        assert (classes[b, n:] == 0).all()
        scores = out["detection_scores"][b, :n].numpy()
        assert (np.diff(scores) <= 1e-6).all() and (scores >= rcnn.score_thr).all()
        # Class-wise NMS: no two kept boxes of a class overlap more than its IoU threshold.
        for label in np.unique(classes[b, :n]):
            kept = boxes[classes[b, :n] == label]
            for i in range(len(kept) - 1):
                assert (numpy_iou(kept[i], kept[i + 1 :]) <= rcnn.iou_threshold + 1e-4).all()


def test_image_info_clips_boxes_to_the_scaled_image(tiny_config):
    model = seeded_model(tiny_config)
    batch, _ = make_batch(1)
    unclipped = model(batch["images"])
    n = int(unclipped["num_detections"][0])
    boxes = unclipped["detection_boxes"].numpy()[0, :n]
    assert ((boxes[:, 2] > 64) | (boxes[:, 3] > 96)).any()  # some reach beyond 64x96
    info = batch["image_info"].copy()
    info[0, 1] = [64, 96]  # image occupies the top-left 64x96 of the padded input
    out = model({"images": batch["images"], "image_info": info})
    n = int(out["num_detections"][0])
    assert n > 0
    boxes = out["detection_boxes"].numpy()[0, :n]
    assert (boxes[:, 2] <= 64 + 1e-4).all() and (boxes[:, 3] <= 96 + 1e-4).all()
    # Clipped, not merely smaller: some boxes end exactly on the scaled image's border.
    assert (np.isclose(boxes[:, 2], 64) | np.isclose(boxes[:, 3], 96)).any()


def test_losses_are_finite_and_every_weight_gets_a_gradient(tiny_config):
    model = build_mask_rcnn(tiny_config)
    batch, _ = make_batch(2)

    @tf.function
    def step(batch):
        with tf.GradientTape() as tape:
            losses = model.compute_losses(batch, training=True)
        return losses, tape.gradient(losses["loss"], model.trainable_weights)

    losses, gradients = step({k: tf.constant(v) for k, v in batch.items()})
    assert set(losses) == set(LOSS_NAMES)
    for name, value in losses.items():
        assert np.isfinite(value.numpy()), name
    parts = sum(float(losses[n]) for n in LOSS_NAMES if n != "loss")
    assert float(losses["loss"]) == pytest.approx(parts, rel=1e-5)
    missing = [w.path for w, g in zip(model.trainable_weights, gradients) if g is None]
    assert not missing


def test_fit_with_the_one_graph_step_trains_as_with_keras_own_function():
    """`MaskRCNN.make_train_function` (the batch read and the step in one graph) against
    Keras' own nested function on the same weights and data: the same losses and weights
    after an epoch of a finite data set, which ends where the data ends (three steps).
    Every anchor and RoI is sampled and TensorFlow's ops are deterministic, so nothing but
    the functions could tell the two apart."""
    config = load_config(
        os.path.join(REPO, "configs", "shapes_demo.yaml"), [*TINY_OVERRIDES, *SAMPLE_EVERYTHING]
    )
    batches = [make_batch(2, seed=seed)[0] for seed in range(3)]
    data = tf.data.Dataset.from_tensor_slices(
        {key: np.concatenate([batch[key] for batch in batches]) for key in batches[0]}
    ).batch(2)

    def compiled(weights=None):
        model = build_mask_rcnn(config)
        if weights is not None:
            model.set_weights(weights)
        model.compile(optimizer=keras.optimizers.SGD(0.01))
        return model

    ours = compiled()
    theirs = compiled(ours.get_weights())
    keras.Model.make_train_function(theirs)  # fit keeps a function already made
    keras_function = theirs.train_function
    with _op_determinism(True):  # the same kernels give the same sums run after run
        ours_history = ours.fit(data, verbose=0).history
        theirs_history = theirs.fit(data, verbose=0).history
    assert theirs.train_function is keras_function
    assert ours.train_function is not None and ours.train_function is not keras_function
    assert int(ours.optimizer.iterations) == int(theirs.optimizer.iterations) == 3
    for name in LOSS_NAMES:
        np.testing.assert_allclose(ours_history[name], theirs_history[name], rtol=1e-6)
    for a, b in zip(ours.weights, theirs.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7, err_msg=a.path)


def test_fit_keeps_keras_own_function_where_the_step_is_xla_compiled(tiny_config):
    """XLA cannot compile the iterator's read with the step: Keras' nested function then."""
    model = build_mask_rcnn(tiny_config)
    model.compile(optimizer=keras.optimizers.SGD(0.01), jit_compile=True)
    function = model.make_train_function()
    assert function is model.train_function
    assert function.__qualname__.startswith("TensorFlowTrainer.")


def test_loss_weights_from_the_config_are_applied(tiny_config):
    keras.utils.set_random_seed(3)
    model = build_mask_rcnn(tiny_config)
    batch, _ = make_batch(1)
    base = model.compute_losses(batch, training=False, step=0)
    tiny_config.mask_head.loss_mask.loss_weight = 2.0
    tiny_config.rpn.loss_cls.loss_weight = 0.5
    weighted_model = build_mask_rcnn(tiny_config)
    weighted_model.set_weights(model.get_weights())
    weighted = weighted_model.compute_losses(batch, training=False, step=0)
    assert float(weighted["mask_loss"]) == pytest.approx(2.0 * float(base["mask_loss"]), rel=1e-4)
    assert float(weighted["rpn_cls_loss"]) == pytest.approx(
        0.5 * float(base["rpn_cls_loss"]), rel=1e-4
    )


def test_weights_and_keras_file_round_trip(tiny_config, tmp_path):
    model = build_mask_rcnn(tiny_config)
    batch, _ = make_batch(1)
    expected = model(batch["images"])
    model.save_weights(tmp_path / "w.weights.h5")
    clone = build_mask_rcnn(tiny_config)
    clone.load_weights(tmp_path / "w.weights.h5")
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    for other in (clone, loaded):
        got = other(batch["images"])
        for key in expected:
            np.testing.assert_allclose(got[key].numpy(), expected[key].numpy(), atol=1e-5)


def test_channel_mismatch_is_a_config_error_when_it_loads():
    config = os.path.join(REPO, "configs", "shapes_demo.yaml")
    overrides = [o for o in TINY_OVERRIDES if not o.startswith("bbox_head.in_channels")]
    with pytest.raises(ConfigError, match=r"bbox_head.in_channels is 64 .* 32-channel"):
        load_config(config, [*overrides, "bbox_head.in_channels=64"])


def test_mask_size_must_match_the_mask_head_when_it_loads():
    config = os.path.join(REPO, "configs", "shapes_demo.yaml")
    with pytest.raises(ConfigError, match="mask_size"):
        load_config(config, [*TINY_OVERRIDES, "train_cfg.rcnn.mask_size=14"])


def test_classes_from_data_must_be_resolved_first():
    config = load_config(os.path.join(REPO, "configs", "shapes_demo.yaml"))
    with pytest.raises(ConfigError, match="from_data"):
        build_mask_rcnn(config)


def test_sync_bn_synchronises_the_chosen_parts(tiny_config):
    tiny_config.backbone.norm_cfg.type = "SyncBN"
    model = build_mask_rcnn(tiny_config)
    flags = {
        name: {
            layer.synchronized
            for layer in part._flatten_layers()
            if isinstance(layer, keras.layers.BatchNormalization)
        }
        for name, part in (("backbone", model.backbone), ("box_head", model.box_head))
    }
    assert flags == {"backbone": {True}, "box_head": {False}}
    batch, _ = make_batch(1)
    assert np.isfinite(float(model.compute_losses(batch, training=True)["loss"]))


def test_unknown_norm_type_is_a_config_error():
    with pytest.raises(ConfigError, match=r"mask_head.norm_cfg.type must be one of BN, SyncBN"):
        load_config(
            os.path.join(REPO, "configs", "mask_rcnn_49_640.yaml"), ["mask_head.norm_cfg.type=GN"]
        )
