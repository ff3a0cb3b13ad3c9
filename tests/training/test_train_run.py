"""`train()` end to end on a small shapes set: the run directory, the reference's log
lines, checkpoints, resume, transfer to another class count."""

from __future__ import annotations

import csv
import json
import os
import re

import numpy as np
import pytest
import yaml
from model_fixtures import REPO, RUN_OVERRIDES

from maskspine.config import load_config

CONFIG = os.path.join(REPO, "configs", "shapes_demo.yaml")


def run_training(overrides, tmp, data, **kwargs):
    from maskspine.training.trainer import train

    config = load_config(CONFIG, overrides)
    return train(config, train_data=data[0], val_data=data[1], out=tmp, verbose=0, **kwargs)


class FakeMLflow:
    """Records what training sends to MLflow (MLflow itself is not a dependency)."""

    def __init__(self):
        self.calls = []
        self.run = None

    def active_run(self):
        return self.run

    def start_run(self, run_name):
        self.run = run_name
        self.calls.append(("start_run", run_name))

    def end_run(self):
        self.calls.append(("end_run", self.run))
        self.run = None

    def log_params(self, params):
        self.calls.append(("log_params", params))

    def log_metrics(self, metrics, step):
        self.calls.append(("log_metrics", step, metrics))

    def log_artifact(self, path, artifact_path=None):
        self.calls.append(("log_artifact", path, artifact_path))


@pytest.fixture(scope="module")
def fake_mlflow():
    import sys

    fake = FakeMLflow()
    saved = sys.modules.get("mlflow")
    sys.modules["mlflow"] = fake
    yield fake
    if saved is None:
        del sys.modules["mlflow"]
    else:
        sys.modules["mlflow"] = saved


@pytest.fixture(scope="module")
def prepared_validation(small_shapes, tmp_path_factory):
    """The small validation split as a prepared data set (a directory of TFDS shards)."""
    from maskspine.data import prepare_source

    data_dir = tmp_path_factory.mktemp("prepared")
    return str(prepare_source(small_shapes[1], training=False, data_dir=data_dir).directory)


@pytest.fixture(scope="module")
def finished_run(small_shapes, prepared_validation, tmp_path_factory, fake_mlflow):
    # Validation on a prepared data set: its ground truth is the labels.json it remembers.
    out = tmp_path_factory.mktemp("runs")
    data = (small_shapes[0], prepared_validation)
    result = run_training([*RUN_OVERRIDES, "mlflow=true"], out, data, brief="t")
    return result


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A copy of the finished run that a test may change."""
    import shutil

    copy = tmp_path / "runs" / finished_run.run_dir.name
    shutil.copytree(finished_run.run_dir, copy)
    return copy


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
    assert len(rows) == 2 and {"loss", "mask_loss", "rpn_cls_loss", "lr"} <= set(rows[0])
    # epochs numbered as in the log; the mAP columns in every row, empty without evaluation
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert rows[0]["val_seg_mAP"] == "" and rows[0]["val_bbox_mAP"] == ""
    assert float(rows[1]["val_seg_mAP"]) == pytest.approx(finished_run.last_evaluation["seg_mAP"])
    assert "val_loss" not in rows[0]


def test_written_files_get_the_umask_mode_not_0600(finished_run):
    import stat

    umask = os.umask(0)
    os.umask(umask)
    expected = 0o666 & ~umask
    run = finished_run.run_dir
    for path in (
        run / "config.yaml",
        run / "metrics.csv",
        run / "checkpoints" / "state.json",
        run / "best_ckpt" / "best.json",
    ):
        assert stat.S_IMODE(path.stat().st_mode) == expected, path


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


@pytest.mark.slow  # a resumed training run: over a minute
def test_resume_continues_at_the_next_step_without_repeating_epochs(run_copy):
    from maskspine.training.trainer import train

    run = run_copy
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
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1", "2", "3"]
    # and a finished run resumed again does nothing
    again = train(saved, resume=run, verbose=0)
    assert again.global_step == 9


def test_transfer_to_a_different_class_count(finished_run, small_shapes, tmp_path):
    from maskspine.checkpoints import transfer_weights
    from maskspine.modeling.factory import build_mask_rcnn

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


def test_finetune_resets_class_layers_even_when_shapes_match(finished_run):
    from maskspine.checkpoints import CLASS_LAYERS, load_model, transfer_weights

    trained, config, _ = load_model(finished_run.run_dir)
    from maskspine.modeling.factory import build_mask_rcnn

    model = build_mask_rcnn(config)  # same classes, fresh weights
    report = transfer_weights(model, finished_run.run_dir, fresh_class_layers=True)
    assert {name for name, _ in report.skipped} == {
        f"{head}/{layer}/{var}"
        for head, layer in (
            ("box_head", CLASS_LAYERS[0]),
            ("box_head", CLASS_LAYERS[1]),
            ("mask_head", CLASS_LAYERS[2]),
        )
        for var in ("kernel", "bias")
    }
    by_path = {w.path: w.numpy() for w in trained.weights}
    for weight in model.weights:
        if weight.path in report.loaded:
            np.testing.assert_array_equal(weight.numpy(), by_path[weight.path])


def test_mlflow_gets_params_metrics_and_the_best_checkpoint(finished_run, fake_mlflow):
    kinds = [call[0] for call in fake_mlflow.calls]
    assert kinds[0] == "start_run" and kinds[-1] == "end_run"
    params = next(call[1] for call in fake_mlflow.calls if call[0] == "log_params")
    assert params["backbone.arch"] == "49" and params["batch_size"] == "2"
    metrics = [call for call in fake_mlflow.calls if call[0] == "log_metrics"]
    assert [call[1] for call in metrics[:2]] == [1, 2]
    assert "loss" in metrics[0][2] and "val_seg_mAP" in metrics[1][2]
    artifacts = [call[1] for call in fake_mlflow.calls if call[0] == "log_artifact"]
    assert any("best_ckpt" in path and path.endswith(".weights.h5") for path in artifacts)


def test_mlflow_missing_is_a_clear_error(monkeypatch):
    import sys

    from maskspine.training import TrainingError
    from maskspine.training.callbacks import import_mlflow

    monkeypatch.setitem(sys.modules, "mlflow", None)  # import fails as when not installed
    with pytest.raises(TrainingError, match="pip install mlflow"):
        import_mlflow()


def test_resume_with_set_extends_the_run_and_records_the_change(run_copy, monkeypatch):
    from typer.testing import CliRunner

    from maskspine.cli.main import app
    from maskspine.training import trainer

    starts = []  # the batch each fit's data starts at
    original = trainer.build_dataset

    def recording(*args, **kwargs):
        starts.append(kwargs.get("start_batch"))
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer, "build_dataset", recording)
    result = CliRunner().invoke(
        app, ["train", "--resume", str(run_copy), "--set", "epoch_size=3", "--set", "log_every=1"]
    )
    assert result.exit_code == 0, result.output
    state = json.loads((run_copy / "checkpoints" / "state.json").read_text())
    assert state["global_step"] == 9 and state["epoch"] == 3
    saved = load_config(run_copy / "config.yaml")
    assert saved.epoch_size == 3 and saved.log_every == 1
    (record,) = [json.loads(line) for line in (run_copy / "config_changes.jsonl").open()]
    assert record["changes"] == {"epoch_size": [2, 3], "log_every": [2, 1]}
    log = (run_copy / "train.log").read_text()
    assert "Resuming with changed settings" in log and "epoch_size: 2 -> 3" in log
    assert re.findall(r"epoch: 3, step: (\d+), loss", log) == ["1", "2", "3"]
    assert starts == [6]  # the data continues at the step the run reached


def test_resume_refuses_changes_the_checkpoints_depend_on(run_copy):
    from typer.testing import CliRunner

    from maskspine.cli.main import app

    before = sorted(p.name for p in run_copy.rglob("*"))
    result = CliRunner().invoke(
        app,
        ["train", "--resume", str(run_copy), "--set", "img_width=256", "--set",
         "backbone.filter_size_scale=0.25", "--set", "epoch_size=3"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "cannot resume" in result.output
    assert "img_width: 128 -> 256" in result.output
    assert "backbone.filter_size_scale: 0.125 -> 0.25" in result.output
    assert "epoch_size" not in result.output  # allowed: not among the refused keys
    assert sorted(p.name for p in run_copy.rglob("*")) == before  # nothing written


def test_rerun_with_another_config_is_refused_with_the_ways_forward(run_copy, small_shapes):
    from maskspine.training import TrainingError

    out = run_copy.parent
    with pytest.raises(TrainingError) as raised:
        run_training([*RUN_OVERRIDES, "lr=0.02"], out, small_shapes, brief="t")
    message = str(raised.value)
    assert "lr: 0.01 -> 0.02" in message
    assert f"--resume {run_copy}" in message and "--brief" in message


@pytest.mark.slow  # a resumed training run: over a minute
def test_damaged_latest_checkpoint_falls_back_to_the_newest_good_one(run_copy):
    from maskspine.training.trainer import train

    latest = run_copy / "checkpoints" / "ckpt-00000006.weights.h5"
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 3])  # a copy cut short
    config = load_config(run_copy / "config.yaml", ["epoch_size=3"])
    result = train(config, resume=run_copy, verbose=0)
    log = (run_copy / "train.log").read_text()
    assert "ckpt-00000006.weights.h5 is damaged" in log
    assert "resuming from the newest good one, ckpt-00000004.weights.h5" in log
    assert (run_copy / "checkpoints" / "ckpt-00000006.weights.h5.damaged").is_file()
    # from step 4 (epoch 2, step 1): the rest of epoch 2, then epoch 3
    assert result.global_step == 9 and result.epochs_done == 3
    assert "Resuming from ckpt-00000004.weights.h5: epoch 2, step 1 of the epoch" in log


@pytest.mark.slow  # two training runs from scratch: two minutes
def test_deterministic_runs_give_identical_losses(small_shapes, tmp_path):
    from tensorflow.python.framework import config as tf_config

    overrides = [*RUN_OVERRIDES, "deterministic=true", "epoch_size=1", "run_eval=0"]
    first = run_training(overrides, tmp_path / "a", small_shapes, brief="d")
    second = run_training(overrides, tmp_path / "b", small_shapes, brief="d")
    assert first.history["loss"] == second.history["loss"]
    for name in ("rpn_cls_loss", "rcnn_cls_loss", "mask_loss"):
        assert first.history[name] == second.history[name]
    assert not tf_config.is_op_determinism_enabled()  # the run's setting, not the process's


def _step_losses(run_dir) -> dict[tuple[int, int], str]:
    """{(epoch, step): the log line's losses} of every step the run's train.log records."""
    found = {}
    for line in (run_dir / "train.log").read_text().splitlines():
        match = re.search(r"epoch: (\d+), step: (\d+), (loss: .*)$", line)
        if match:
            found[(int(match.group(1)), int(match.group(2)))] = match.group(3)
    return found


@pytest.mark.slow  # an uninterrupted run, a run stopped and a resume: about three minutes
def test_a_resumed_run_samples_what_the_uninterrupted_run_sampled(small_shapes, tmp_path):
    """The RPN and R-CNN samplers draw from (seed, global step, replica): the steps after a
    resume draw the anchors and RoIs the uninterrupted run drew, so with deterministic
    kernels their losses are the uninterrupted run's, to the log's six decimals."""
    from maskspine.config import load_config

    overrides = [
        *RUN_OVERRIDES,
        "deterministic=true",
        "run_eval=0",
        "log_every=1",
        "lr_type=multistep",
        "lr_steps=[100]",  # a learning rate that does not depend on the run's length
        "epoch_size=2",
    ]
    whole = run_training(overrides, tmp_path / "whole", small_shapes, brief="s").run_dir
    stopped = run_training(
        [*overrides, "epoch_size=1"], tmp_path / "parts", small_shapes, brief="s"
    ).run_dir
    from maskspine.training.trainer import train

    resumed = train(
        load_config(stopped / "config.yaml", ["epoch_size=2"]), resume=stopped, verbose=0
    )
    assert resumed.global_step == 6
    uninterrupted, continued = _step_losses(whole), _step_losses(stopped)
    second_epoch = [(2, step) for step in (1, 2, 3)]
    assert all(key in continued for key in second_epoch), continued
    for key in second_epoch:
        assert continued[key] == uninterrupted[key], key


def test_the_training_stream_runs_without_autotuning_and_gives_the_same_batches(small_shapes):
    """fit's iterator must not wait for tf.data's autotuning thread when it is deleted
    (trainer._training_stream); the batches are those of the pipeline with it."""
    from maskspine.data import build_dataset, load_categories
    from maskspine.training.trainer import _training_stream, resolve_classes

    config = load_config(CONFIG, RUN_OVERRIDES)
    resolve_classes(config, load_categories(small_shapes[0]))
    stream = _training_stream(config, small_shapes[0], 2, 3)
    assert stream.options().autotune.enabled is False
    plain = build_dataset(config, small_shapes[0], training=True, batch_size=2, start_batch=3)
    assert plain.options().autotune.enabled is not False
    for ours, theirs in zip(stream.take(10), plain.take(10), strict=True):
        assert ours.keys() == theirs.keys()
        for key in ours:
            np.testing.assert_array_equal(ours[key].numpy(), theirs[key].numpy(), err_msg=key)
