"""`maskspine benchmark`: the table, the JSON, the synthetic training batch's contract."""

from __future__ import annotations

import json
import os
import statistics
import time

import numpy as np
import pytest
from model_fixtures import REPO, TINY_OVERRIDES
from typer.testing import CliRunner

from maskspine.benchmark import Measurement, format_table, synthetic_training_batch
from maskspine.cli.main import app
from maskspine.config import load_config

CONFIG = os.path.join(REPO, "configs", "shapes_demo.yaml")


@pytest.mark.slow  # seven traces of a tiny model: about a minute
def test_cli_times_inference_stages_and_a_training_step(tmp_path):
    args = ["benchmark", CONFIG, "--what", "infer", "--what", "train", "--runs", "1"]
    args += ["--batch-size", "1", "--json", str(tmp_path / "t.json")]
    for override in [
        o for o in TINY_OVERRIDES if not o.startswith(("coco_classes", "num_classes"))
    ]:
        args += ["--set", override]
    start = time.monotonic()
    result = CliRunner().invoke(app, args)
    elapsed = time.monotonic() - start
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].startswith("machine: ")
    # The tiny config's classes: square, disc, bar (without the background).
    assert "3 classes (and background), precision float32" in result.output
    rows = json.loads((tmp_path / "t.json").read_text())
    names = [(row["part"], row["name"]) for row in rows]
    assert names[0] == ("infer", "whole model") and names[-1] == ("train", "training step")
    assert len(names) == 7  # the whole model, five stages, the training step
    for row in rows:
        assert len(row["seconds"]) == 1 and row["images_per_call"] == 1  # --batch-size 1
        assert row["median_s"] == statistics.median(row["seconds"])
        # Timed calls happened inside this command: together not longer than it took.
        assert 0 < row["median_s"] < elapsed
    assert sum(row["median_s"] for row in rows if row["part"] != "data") < elapsed
    assert "RPN + proposals" in result.output and "images/s" in result.output
    assert "do not overlap" in result.output


def test_cli_times_the_input_pipeline(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKSPINE_DATA_DIR", str(tmp_path / "data"))
    from maskspine.data.shapes import ShapesSpec, ensure_shapes

    spec = ShapesSpec(num_train=8, num_validation=2, min_image_size=64, max_image_size=96)
    root = ensure_shapes(0, spec, data_dir=tmp_path / "data")
    args = ["benchmark", CONFIG, "--what", "data", "--runs", "2", "--batch-size", "2"]
    args += ["--data", str(root / "train"), "--json", str(tmp_path / "t.json")]
    args += ["--set", "img_width=128", "--set", "img_height=128"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (row,) = json.loads((tmp_path / "t.json").read_text())
    assert row["part"] == "data" and row["images_per_call"] == 20 * 2
    assert len(row["seconds"]) == 2 and row["images_per_s"] > 0


def test_unknown_part_and_missing_config_are_one_line():
    result = CliRunner().invoke(app, ["benchmark", "--what", "infer"])
    assert result.exit_code == 2 and "CONFIG" in result.output
    result = CliRunner().invoke(app, ["benchmark", CONFIG, "--what", "everything"])
    assert result.exit_code == 2


def test_synthetic_training_batch_obeys_the_contract():
    config = load_config(CONFIG, TINY_OVERRIDES)
    batch = synthetic_training_batch(config, batch_size=3, instances=5)
    assert batch["images"].shape == (3, 128, 128, 3)
    assert batch["gt_boxes"].shape == (3, config.num_gts, 4)
    assert batch["gt_masks"].shape == (3, config.num_gts, 28, 28)
    real = batch["gt_classes"] > 0
    assert real.sum() == 15 and (batch["gt_classes"][~real] == -1).all()
    boxes = batch["gt_boxes"][real]
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert boxes.min() >= 0 and boxes[:, 2].max() <= 128 and boxes[:, 3].max() <= 128
    assert set(np.unique(batch["gt_masks"])) == {0, 1}


def test_table_shares_are_of_the_whole_model_and_their_sum_is_said():
    rows = [
        Measurement("infer", "whole model", [2.0, 2.0, 4.0], 2),
        Measurement("infer", "backbone", [0.5], 2, share_of="whole model"),
        Measurement("infer", "heads", [1.2], 2, share_of="whole model"),
    ]
    table = format_table(rows)
    # 0.5 s of the median 2.0 s; 2 images in 2.0 s
    assert "25 %" in table and "60 %" in table and "1.00" in table
    assert "2 stages of the whole model do not overlap and sum to 85 % of it" in table


def test_table_gives_the_achieved_rate_and_the_share_of_the_peak():
    from maskspine.flops import FlopCount

    flops = FlopCount()
    flops.add("Conv2D", 30_000_000_000, dense=True)  # 0.3 s at 100 GFLOP/s
    flops.add("MatMul", 10_000_000_000, dense=True)  # 0.05 s at 200 GFLOP/s
    row = Measurement(
        "train", "training step", [0.7, 0.7, 0.7], 2, first_call=12.5, flops=flops,
        peaks={"conv": 100e9, "matmul": 200e9},
    )  # fmt: skip
    table = format_table([row])
    assert row.gflops_per_second == pytest.approx(40e9 / 0.7 / 1e9)
    assert row.share_of_peak == pytest.approx(0.35 / 0.7)
    assert "57.1" in table and "50 %" in table and "12.50" in table


def test_machine_line_says_when_the_kernels_are_eigens(monkeypatch):
    from maskspine.benchmark import machine_description

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    assert "Eigen's kernels (TF_ENABLE_ONEDNN_OPTS=0)" in machine_description()
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    line = machine_description()
    assert "Eigen" not in line and "oneDNN held to AVX2" in line


def test_the_machine_names_a_cpu_quota_that_allows_fewer_cpus(monkeypatch):
    from maskspine import benchmark, threads

    monkeypatch.setattr(threads, "affinity_cores", lambda: 16)
    monkeypatch.setattr(benchmark, "affinity_cores", lambda: 16)
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: 4)
    assert ", 16 cores (a CPU quota of 4), " in benchmark.machine_description()
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: None)
    assert ", 16 cores, " in benchmark.machine_description()
