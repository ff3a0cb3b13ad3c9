"""A run directory written before the model became a composition of parts
(tests/fixtures/legacy_run, made by tests/fixtures/make_legacy_run.py with the code of that
time, which also recorded what it computed) keeps working: `infer` and the Python entry point
give the detections that code gave, `eval` its APs, `--pretrained` takes every weight,
`--resume` continues from its step with its optimizer state, and `export` serves the same
detections."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "legacy_run"
#: Where the fixture was written (its config.yaml records the data there).
WRITTEN_AT = "/work/main/tests/fixtures/legacy_run"


@pytest.fixture
def legacy(tmp_path) -> Path:
    """A copy of the fixture, its recorded paths pointed at the copy."""
    root = tmp_path / "legacy_run"
    shutil.copytree(FIXTURE, root)
    config = root / "run" / "config.yaml"
    config.write_text(config.read_text().replace(WRITTEN_AT, str(root)))
    return root


@pytest.fixture(scope="module")
def expected():
    return dict(np.load(FIXTURE / "expected.npz"))


def _outputs(model, expected):
    from maskspine.predict import predict_function

    outputs = predict_function(model)(expected["images"], expected["image_info"])
    return {key: np.asarray(value) for key, value in outputs.items()}


def assert_same_detections(ours, expected):
    np.testing.assert_array_equal(ours["num_detections"], expected["num_detections"])
    np.testing.assert_array_equal(ours["detection_classes"], expected["detection_classes"])
    np.testing.assert_allclose(ours["detection_boxes"], expected["detection_boxes"], atol=1e-3)
    np.testing.assert_allclose(ours["detection_scores"], expected["detection_scores"], atol=1e-5)
    np.testing.assert_allclose(ours["detection_masks"], expected["detection_masks"], atol=1e-4)


def test_infer_gives_the_detections_of_the_code_that_wrote_it(legacy, expected):
    import maskspine

    segmenter = maskspine.load(legacy / "run")
    assert str(segmenter.weights.relative_to(legacy / "run")) == str(expected["weights"])
    assert_same_detections(_outputs(segmenter.model, expected), expected)


def test_eval_gives_its_aps(legacy, expected):
    from maskspine.evaluation.runner import evaluate_checkpoint

    report = evaluate_checkpoint(
        legacy / "run",
        val_data=legacy / "data" / "val",
        output_dir=legacy / "eval",
        data_dir=legacy / "cache",
        progress=False,
        print_summary=False,
    )
    assert report.stats["bbox"]["AP"] == pytest.approx(float(expected["bbox_ap"]), abs=1e-6)
    assert report.stats["segm"]["AP"] == pytest.approx(float(expected["segm_ap"]), abs=1e-6)


def test_pretrained_takes_every_weight(legacy, expected):
    from maskspine.checkpoints import load_model, transfer_weights
    from maskspine.modeling.factory import build_mask_rcnn

    _, config, _ = load_model(legacy / "run")
    fresh = build_mask_rcnn(config)
    report = transfer_weights(fresh, legacy / "run")
    assert report.skipped == [] and len(report.loaded) == len(fresh.weights)
    assert_same_detections(_outputs(fresh, expected), expected)


@pytest.mark.slow  # two training steps and an evaluation
def test_resume_continues_from_its_step_with_its_optimizer(legacy, monkeypatch):
    from maskspine.config import load_config
    from maskspine.training.trainer import train

    monkeypatch.setenv("MASKSPINE_DATA_DIR", str(legacy / "cache"))
    run = legacy / "run"
    config = load_config(run / "config.yaml", ["epoch_size=3"])
    result = train(config, resume=run, verbose=0)
    log = (run / "train.log").read_text()
    assert "epoch: 3, step: 1," in log and "epoch: 3, step: 2," in log
    assert (run / "checkpoints" / "ckpt-00000006.weights.h5").is_file()
    assert result.run_dir == run


@pytest.mark.slow  # a SavedModel export
def test_export_serves_the_same_detections(legacy, expected):
    import tensorflow as tf

    from maskspine.checkpoints import load_model
    from maskspine.export import export_saved_model

    model, config, _ = load_model(legacy / "run")
    result = export_saved_model(model, config, legacy / "export", input_types="image_tensor")
    served = tf.saved_model.load(str(result.path)).signatures["serving_default"]
    from maskspine.data.images import read_image

    paths = sorted((legacy / "data" / "val" / "data").iterdir())
    for index, path in enumerate(paths):
        outputs = served(tf.constant(read_image(path)[None]))
        count = int(outputs["num_detections"][0])
        assert count == int(expected["num_detections"][index])
        np.testing.assert_allclose(
            outputs["detection_scores"][0][:count],
            expected["detection_scores"][index][:count],
            atol=1e-5,
        )
