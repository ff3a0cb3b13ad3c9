"""Training callbacks: the reference's log lines, periodic and best checkpoints with
their bookkeeping, per-epoch COCO evaluation and the NaN guard."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras

from maskspine.checkpoints import (
    BEST_DIR,
    BEST_INDEX,
    STATE_FILE,
    WEIGHTS_SUFFIX,
    periodic_checkpoint_path,
    save_weights_atomic,
)
from maskspine.files import read_json, write_json_atomic, write_text_atomic
from maskspine.training.optimizer import current_learning_rate

logger = logging.getLogger("maskspine.train")

PART_LOSSES = ("rpn_cls_loss", "rpn_box_loss", "rcnn_cls_loss", "rcnn_box_loss", "mask_loss")


class TrainingState:
    """Where training is: epochs done, steps into the current epoch, global step.

    Kept in `checkpoints/state.json` next to the periodic checkpoints, written after each
    checkpoint (atomically), read on resume.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "checkpoints" / STATE_FILE
        data = read_json(self.path, {})
        self.epoch: int = int(data.get("epoch", 0))  # 0-based epoch being trained
        self.step_in_epoch: int = int(data.get("step_in_epoch", 0))
        self.global_step: int = int(data.get("global_step", 0))
        self.checkpoint: str | None = data.get("checkpoint")
        self.checkpoints: list[str] = list(data.get("checkpoints", []))

    def move_to(self, global_step: int, steps_per_epoch: int) -> None:
        """Sets the position to just after `global_step` (a checkpoint's step): the epoch
        and the step inside it follow from the run's fixed `steps_per_epoch`."""
        self.global_step = int(global_step)
        self.epoch, self.step_in_epoch = divmod(self.global_step, steps_per_epoch)

    def save(self) -> None:
        write_json_atomic(
            self.path,
            {
                "epoch": self.epoch,
                "step_in_epoch": self.step_in_epoch,
                "global_step": self.global_step,
                "checkpoint": self.checkpoint,
                "checkpoints": self.checkpoints,
            },
        )


class ReferenceLogger(keras.callbacks.Callback):
    """Logs `epoch: 1, step: 100, loss: 1.735162,  lr: 0.017150` every `log_every` steps
    (and the last step of each epoch) with the per-part losses, then epoch and per-step
    times, as the reference does."""

    def __init__(self, log_every: int, steps_per_epoch: int, first_step_in_epoch: int = 0):
        super().__init__()
        self.log_every = max(int(log_every), 1)
        self.steps_per_epoch = steps_per_epoch
        self.first_step_in_epoch = first_step_in_epoch
        self._epoch = 0
        self._epoch_start = 0.0
        self._steps = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._epoch_start = time.perf_counter()
        self._steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1
        step = self.first_step_in_epoch + batch + 1
        if step % self.log_every and step != self.steps_per_epoch:
            return
        logs = logs or {}
        lr = current_learning_rate(self.model.optimizer)
        parts = ", ".join(
            f"{name}: {float(logs[name]):.6f}" for name in PART_LOSSES if name in logs
        )
        logger.info(
            "epoch: %d, step: %d, loss: %.6f,  lr: %.6f (%s)",
            self._epoch + 1,
            step,
            float(logs.get("loss", float("nan"))),
            lr,
            parts,
        )

    def on_epoch_end(self, epoch, logs=None):
        elapsed = (time.perf_counter() - self._epoch_start) * 1000
        logger.info(
            "Train epoch time: %.3f ms, per step time: %.3f ms",
            elapsed,
            elapsed / max(self._steps, 1),
        )
        self.first_step_in_epoch = 0


class PeriodicCheckpoint(keras.callbacks.Callback):
    """Writes `checkpoints/ckpt-<global step>.weights.h5` (model + optimizer) every
    `save_every` steps and at each epoch end, keeps the newest `keep_max`, and records
    the position in `state.json` after the file is in place."""

    def __init__(
        self,
        run_dir: Path,
        state: TrainingState,
        save_every: int,
        keep_max: int,
        steps_per_epoch: int,
    ):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.state = state
        self.save_every = max(int(save_every), 1)
        self.keep_max = max(int(keep_max), 1)
        self.steps_per_epoch = steps_per_epoch
        self._current_epoch = state.epoch

    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        state = self.state
        state.global_step += 1
        state.step_in_epoch += 1
        if state.step_in_epoch >= self.steps_per_epoch:  # the epoch's last step
            state.epoch, state.step_in_epoch = self._current_epoch + 1, 0
        if state.global_step % self.save_every == 0:
            self.save()

    def on_epoch_end(self, epoch, logs=None):
        if (
            self.state.checkpoint
            != periodic_checkpoint_path(self.run_dir, self.state.global_step).name
        ):
            self.save()

    def save(self) -> Path:
        state = self.state
        path = periodic_checkpoint_path(self.run_dir, state.global_step)
        save_weights_atomic(self.model, path)
        state.checkpoint = path.name
        if path.name not in state.checkpoints:
            state.checkpoints.append(path.name)
        stale = state.checkpoints[: -self.keep_max]
        state.checkpoints = state.checkpoints[-self.keep_max :]
        state.save()
        for name in stale:
            (path.parent / name).unlink(missing_ok=True)
        return path


class NaNGuard(keras.callbacks.Callback):
    """Stops training at the first NaN or infinite loss, naming the step and the last
    good checkpoint (which is kept)."""

    def __init__(self, state: TrainingState):
        super().__init__()
        self.state = state
        self.failure: str | None = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(float(loss)):
            return
        last = self.state.checkpoint or "none yet"
        self.failure = (
            f"loss became {float(loss)} at global step {self.state.global_step} "
            f"(epoch {self.state.epoch + 1}); training stopped. Last good checkpoint: {last}. "
            "Lower lr, raise warmup_step or set grad_clip, then resume."
        )
        logger.error("%s", self.failure)
        self.model.stop_training = True


class EvaluationCheckpoint(keras.callbacks.Callback):
    """Every `eval_every` epochs: COCO evaluation of the validation set, the reference's
    `Result metrics for epoch N: {...}` line, and `best_ckpt/` keeping the
    `keep_max` best checkpoints by segm mAP (bookkeeping in best.json)."""

    def __init__(
        self,
        run_dir: Path,
        evaluate: Callable[[keras.Model], dict[str, Any]],
        *,
        eval_every: int,
        keep_max: int,
        last_epoch: int,
    ):
        super().__init__()
        self.folder = Path(run_dir) / BEST_DIR
        self.evaluate = evaluate
        self.eval_every = max(int(eval_every), 1)
        self.keep_max = max(int(keep_max), 1)
        self.last_epoch = last_epoch
        self.last_result: dict[str, Any] | None = None

    def on_epoch_end(self, epoch, logs=None):
        number = epoch + 1
        if number % self.eval_every and number != self.last_epoch:
            return
        start = time.perf_counter()
        result = self.evaluate(self.model)
        elapsed = (time.perf_counter() - start) * 1000
        metrics = {
            "bbox_mAP": float(result["bbox"]["AP"]),
            "loss": float((logs or {}).get("loss", float("nan"))),
            "seg_mAP": float(result["segm"]["AP"]),
        }
        logger.info("Eval epoch time: %.3f ms", elapsed)
        logger.info("Result metrics for epoch %d: %s", number, metrics)
        if logs is not None:
            logs["val_bbox_mAP"] = metrics["bbox_mAP"]
            logs["val_seg_mAP"] = metrics["seg_mAP"]
        self.last_result = {"epoch": number, **metrics, "stats": result}
        self._keep_if_best(number, metrics["seg_mAP"])

    def _keep_if_best(self, epoch: int, score: float) -> None:
        index = self.folder / BEST_INDEX
        entries = [e for e in read_json(index, []) if (self.folder / e["file"]).is_file()]
        if len(entries) >= self.keep_max and all(score <= e["score"] for e in entries):
            return
        name = f"best-epoch{epoch:04d}{WEIGHTS_SUFFIX}"
        save_weights_atomic(self.model, self.folder / name)
        entries = [e for e in entries if e["file"] != name]
        entries.append({"file": name, "epoch": epoch, "score": score, "metric": "segm_mAP"})
        entries.sort(key=lambda e: -e["score"])
        kept, dropped = entries[: self.keep_max], entries[self.keep_max :]
        write_json_atomic(index, kept)
        for entry in dropped:
            (self.folder / entry["file"]).unlink(missing_ok=True)
        logger.info("Best checkpoint %s (segm mAP %.4f)", name, score)


class MetricsCSV(keras.callbacks.Callback):
    """`metrics.csv`: one row per epoch with fixed columns, the epoch numbered from 1 as in
    the log; `val_bbox_mAP` / `val_seg_mAP` are empty in epochs without an evaluation
    (Keras' CSVLogger fixes its columns at the first epoch and would drop them).

    A resumed run keeps the rows before the epoch it resumes at and rewrites the rest;
    the file is replaced atomically at each epoch end.
    """

    COLUMNS = ("epoch", "loss", *PART_LOSSES, "lr", "val_bbox_mAP", "val_seg_mAP")

    def __init__(self, path: Path):
        super().__init__()
        self.path = Path(path)
        self.rows: dict[int, dict[str, str]] = {}
        if self.path.is_file():
            import csv

            with open(self.path, newline="", encoding="utf-8") as file:
                for row in csv.DictReader(file):
                    try:
                        self.rows[int(row["epoch"])] = row
                    except (KeyError, TypeError, ValueError):
                        continue  # a damaged or foreign row

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        logs["lr"] = current_learning_rate(self.model.optimizer)
        number = epoch + 1
        self.rows = {key: row for key, row in self.rows.items() if key < number}
        self.rows[number] = {
            "epoch": str(number),
            **{key: _format(logs.get(key)) for key in self.COLUMNS[1:]},
        }
        lines = [",".join(self.COLUMNS)]
        for key in sorted(self.rows):
            lines.append(",".join(str(self.rows[key].get(c, "")) for c in self.COLUMNS))
        write_text_atomic(self.path, "\n".join(lines) + "\n")


def _format(value: Any) -> str:
    return f"{float(value):.8g}" if _is_number(value) else ""


class MLflowLogger(keras.callbacks.Callback):
    """Logs the config as parameters, each epoch's losses and mAPs as metrics, and at the
    end the best checkpoint (or the latest) as an artifact, to MLflow's active tracking
    server (`MLFLOW_TRACKING_URI`, else ./mlruns)."""

    def __init__(self, mlflow_module, run_dir: Path, params: dict[str, Any]):
        super().__init__()
        self.mlflow = mlflow_module
        self.run_dir = Path(run_dir)
        self.config_params = params  # not `params`: Keras sets that to the fit arguments
        self._active = False

    def on_train_begin(self, logs=None):
        if self.mlflow.active_run() is None:
            self.mlflow.start_run(run_name=self.run_dir.name)
            self._active = True
        # MLflow rejects parameter values over 500 characters (the class list can be longer).
        self.mlflow.log_params({k: str(v)[:500] for k, v in self.config_params.items()})

    def on_epoch_end(self, epoch, logs=None):
        metrics = {k: float(v) for k, v in (logs or {}).items() if _is_number(v)}
        self.mlflow.log_metrics(metrics, step=epoch + 1)

    def on_train_end(self, logs=None):
        best = self.run_dir / BEST_DIR
        entries = read_json(best / BEST_INDEX, [])
        if entries:
            self.mlflow.log_artifact(str(best / entries[0]["file"]), artifact_path="best_ckpt")
        self.mlflow.log_artifact(str(self.run_dir / "config.yaml"))
        if self._active:
            self.mlflow.end_run()
            self._active = False


def _is_number(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def flatten_params(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"rpn": {"loss_bbox": {"beta": 0.1}}} -> {"rpn.loss_bbox.beta": 0.1}."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_params(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def import_mlflow():
    """The mlflow module, or a TrainingError saying how to install it."""
    from maskspine.training import TrainingError

    try:
        import mlflow
    except ImportError:
        raise TrainingError(
            "mlflow: true in the config but MLflow is not installed: `pip install mlflow` "
            '(or the extra, `pip install -e ".[mlflow]"`), or set mlflow: false'
        ) from None
    return mlflow
