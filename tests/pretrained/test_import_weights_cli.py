"""`maskspine import-weights` through the real Typer app, then `infer` and `eval` on the run
directory it writes (a tiny tensorflow/tpu SpineNet-49 checkpoint with the real names)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from checkpoint_fixtures import TINY_PRETRAINED_OVERRIDES, plausible, write_tpu_checkpoint
from test_import_weights import _tiny_variables
from typer.testing import CliRunner

from maskspine.cli.main import app
from maskspine.data.shapes import ShapesSpec, write_shapes_split


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    variables, _ = _tiny_variables("tpu", "49")
    rng = np.random.default_rng(0)
    values = {key: plausible(key, value.shape, rng) for key, value in variables.items()}
    folder = tmp_path_factory.mktemp("zoo") / "spinenet-49"
    write_tpu_checkpoint(str(folder / "model.ckpt-162050"), values)
    return folder


#: The padded NMS (exactness with the originals, tested in tests/modeling) costs seconds of
#: tracing; this test is about the commands, so it runs the default NMS.
FAST_NMS = ["test_cfg.rpn.nms_rule=combined", "test_cfg.rcnn.nms_rule=combined"]


def test_import_then_infer_and_eval_on_the_run_directory(checkpoint, tmp_path):
    run = tmp_path / "coco49"
    overrides = TINY_PRETRAINED_OVERRIDES + FAST_NMS
    sets = [arg for override in overrides for arg in ("--set", override)]
    code, out, err = invoke(
        "import-weights", checkpoint, "--format", "tpu", "--model", "49", "--output", run, *sets
    )
    assert code == 0, out + err
    assert "tensorflow/tpu (TF1 Saver) checkpoint" in out and "total             742" in out
    assert (run / "model.weights.h5").is_file() and (run / "config.yaml").is_file()

    spec = ShapesSpec(min_image_size=64, max_image_size=96, min_shape_size=16, max_shapes=3)
    write_shapes_split(tmp_path / "val", 3, seed=1, split_index=1, spec=spec)
    predictions = tmp_path / "predictions.json"
    code, out, err = invoke("infer", "--checkpoint", run, "--input", tmp_path / "val" / "data",
                            "--output", predictions)  # fmt: skip
    assert code == 0, out + err
    entries = json.loads(predictions.read_text())
    assert len(entries) == 3
    for entry in entries.values():
        for prediction in entry["predictions"]:
            label = prediction["class"]["label"]  # 0-based: COCO id - 1
            assert prediction["class"]["category_id"] == label + 1

    code, out, err = invoke("eval", "--checkpoint", run, "--val-data", tmp_path / "val",
                            "--data-dir", tmp_path / "cache", "--output", tmp_path / "eval")  # fmt: skip
    assert code == 0, out + err
    assert "Evaluate annotation type *segm*" in out


def test_import_errors_are_one_line_exit_2(checkpoint, tmp_path):
    code, out, err = invoke("import-weights", tmp_path / "missing", "--format", "tpu",
                            "--model", "49", "--output", tmp_path / "run")  # fmt: skip
    assert code == 2 and err.startswith("error: checkpoint not found")
    assert len(err.strip().splitlines()) == 1
    code, out, err = invoke("import-weights", checkpoint, "--format", "modelgarden",
                            "--model", "49", "--output", tmp_path / "run")  # fmt: skip
    assert code == 2 and "use --format tpu" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # an export with the originals' padded NMS traced: about a minute
def test_export_of_an_imported_run_serves_coco_category_ids(checkpoint, tmp_path):
    import tensorflow as tf

    run = tmp_path / "coco49"
    sets = [arg for override in TINY_PRETRAINED_OVERRIDES for arg in ("--set", override)]
    code, out, err = invoke(
        "import-weights", checkpoint, "--format", "tpu", "--model", "49", "--output", run, *sets
    )
    assert code == 0, out + err
    code, out, err = invoke("export", "--checkpoint", run, "--output", tmp_path / "exports")
    assert code == 0, out + err
    (version,) = (tmp_path / "exports").iterdir()
    labels = json.loads((version / "assets" / "labels.json").read_text())
    # COCO's 90 ids (the 10 unused ones included), label = id - 1, the names of the zoo
    assert [entry["category_id"] for entry in labels] == list(range(1, 91))
    assert [entry["label"] for entry in labels] == list(range(90))
    assert labels[0]["name"] == "person" and labels[11]["name"] == "N/A"
    served = tf.saved_model.load(str(version)).signatures["serving_default"]
    image = np.random.default_rng(3).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    outputs = served(images=tf.constant(image[None]))
    num = int(outputs["num_detections"][0])
    classes = outputs["detection_classes"].numpy()[0, :num]
    assert set(classes.tolist()) <= set(range(1, 91))
    boxes = outputs["detection_boxes"].numpy()[0, :num]  # original image pixels
    assert (boxes >= 0).all() and (boxes[:, 2] <= 90).all() and (boxes[:, 3] <= 120).all()
