"""`maskspine data prepare | inspect | show` through the real Typer app."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from maskspine.cli.main import app


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKSPINE_DATA_DIR", str(tmp_path / "cache"))
    runner = CliRunner()

    def invoke(*args: str):
        result = runner.invoke(app, ["data", *args])
        output = result.output + (getattr(result, "stderr", "") or "")
        return result.exit_code, output

    return invoke


def test_inspect_usable_data_exits_0_and_lists_problems(run, messy_folder):
    code, output = run("inspect", str(messy_folder))
    assert code == 0, output
    assert "images: 6 usable of 9 listed" in output
    for expected in ("image broken.jpg", "image missing.png", "annotation 5", "annotation 6"):
        assert expected in output
    assert "usable: yes" in output


def test_inspect_unknown_category_exits_1_naming_the_annotation(run, messy_folder):
    labels = json.loads((messy_folder / "labels.json").read_text())
    labels["annotations"][2]["category_id"] = 555
    (messy_folder / "labels.json").write_text(json.dumps(labels))
    code, output = run("inspect", str(messy_folder), "--no-decode")
    assert code == 1
    assert "annotation 3: category_id 555" in output


def test_missing_folder_is_one_clear_line_exit_2(run, tmp_path):
    code, output = run("inspect", str(tmp_path / "absent"))
    assert code == 2
    assert "error:" in output and "absent" in output and "Traceback" not in output


def test_plain_coco_layout_needs_both_options(run, messy_folder):
    code, output = run(
        "inspect",
        "--images",
        str(messy_folder / "data"),
        "--annotations",
        str(messy_folder / "labels.json"),
    )
    assert code == 0, output
    code, _ = run("inspect", "--images", str(messy_folder / "data"))
    assert code == 2


def test_prepare_writes_shards_and_reports(run, messy_folder, tmp_path):
    code, output = run("prepare", str(messy_folder), "--out", str(tmp_path / "prepared"))
    assert code == 0, output
    assert "6 images; 3 skipped" in output
    assert list((tmp_path / "prepared").glob("prepared/*/coco_folder/1.0.0/dataset_info.json"))


def test_prepare_unknown_category_is_a_clean_error(run, messy_folder):
    labels = json.loads((messy_folder / "labels.json").read_text())
    labels["annotations"][0]["category_id"] = 8
    (messy_folder / "labels.json").write_text(json.dumps(labels))
    code, output = run("prepare", str(messy_folder))
    assert code == 2
    assert "annotation 1 (category_id 8)" in output and "Traceback" not in output


def test_show_draws_samples_as_pngs(run, colour_folder, tmp_path):
    code, output = run(
        "show", str(colour_folder), "--output", str(tmp_path / "plain"), "--count", "2"
    )
    assert code == 0, output
    drawn = sorted((tmp_path / "plain").glob("*.png"))
    assert len(drawn) == 2
    assert Image.open(drawn[0]).size[0] >= 160
    code, output = run(
        "show",
        str(colour_folder),
        "--output",
        str(tmp_path / "augmented"),
        "--count",
        "3",
        "--augmented",
        "--set",
        "img_height=128",
        "--set",
        "img_width=128",
        "--set",
        "batch_size=1",
    )
    assert code == 0, output
    assert len(list((tmp_path / "augmented").glob("augmented_*.png"))) == 3
