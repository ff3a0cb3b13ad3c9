"""The main job, as the README runs it: `maskspine train configs/shapes_demo.yaml` on the
embedded shapes set (generated here), its whole recipe, and the accuracy the README states:
at least 0.7 segm mAP on the validation split (measured by pycocotools in the run's own
evaluation)."""

from __future__ import annotations

import os
import time

import pytest
from model_fixtures import REPO


@pytest.mark.slow  # the whole demo: 4-5 minutes alone on a 2-core AVX-512 host
def test_the_main_job_reaches_its_accuracy(tmp_path, monkeypatch):
    from maskspine.config import load_config
    from maskspine.training.trainer import train

    monkeypatch.setenv("MASKSPINE_DATA_DIR", str(tmp_path / "data"))
    start = time.monotonic()
    config = load_config(os.path.join(REPO, "configs", "shapes_demo.yaml"))
    result = train(config, out=tmp_path / "runs", verbose=0)
    minutes = (time.monotonic() - start) / 60
    final = result.last_evaluation
    assert final is not None and final["epoch"] == config.epoch_size
    print(f"demo: {minutes:.1f} min, bbox {final['bbox_mAP']:.4f}, segm {final['seg_mAP']:.4f}")
    assert final["seg_mAP"] >= 0.7, final
    assert final["bbox_mAP"] >= 0.7, final
