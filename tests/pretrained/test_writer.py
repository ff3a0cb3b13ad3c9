"""`maskspine.pretrained.writer`: a run of a Model Garden-flavour model written as a Model
Garden checkpoint imports back (`import_weights --format modelgarden`) to the same weights,
and a run of another flavour is refused."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from checkpoint_fixtures import TINY_PRETRAINED_OVERRIDES

from maskspine.checkpoints import load_model, save_weights_atomic
from maskspine.config import load_config, save_config
from maskspine.modeling.factory import build_mask_rcnn
from maskspine.pretrained import WeightsImportError, import_weights
from maskspine.pretrained import pretrained_config_path as config_path
from maskspine.pretrained.writer import write_run_as_modelgarden


def _run(root, config):
    model = build_mask_rcnn(config)
    rng = np.random.default_rng(0)
    for weight in model.weights:  # values that tell the weights apart
        weight.assign(rng.normal(size=weight.shape).astype(np.float32))
    save_config(config, root / "config.yaml")
    save_weights_atomic(model, root / "checkpoints" / "ckpt-00000001.weights.h5")
    return model


def test_a_modelgarden_run_round_trips_through_its_checkpoint(tmp_path):
    config = load_config(config_path("modelgarden", "49"), TINY_PRETRAINED_OVERRIDES)
    model = _run(tmp_path / "run", config)
    prefix, count = write_run_as_modelgarden(tmp_path / "run", tmp_path / "mg" / "ckpt-1")
    keys = [name for name, _ in tf.train.list_variables(prefix)]
    assert sum(key.startswith("model/") for key in keys) == count == len(model.weights)
    import_weights(
        prefix, format="modelgarden", model="49", output=tmp_path / "back",
        overrides=TINY_PRETRAINED_OVERRIDES,
    )  # fmt: skip
    back, _, _ = load_model(tmp_path / "back")
    for ours, theirs in zip(model.weights, back.weights, strict=True):
        assert ours.path == theirs.path
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def test_a_run_of_another_flavour_is_refused(tmp_path, tiny_config):
    _run(tmp_path / "run", tiny_config)
    with pytest.raises(WeightsImportError, match="not a Model Garden flavour"):
        write_run_as_modelgarden(tmp_path / "run", tmp_path / "mg" / "ckpt-1")
