"""`maskspine train` from the command line: clean errors, the NaN guard, a run killed
with SIGKILL and resumed."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from model_fixtures import REPO, RUN_OVERRIDES
from typer.testing import CliRunner

from maskspine.cli.main import app

CONFIG = os.path.join(REPO, "configs", "shapes_demo.yaml")


def invoke(*args):
    return CliRunner().invoke(app, ["train", *args])


def test_unknown_key_is_one_clean_line(tmp_path):
    result = invoke(CONFIG, "--set", "lerning_rate=0.1", "--out", str(tmp_path))
    assert result.exit_code == 2
    assert "error:" in result.output and "'lerning_rate'" in result.output
    assert "Traceback" not in result.output


def test_wrong_type_is_one_clean_line(tmp_path):
    result = invoke(CONFIG, "--set", "batch_size=four", "--out", str(tmp_path))
    assert result.exit_code == 2 and "batch_size" in result.output and "'four'" in result.output
    assert "Traceback" not in result.output


def test_missing_data_folder_names_it(tmp_path):
    result = invoke(CONFIG, "--train-data", str(tmp_path / "nope"), "--out", str(tmp_path))
    assert result.exit_code == 2 and str(tmp_path / "nope") in result.output
    assert "Traceback" not in result.output


def test_classes_that_disagree_with_the_data_are_shown_side_by_side(small_shapes, tmp_path):
    result = invoke(
        CONFIG,
        "--train-data", small_shapes[0], "--val-data", small_shapes[1], "--out", str(tmp_path),
        "--set", "coco_classes=[background, circle, square, hexagon]", "--set", "num_classes=4",
    )  # fmt: skip
    assert result.exit_code == 2
    assert re.search(r"hexagon\s+triangle\s+<- differs", result.output)
    assert "--set coco_classes=from_data" in result.output
    assert not list(tmp_path.glob("*/checkpoints")), "stopped before the first step"


def test_nan_guard_stops_and_names_the_step_and_checkpoint(tmp_path):
    import keras

    from maskspine.training.callbacks import NaNGuard, TrainingState

    state = TrainingState(tmp_path)
    state.global_step, state.epoch, state.checkpoint = 42, 1, "ckpt-00000040.weights.h5"
    guard = NaNGuard(state)
    model = keras.Sequential([keras.layers.Dense(1)])
    model.stop_training = False  # fit sets it; this test calls the callback directly
    guard.set_model(model)
    guard.on_train_batch_end(0, {"loss": 1.5})
    assert not model.stop_training and guard.failure is None
    guard.on_train_batch_end(1, {"loss": math.nan})
    assert model.stop_training
    assert "global step 42" in guard.failure and "ckpt-00000040.weights.h5" in guard.failure


def train_process(run_parent: Path, data, extra=()) -> subprocess.Popen:
    args = [sys.executable, "-m", "maskspine.cli", "train", CONFIG, "--train-data", data[0],
            "--val-data", data[1], "--out", str(run_parent), "--brief", "kill"]  # fmt: skip
    for override in [*RUN_OVERRIDES, "epoch_size=3", "steps_per_epoch=4", "save_every=1",
                     "keep_checkpoint_max=10", "run_eval=0", *extra]:  # fmt: skip
        args += ["--set", override]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True
    )


@pytest.mark.slow
def test_sigkill_during_training_then_resume(small_shapes, tmp_path):
    process = train_process(tmp_path, small_shapes)
    deadline = time.time() + 600
    state_file = None
    while time.time() < deadline and process.poll() is None:
        found = list(tmp_path.glob("*/checkpoints/state.json"))
        if found and json.loads(found[0].read_text())["global_step"] >= 5:
            state_file = found[0]
            break
        time.sleep(0.05)
    assert state_file is not None, process.communicate()[0][-3000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = json.loads(state_file.read_text())
    assert 5 <= killed_at["global_step"] < 12
    # the same command again resumes from the latest checkpoint
    again = train_process(tmp_path, small_shapes)
    output, _ = again.communicate(timeout=900)
    assert again.returncode == 0, output[-3000:]
    final = json.loads(state_file.read_text())
    assert final["global_step"] == 12 and final["epoch"] == 3
    log = (state_file.parent.parent / "train.log").read_text()
    assert re.search(r"Resuming from ckpt-\d+\.weights\.h5: epoch \d, step \d of the epoch", log)
    # every step after the checkpoint is trained exactly once: per-epoch step lines
    resumed = log[log.index("Resuming from") :]
    steps = re.findall(r"epoch: (\d+), step: (\d+), loss", resumed)
    resume_epoch, resume_step = killed_at["epoch"] + 1, killed_at["step_in_epoch"]
    expected = [(e, s) for e in range(1, 4) for s in (2, 4)
                if (e, s) > (resume_epoch, resume_step)]  # fmt: skip
    assert [(int(e), int(s)) for e, s in steps] == expected


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_worker_multi_worker_mirrored_training(small_shapes, tmp_path):
    ports = [free_port(), free_port()]
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    processes = []
    for index in range(2):
        args = [sys.executable, "-m", "maskspine.cli", "train", CONFIG, "--train-data", small_shapes[0],
                "--val-data", small_shapes[1], "--out", str(tmp_path), "--brief", "mw"]  # fmt: skip
        for override in [*RUN_OVERRIDES, "epoch_size=1", "steps_per_epoch=3", "run_eval=0"]:
            args += ["--set", override]
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "TF_CPP_MIN_LOG_LEVEL": "3"}
        processes.append(
            subprocess.Popen(
                args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True
            )
        )
    outputs = [p.communicate(timeout=900)[0] for p in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    (run,) = tmp_path.glob("*_MaskRCNN_mw_128x128")
    log = (run / "train.log").read_text()
    assert "MultiWorkerMirroredStrategy over 2 replicas" in log
    assert "global batch 4" in log
    assert json.loads((run / "checkpoints" / "state.json").read_text())["global_step"] == 3
    assert (run / "workers" / "worker-1" / "checkpoints" / "state.json").is_file()
