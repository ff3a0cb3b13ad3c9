"""`train()` end to end on a small shapes set: the run directory, the reference's log
lines, checkpoints, resume, transfer to another class count."""

from __future__ import annotations

import csv
import json
import os
import re

import pytest
import yaml
from model_fixtures import REPO, RUN_OVERRIDES

from maskspine.config import load_config

CONFIG = os.path.join(REPO, "configs", "shapes_demo.yaml")


def run_training(overrides, tmp, data, **kwargs):
    from maskspine.training.trainer import train

    config = load_config(CONFIG, overrides)
    return train(config, train_data=data[0], val_data=data[1], out=tmp, verbose=0, **kwargs)


@pytest.fixture(scope="module")
def finished_run(small_shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    result = run_training(RUN_OVERRIDES, out, small_shapes, brief="t")
    return result


def test_run_directory_layout_and_resolved_config(finished_run):
    run = finished_run.run_dir
    assert re.fullmatch(r"\d{6}_MaskRCNN_t_128x128", run.name)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["coco_classes"] == ["background", "circle", "square", "triangle"]
    assert saved["num_classes"] == 4 and saved["category_ids"] == [1, 2, 3]
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    assert state["global_step"] == 6 and state["epoch"] == 2 and state["step_in_epoch"] == 0
    kept = sorted(p.name for p in (run / "checkpoints").glob("ckpt-*.weights.h5"))
    assert kept == ["ckpt-00000004.weights.h5", "ckpt-00000006.weights.h5"]  # keep_checkpoint_max=2
    assert not list(run.rglob(".tmp-*")), "no partial checkpoint files left behind"
    best = json.loads((run / "best_ckpt" / "best.json").read_text())
    assert [entry["epoch"] for entry in best] == [2]  # eval_every=2 over 2 epochs
    assert (run / "best_ckpt" / best[0]["file"]).is_file()
    assert list((run / "tensorboard").rglob("events.out.tfevents*"))
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and {"loss", "mask_loss", "rpn_cls_loss"} <= set(rows[0])


def test_log_has_the_reference_lines(finished_run):
    log = (finished_run.run_dir / "train.log").read_text()
    assert re.search(r"INFO: Number of parameters: \d+", log)
    assert "global batch 2" in log
    # log_every=2 over 3 steps per epoch: steps 2 and the epoch's last step 3
    steps = re.findall(r"epoch: (\d+), step: (\d+), loss: \d+\.\d{6},  lr: \d+\.\d{6}", log)
    assert steps == [("1", "2"), ("1", "3"), ("2", "2"), ("2", "3")]
    assert re.search(r"rpn_cls_loss: \d+\.\d+, rpn_box_loss: .*mask_loss: \d+\.\d+", log)
    assert re.search(r"Train epoch time: \d+\.\d+ ms, per step time: \d+\.\d+ ms", log)
    assert re.search(
        r"Result metrics for epoch 2: \{'bbox_mAP': [-\d.e]+, 'loss': [\d.]+, 'seg_mAP': [-\d.e]+\}",
        log,
    )


def test_resume_continues_at_the_next_step_without_repeating_epochs(finished_run, small_shapes):
    from maskspine.training.trainer import train

    run = finished_run.run_dir
    saved = load_config(run / "config.yaml")
    saved.epoch_size = 3  # one more epoch
    from maskspine.config import save_config

    save_config(saved, run / "config.yaml")
    result = train(saved, resume=run, verbose=0)
    assert result.global_step == 9 and result.epochs_done == 3
    log = (run / "train.log").read_text()
    assert (
        "Resuming from ckpt-00000006.weights.h5: epoch 3, step 0 of the epoch, global step 6" in log
    )
    epochs_logged = re.findall(r"epoch: (\d+), step: \d+, loss", log)
    assert epochs_logged.count("1") == 2 and epochs_logged.count("3") == 2
    with open(run / "metrics.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1", "2"]
    # and a finished run resumed again does nothing
    again = train(saved, resume=run, verbose=0)
    assert again.global_step == 9


def test_transfer_to_a_different_class_count(finished_run, small_shapes, tmp_path):
    from maskspine.checkpoints import transfer_weights
    from maskspine.modeling.mask_rcnn import build_mask_rcnn

    config = load_config(
        CONFIG,
        [o for o in RUN_OVERRIDES if not o.startswith("coco_classes")]
        + ["coco_classes=[background, a, b, c, d, e]", "num_classes=6", "finetune=1"],
    )
    model = build_mask_rcnn(config)
    report = transfer_weights(model, finished_run.run_dir)
    skipped = {name for name, _ in report.skipped}
    assert skipped == {
        "box_head/box_head_class_logits/kernel",
        "box_head/box_head_class_logits/bias",
        "box_head/box_head_box_deltas/kernel",
        "box_head/box_head_box_deltas/bias",
        "mask_head/mask_head_logits/kernel",
        "mask_head/mask_head_logits/bias",
    }
    assert len(report.loaded) == len(model.weights) - len(skipped)
    assert "skipped: shape" in report.table()
