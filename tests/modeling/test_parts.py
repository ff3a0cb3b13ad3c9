"""The parts of Mask R-CNN (`modeling.factory`): each serializes (`get_config` /
`from_config` round trip) and gives the same outputs after the round trip; the model's own
config holds its parts and nothing of the application's config; conventions are options of
their parts, chosen by the factory from the config."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from model_fixtures import make_batch

from maskspine.modeling.factory import build_mask_rcnn, build_parts
from maskspine.modeling.mask_rcnn import PARTS, MaskRCNN


def _round_trip(part):
    return keras.saving.deserialize_keras_object(
        json.loads(json.dumps(keras.saving.serialize_keras_object(part)))
    )


def test_every_part_round_trips_through_its_config(tiny_config):
    parts = build_parts(tiny_config)
    assert set(PARTS) <= set(parts)
    for name in PARTS:
        part = parts[name]
        clone = _round_trip(part)
        assert type(clone) is type(part), name
        as_json = [json.dumps(p.get_config(), sort_keys=True) for p in (clone, part)]
        assert as_json[0] == as_json[1], name


def test_the_model_round_trips_and_computes_the_same(tiny_config):
    model = build_mask_rcnn(tiny_config)
    clone = _round_trip(model)
    clone.set_weights(model.get_weights())
    batch, _ = make_batch(1)
    ours, theirs = model(batch["images"]), clone(batch["images"])
    for key in ours:
        np.testing.assert_allclose(theirs[key], ours[key], atol=1e-6, err_msg=key)
    tensor_batch = {key: tf.constant(value) for key, value in batch.items()}
    a = model.compute_losses(tensor_batch, step=5)
    b = clone.compute_losses(tensor_batch, step=5)
    for key in a:
        assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-5), key


def test_the_models_config_is_its_parts_only(tiny_config):
    config = MaskRCNN.get_config(build_mask_rcnn(tiny_config))
    assert set(config) == {"name", "precision", "jit_compile", "parts"}
    text = json.dumps(config)
    # Application keys (paths, schedules, data) are not in it.
    for key in ("train_outputs", "lr_steps", "warmup_step", "train_dataset", "brief"):
        assert key not in text
    assert "img_mean" not in text and "pre_trained" not in text


def test_conventions_are_options_of_their_parts(tiny_config):
    tiny_config.test_cfg.rcnn.nms_rule = "padded"
    tiny_config.roi.roi_layer.aligned = False
    tiny_config.roi.level_assignment = "canonical"
    tiny_config.clip_boxes_to = "input"
    tiny_config.rpn.anchor_generator.ratio_convention = "width_over_height"
    parts = build_parts(tiny_config)
    assert parts["detection_generator"].get_config()["nms_rule"] == "padded"
    assert parts["roi_aligner"].get_config()["aligned"] is False
    assert parts["roi_aligner"].get_config()["level_assignment"] == "canonical"
    assert parts["mask_roi_aligner"].get_config()["level_assignment"] == "finest_scale"
    assert parts["image_window"].get_config()["clip_boxes_to"] == "input"
    assert parts["anchor_generator"].get_config()["ratio_convention"] == "width_over_height"


def test_jit_compile_chooses_the_compilable_kernels(tiny_config):
    default = build_parts(tiny_config)
    assert default["roi_aligner"].get_config()["method"] == "crop_and_resize"
    assert default["detection_generator"].get_config()["nms_implementation"] == "tf_image"
    assert default["jit_compile"] is False  # auto on a CPU: the graph
    tiny_config.jit_compile = "true"
    compiled = build_parts(tiny_config)
    assert compiled["jit_compile"] is True
    assert compiled["roi_aligner"].get_config()["method"] == "gather"
    assert compiled["mask_roi_aligner"].get_config()["method"] == "gather"
    assert compiled["mask_sampler"].get_config()["method"] == "gather"
    assert compiled["detection_generator"].get_config()["nms_implementation"] == "tiled"
    settings = compiled["proposal_generator"].get_config()
    assert settings["train"]["nms_implementation"] == settings["test"]["nms_implementation"]
    assert settings["test"]["nms_implementation"] == "tiled"
