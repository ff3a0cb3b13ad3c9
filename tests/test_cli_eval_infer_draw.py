"""`maskspine eval`, `infer` and `draw` through the real Typer app, on a tiny checkpoint in the
run-directory layout training writes, and a few small shapes images."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil

import numpy as np
import pytest
from model_fixtures import REPO, TINY_OVERRIDES, write_run
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from typer.testing import CliRunner

from maskspine.cli.main import app
from maskspine.data.shapes import ShapesSpec, write_shapes_split

CLASSES = ["circle", "square", "triangle"]
CATEGORY_IDS = [1, 2, 3]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """`val/` (6 shapes images, COCO-format), `run/` (config.yaml + one checkpoint of a tiny
    fresh model) and a data cache folder."""
    from maskspine.config import load_config

    root = tmp_path_factory.mktemp("cli")
    spec = ShapesSpec(min_image_size=64, max_image_size=96, min_shape_size=16, max_shapes=3)
    write_shapes_split(root / "val", 6, seed=1, split_index=1, spec=spec)
    config = load_config(
        os.path.join(REPO, "configs", "shapes_demo.yaml"),
        [
            *TINY_OVERRIDES,
            f"coco_classes=[background, {', '.join(CLASSES)}]",
            f"category_ids={CATEGORY_IDS}",
            "test_batch_size=4",
            "test_cfg.rcnn.max_per_img=20",  # fewer detections: faster post-processing
        ],
    )
    write_run(root / "run", config)
    return root


def invoke(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def _coco_stats(labels, predictions, iou_type: str, category_id: int | None = None):
    """The reference numbers: pycocotools on the predictions file, run here directly."""
    gt = COCO(str(labels))
    records = json.loads(predictions.read_text())
    drop = "segmentation" if iou_type == "bbox" else "bbox"
    detections = gt.loadRes([{k: v for k, v in r.items() if k != drop} for r in records])
    evaluator = COCOeval(gt, detections, iou_type)
    if category_id is not None:
        evaluator.params.catIds = [category_id]
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator.stats


# --------------------------------------------------------------------------- eval


def test_eval_prints_summaries_and_writes_predictions_table_and_analysis(workspace, tmp_path):
    labels = workspace / "val" / "labels.json"
    predictions = tmp_path / "predictions.json"
    code, out, err = invoke(
        "eval",
        "--checkpoint",
        workspace / "run",
        "--val-data",
        workspace / "val",
        "--data-dir",
        workspace / "cache",
        "--predictions",
        predictions,
        "--analysis",
        tmp_path / "analysis",
        "--output",
        tmp_path / "out",
    )
    assert code == 0, out + err
    assert out.count(" Average Precision  (AP) @[") == 12  # 6 per type, bbox and segm
    assert out.count(" Average Recall     (AR) @[") == 12
    assert "Evaluate annotation type *bbox*" in out and "Evaluate annotation type *segm*" in out

    records = json.loads(predictions.read_text())
    assert records and {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(
        records[0]
    )
    bbox = float(re.search(r"Bbox eval result: (\S+)", out).group(1))
    segm = float(re.search(r"Segmentation eval result: (\S+)", out).group(1))
    assert bbox == pytest.approx(_coco_stats(labels, predictions, "bbox")[0], abs=1e-12)
    assert segm == pytest.approx(_coco_stats(labels, predictions, "segm")[0], abs=1e-12)

    # The per-class table, printed and as CSV, against pycocotools restricted to one class.
    for name in CLASSES:
        assert re.search(rf"^\s+\d+\s+{name}\s", out, re.MULTILINE)
    with open(tmp_path / "out" / "per_class_ap.csv") as file:
        rows = list(csv.DictReader(file))
    assert [row["name"] for row in rows] == CLASSES
    for row in rows:
        reference = _coco_stats(labels, predictions, "segm", int(row["category_id"]))
        value = float(row["segm_AP"]) if row["segm_AP"] else -1.0
        assert value == pytest.approx(max(reference[0], -1.0), abs=1e-9)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["segm"]["AP"] == pytest.approx(segm)
    assert metrics["checkpoint"].endswith("ckpt-00000001.weights.h5")

    for iou_type in ("bbox", "segm"):
        folder = tmp_path / "analysis" / iou_type
        assert (folder / "pr_curves_overall.png").is_file()
        assert (folder / "error_breakdown.csv").is_file()
        assert list(folder.glob("errors_overall_*.png"))

    # Existing predictions are evaluated without running the model: with the weights file
    # replaced by garbage, the same numbers come out.
    broken_run = tmp_path / "broken_run"
    shutil.copytree(workspace / "run", broken_run)
    (broken_run / "checkpoints" / "ckpt-00000001.weights.h5").write_bytes(b"not weights")
    code, again, err = invoke(
        "eval",
        "--checkpoint",
        broken_run,
        "--val-data",
        workspace / "val",
        "--predictions",
        predictions,
        "--output",
        tmp_path / "out2",
    )
    assert code == 0, again + err
    assert "the model is not run" in again
    for line in ("Bbox eval result", "Segmentation eval result"):
        pattern = rf"{line}: \S+"
        assert re.search(pattern, again).group(0) == re.search(pattern, out).group(0)
    assert (tmp_path / "out2" / "per_class_ap.csv").read_text() == (
        tmp_path / "out" / "per_class_ap.csv"
    ).read_text()


def test_eval_writes_into_the_run_directory_by_default(workspace, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(workspace / "run", run)
    predictions = tmp_path / "p.json"
    predictions.write_text("[]")  # no detections at all: every AP is 0
    code, out, err = invoke(
        "eval", "--checkpoint", run, "--val-data", workspace / "val", "--predictions", predictions
    )
    assert code == 0, out + err
    assert "Bbox eval result: 0.0" in out
    assert (run / "eval" / "per_class_ap.csv").is_file()


def test_eval_predictions_of_another_data_set_are_one_clear_error(workspace, tmp_path):
    predictions = tmp_path / "p.json"
    record = {"image_id": 999, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.9}
    predictions.write_text(json.dumps([record]))
    code, out, err = invoke(
        "eval", "--checkpoint", workspace / "run", "--val-data", workspace / "val",
        "--predictions", predictions, "--output", tmp_path / "out",
    )  # fmt: skip
    assert code == 2
    assert err.startswith(f"error: {predictions}: ") and "999" in err
    assert "Traceback" not in out + err


# --------------------------------------------------------------------------- checkpoints


def test_missing_checkpoint_is_one_line_naming_it(workspace, tmp_path):
    for command in ("eval", "infer"):
        args = ["--input", workspace / "val" / "data", "--output", tmp_path / "o.json"]
        code, out, err = invoke(
            command, "--checkpoint", tmp_path / "nowhere", *(args if command == "infer" else [])
        )
        assert code == 2
        assert err.strip() == f"error: checkpoint not found: {tmp_path / 'nowhere'}"


def test_mismatched_checkpoint_names_the_first_layer_how_many_and_the_keys(workspace, tmp_path):
    # Before: 22 lines ending in a cut Keras fragment.
    args = ["--input", workspace / "val" / "data", "--output", tmp_path / "o.json"]
    code, out, err = invoke(
        "infer", "--checkpoint", workspace / "run", *args, "--set", "bbox_head.fc_out_channels=64"
    )
    assert code == 2 and "Loaded" not in out
    (line,) = err.strip().splitlines()
    assert line.startswith("error: ") and "ckpt-00000001.weights.h5" in line
    # fc1, the class logits and the box deltas take the FC's width: three layers.
    assert "3 layer(s) differ, the first box_head_fc1 (kernel: checkpoint (1568, 128)" in line
    assert "bbox_head.fc_out_channels (checkpoint's run: 128, now: 64)" in line

    # A run whose saved config was edited: the keys are not known, the part is.
    run = tmp_path / "run"
    shutil.copytree(workspace / "run", run)
    config = (run / "config.yaml").read_text()
    assert "fc_out_channels: 128" in config
    (run / "config.yaml").write_text(config.replace("fc_out_channels: 128", "fc_out_channels: 64"))
    code, out, err = invoke("infer", "--checkpoint", run, *args)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert "3 layer(s) differ, the first box_head_fc1" in line and "bbox_head.*" in line
    assert "Traceback" not in out + err


def test_a_config_with_a_checkpoint_replaces_only_the_keys_it_sets(workspace, tmp_path):
    # Before: a CONFIG setting only test_cfg fell back to the defaults for the model keys and
    # the checkpoint did not fit.
    partial = tmp_path / "test_only.yaml"
    partial.write_text("test_cfg:\n  rcnn:\n    score_thr: 0.0\n    max_per_img: 2\n")
    image = sorted((workspace / "val" / "data").glob("*.png"))[0]
    output = tmp_path / "p.json"
    code, out, err = invoke(
        "infer", partial, "--checkpoint", workspace / "run", "--input", image, "--output", output
    )
    assert code == 0, out + err
    (entry,) = json.loads(output.read_text()).values()
    assert 0 < len(entry["predictions"]) <= 2  # the file's max_per_img, the run's model
    assert {p["class"]["name"] for p in entry["predictions"]} <= set(CLASSES)


def test_checkpoint_of_another_architecture_is_the_error_without_keras_noise(workspace, tmp_path):
    import warnings

    run = tmp_path / "run"
    shutil.copytree(workspace / "run", run)
    config = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(
        config.replace("filter_size_scale: 0.125", "filter_size_scale: 0.25")
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, out, err = invoke("eval", "--checkpoint", run, "--val-data", workspace / "val")
    assert code == 2
    assert err.startswith("error: ") and "does not fit the model" in err
    assert not [w for w in caught if "Skipping" in str(w.message)]
    assert len((out + err).splitlines()) < 30


def test_damaged_checkpoint_and_non_text_config_are_one_line_each(workspace, tmp_path):
    weights = tmp_path / "cut.weights.h5"
    data = (workspace / "run" / "checkpoints" / "ckpt-00000001.weights.h5").read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    shutil.copy(workspace / "run" / "config.yaml", tmp_path / "config.yaml")
    code, out, err = invoke("eval", "--checkpoint", weights, "--val-data", workspace / "val")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: {weights} is damaged or not a Keras weights file")
    binary = tmp_path / "model.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    code, out, err = invoke(
        "eval", binary, "--checkpoint", workspace / "run", "--val-data", workspace / "val"
    )
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: {binary} is not a text file")
    code, out, err = invoke("train", binary)
    assert code == 2 and err.startswith(f"error: {binary} is not a text file")


# --------------------------------------------------------------------------- infer


@pytest.fixture
def messy_images(workspace, tmp_path):
    """Good images in every mode, plus a damaged one, a text file and a sub-folder."""
    folder = tmp_path / "messy"
    (folder / "sub").mkdir(parents=True)
    source = sorted((workspace / "val" / "data").glob("*.png"))
    picture = Image.open(source[0]).convert("RGB")
    picture.save(folder / "photo.JPG", quality=90)
    picture.convert("L").save(folder / "gray.png")
    picture.convert("RGBA").save(folder / "rgba.png")
    picture.convert("P").save(folder / "palette.png")
    shutil.copy(source[1], folder / "sub" / "nested.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    return folder


def test_infer_writes_the_reference_json_and_exits_1_on_unreadable_images(
    workspace, messy_images, tmp_path
):
    output = tmp_path / "predictions.json"
    code, out, err = invoke(
        "infer", "--checkpoint", workspace / "run", "--input", messy_images,
        "--output", output, "--score-threshold", "0.1", "--batch-size", "3",
    )  # fmt: skip
    assert code == 1, out + err
    assert str(messy_images / "broken.jpg") in err
    entries = json.loads(output.read_text())
    expected = ["gray.png", "palette.png", "photo.JPG", "rgba.png"]
    assert sorted(entries) == sorted(str(messy_images / name) for name in expected)
    for path, entry in entries.items():
        with Image.open(path) as image:
            width, height = image.size
        assert set(entry) == {"height", "width", "predictions"}
        assert (entry["height"], entry["width"]) == (height, width)
        scores = [p["score"] for p in entry["predictions"]]
        assert scores == sorted(scores, reverse=True) and all(s >= 0.1 for s in scores)
        for prediction in entry["predictions"]:
            assert set(prediction) == {"bbox", "class", "mask", "score"}
            assert set(prediction["bbox"]) == {"x_min", "y_min", "width", "height"}
            box = prediction["bbox"]
            # Inside the image (up to float32 rounding of x_min + width).
            assert 0 <= box["x_min"] <= box["x_min"] + box["width"] <= width + 1e-3
            assert 0 <= box["y_min"] <= box["y_min"] + box["height"] <= height + 1e-3
            label = prediction["class"]["label"]
            assert prediction["class"] == {
                "label": label,
                "category_id": CATEGORY_IDS[label],
                "name": CLASSES[label],
            }
            assert prediction["mask"]["size"] == [height, width]
            rle = dict(prediction["mask"], counts=prediction["mask"]["counts"].encode())
            assert mask_utils.decode(rle).shape == (height, width)


def test_infer_one_file_exits_0_and_draw_makes_one_png_per_image(workspace, tmp_path):
    image = sorted((workspace / "val" / "data").glob("*.png"))[2]
    output = tmp_path / "one.json"
    code, out, err = invoke(
        "infer", "--checkpoint", workspace / "run", "--input", image, "--output", output
    )
    assert code == 0, out + err
    entries = json.loads(output.read_text())
    assert list(entries) == [str(image)]

    # Drawing: the image where the JSON says, then moved (found with --images), then missing.
    code, out, err = invoke(
        "draw", "--predictions", output, "--output", tmp_path / "drawn", "--score-threshold", "0"
    )
    assert code == 0, out + err
    (drawn,) = (tmp_path / "drawn").iterdir()
    with Image.open(image) as original, Image.open(drawn) as picture:
        width, height = original.size
        factor = int(np.ceil(480 / max(width, height)))
        assert picture.format == "PNG" and picture.size == (width * factor, height * factor)

    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(image, moved / image.name)
    entries = {f"/elsewhere/{image.name}": next(iter(entries.values()))}
    (tmp_path / "moved.json").write_text(json.dumps(entries))
    code, out, err = invoke(
        "draw", "--predictions", tmp_path / "moved.json", "--output", tmp_path / "drawn2",
        "--images", moved,
    )  # fmt: skip
    assert code == 0, out + err
    assert [p.name for p in (tmp_path / "drawn2").iterdir()] == [f"{image.stem}.png"]
    code, out, err = invoke(
        "draw", "--predictions", tmp_path / "moved.json", "--output", tmp_path / "drawn3"
    )
    assert code == 1
    assert f"/elsewhere/{image.name}" in err and "--images" in err


def test_draw_rejects_an_eval_predictions_file(tmp_path):
    path = tmp_path / "coco.json"
    path.write_text(json.dumps([{"image_id": 1, "category_id": 1, "score": 0.5}]))
    code, out, err = invoke("draw", "--predictions", path, "--output", tmp_path / "d")
    assert code == 2 and "maskspine infer" in err and "Traceback" not in out + err


# --------------------------------------------------------------------------- nothing overwritten


def test_outputs_that_are_inputs_are_refused_and_the_inputs_kept(workspace, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sorted((workspace / "val" / "data").glob("*.png"))[:2]:
        shutil.copy(path, photos / path.name)
    first = sorted(photos.iterdir())[0]
    before = {path: path.read_bytes() for path in photos.iterdir()}
    run = workspace / "run"
    # Before: the image was replaced by JSON.
    code, out, err = invoke("infer", "--checkpoint", run, "--input", first, "--output", first)
    assert code == 2 and "--output would overwrite the input" in err and "Loaded" not in out
    # Before: drawing into the images' folder replaced them with drawings.
    code, out, err = invoke("infer", "--checkpoint", run, "--input", photos, "--draw", photos)
    assert code == 2 and "--draw is the folder of the input" in err
    output = tmp_path / "p.json"
    code, out, err = invoke("infer", "--checkpoint", run, "--input", photos, "--output", output)
    assert code == 0, out + err
    code, out, err = invoke("draw", "--predictions", output, "--output", photos)
    assert code == 2 and "--output is the folder of the input" in err
    assert {path: path.read_bytes() for path in photos.iterdir()} == before


def test_many_inputs_globs_folders_and_drawings_in_one_pass(workspace, tmp_path):
    source = sorted((workspace / "val" / "data").glob("*.png"))
    (tmp_path / "in" / "deep").mkdir(parents=True)
    single = shutil.copy(source[0], tmp_path / "in" / "single.png")
    Image.open(source[1]).save(tmp_path / "in" / "b.webp", lossless=True)
    Image.open(source[2]).convert("RGB").save(tmp_path / "in" / "c.bmp")
    shutil.copy(source[3], tmp_path / "in" / "deep" / "d.png")
    output, drawn = tmp_path / "p.json", tmp_path / "drawn"
    code, out, err = invoke(
        "infer", "--checkpoint", workspace / "run", "--input", single,
        "--input", tmp_path / "in" / "*.webp", "--input", tmp_path / "in" / "deep",
        "--input", tmp_path / "in" / "*.bmp", "--output", output, "--draw", drawn,
        "--draw-threshold", "0",
    )  # fmt: skip
    assert code == 0, out + err
    keys = list(json.loads(output.read_text()))
    assert keys == [str(single), str(tmp_path / "in" / "b.webp"),
                    str(tmp_path / "in" / "deep" / "d.png"), str(tmp_path / "in" / "c.bmp")]  # fmt: skip
    assert "#" not in "".join(keys)  # webp and bmp are images, not videos
    assert sorted(p.name for p in drawn.iterdir()) == ["b.png", "c.png", "d.png", "single.png"]
    assert "Drew 4 image(s)" in out
    # The drawing is the picture `maskspine draw` makes of the same JSON.
    code, out, err = invoke("draw", "--predictions", output, "--output", tmp_path / "again",
                            "--score-threshold", "0")  # fmt: skip
    assert code == 0, out + err
    for picture in drawn.iterdir():
        again = tmp_path / "again" / picture.name
        assert np.array_equal(np.asarray(Image.open(picture)), np.asarray(Image.open(again)))
