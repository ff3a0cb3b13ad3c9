"""`train()`: the whole training run as users of the reference know it.

    result = train(load_config("configs/shapes_demo.yaml"))

Run directory `<train_outputs>/<YYMMDD>_MaskRCNN_<brief>_<W>x<H>/`:

    config.yaml          resolved config (classes and category ids included)
    config_changes.jsonl what each resume changed (key: [old, new])
    train.log            the reference's log lines
    metrics.csv          per-epoch losses and mAPs (epochs numbered from 1)
    tensorboard/         TensorBoard events
    checkpoints/         periodic checkpoints (model + optimizer) and state.json
    best_ckpt/           the best checkpoints by segm mAP and best.json

Rerun and resume rules:

- The same command again (same day, brief and size: the same run directory) with the same
  config continues from the latest checkpoint. With a config that differs in any key it
  stops before training and lists the differences with the two ways forward: `--resume`
  (which applies what may change) or another `--brief` (a new run).
- `resume=RUN_DIR` continues that run with the config given (CONFIG and `--set`; the
  saved config for what they leave out). Keys that may change mid-run (schedule length,
  learning rate and steps, evaluation, checkpoint and logging cadence, test settings,
  validation data) are applied, printed and recorded in `config_changes.jsonl`; a change
  of a key of `maskspine.config.RESUME_FROZEN_KEYS` (model, classes, input size,
  optimizer type, batch, data) is refused, naming the keys.
- The data order continues where the checkpoint left it: batch k of the run is the same
  batch whether or not the run was interrupted (`maskspine.data.build_dataset`'s
  `start_batch`).
- A damaged latest checkpoint (a full disk, a cut copy) is renamed `*.damaged` and the
  newest good one is used, with a warning naming both.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from maskspine.checkpoints import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    DamagedCheckpointError,
    checkpoint_step,
    latest_checkpoint,
    load_weights_checked,
    periodic_checkpoints,
    transfer_weights,
)
from maskspine.config import (
    RUN_IDENTITY_KEYS,
    Config,
    ConfigError,
    config_differences,
    config_to_dict,
    is_frozen_on_resume,
    load_config,
    save_config,
)
from maskspine.data import build_dataset, load_categories, prepare_source
from maskspine.files import write_text_atomic
from maskspine.modeling.factory import build_mask_rcnn
from maskspine.threads import describe_threads, set_threads
from maskspine.training import TrainingError
from maskspine.training import callbacks as cb
from maskspine.training.optimizer import build_optimizer
from maskspine.training.strategy import choose_strategy, describe

logger = logging.getLogger("maskspine.train")

#: One JSON line per resume that changed the config: {"time", "changes": {key: [old, new]}}.
CONFIG_CHANGES_FILE = "config_changes.jsonl"


@dataclass
class TrainResult:
    run_dir: Path
    epochs_done: int
    global_step: int
    last_evaluation: dict[str, Any] | None
    history: dict[str, list[float]]


def run_directory(config: Config) -> Path:
    """`<train_outputs>/<YYMMDD>_MaskRCNN_<brief>_<W>x<H>` as the reference names it."""
    day = datetime.date.today().strftime("%y%m%d")
    root = Path(config.train_outputs or "runs").expanduser()
    return root / f"{day}_MaskRCNN_{config.brief}_{config.img_width}x{config.img_height}"


def resolve_classes(config: Config, categories: list[tuple[int, str]]) -> None:
    """Fills `coco_classes`, `num_classes` and `category_ids` from the training data's
    categories (`coco_classes: from_data`) or checks that the config's classes match them.

    Raises:
        ConfigError: the config's classes and the data's categories disagree; both lists
            are shown side by side with the fix.
    """
    data_names = [name for _, name in categories]
    data_ids = [category_id for category_id, _ in categories]
    if config.classes_from_data:
        config.coco_classes = ["background", *data_names]
        config.num_classes = len(config.coco_classes)
        config.category_ids = data_ids
        return
    names = list(config.coco_classes[1:])
    if names != data_names:
        width = max([len(n) for n in names] + [len("config")])
        rows = [f"  {'config':<{width}}  data"]
        for i in range(max(len(names), len(data_names))):
            left = names[i] if i < len(names) else "-"
            right = data_names[i] if i < len(data_names) else "-"
            mark = "" if left == right else "   <- differs"
            rows.append(f"  {left:<{width}}  {right}{mark}")
        raise ConfigError(
            "the config's coco_classes (after 'background') do not match the training data's "
            "categories (sorted by id):\n"
            + "\n".join(rows)
            + "\nFix: --set coco_classes=from_data "
            "to take the data's classes, or edit coco_classes / num_classes in the config."
        )
    if not config.category_ids:
        config.category_ids = data_ids


def _setup_logging(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s: %(message)s"))
    logging.getLogger("maskspine").addHandler(handler)
    if not any(
        getattr(h, "_maskspine_console", False) for h in logging.getLogger("maskspine").handlers
    ):
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s: %(message)s"))
        console._maskspine_console = True  # type: ignore[attr-defined]
        logging.getLogger("maskspine").addHandler(console)
    logging.getLogger("maskspine").setLevel(logging.INFO)
    logging.getLogger("maskspine").propagate = False  # absl's root handler would print twice
    return handler


def train(
    config: Config,
    *,
    train_data: str | None = None,
    val_data: str | None = None,
    out: str | Path | None = None,
    brief: str | None = None,
    pretrained: str | Path | None = None,
    resume: str | Path | None = None,
    cpu_replicas: int = 0,
    verbose: str | int | None = None,
) -> TrainResult:
    """Trains (or resumes training of) the model described by `config`.

    Args:
        config: the loaded config; `train_dataset` / `val_dataset` / `train_outputs` /
            `brief` / `pre_trained` are the defaults of the matching arguments.
        train_data, val_data: COCO-format folders (or "shapes"); default the config's,
            then the synthetic shapes set.
        out: parent of the run directory.
        pretrained: a checkpoint of ours to start from (weights whose shapes match).
        resume: a run directory to continue.
        cpu_replicas: > 1 mirrors over that many logical CPU devices.
        verbose: Keras' `fit` verbosity; default: the progress bar on a terminal, one line
            per epoch otherwise (logs, CI).

    Raises:
        ConfigError, TrainingError, FileNotFoundError: with messages naming what to fix.
    """
    # Before anything runs on TensorFlow: its thread pools hold for the process.
    set_threads(config.intra_op_threads, config.inter_op_threads)
    # First: a TPU that cannot be reached fails before anything is built or written.
    strategy = choose_strategy(cpu_replicas, kind=config.strategy, tpu=config.tpu)
    if isinstance(strategy, tf.distribute.TPUStrategy):
        config.jit_compile = "true"  # everything on a TPU runs compiled
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2

    if resume is not None:
        run_dir = Path(resume).expanduser()
        saved_file = run_dir / CONFIG_FILE
        if not saved_file.is_file():
            raise TrainingError(
                f"cannot resume {run_dir}: no {CONFIG_FILE} there (not a run directory)"
            )
        saved = load_config(saved_file)
        train_data = train_data or config.train_dataset or saved.train_dataset or "shapes"
        val_data = val_data or config.val_dataset or saved.val_dataset or "shapes"
        _resolve_run(config, train_data, val_data, saved.brief, saved.train_outputs)
        changes = _resume_changes(saved, config, run_dir)
    else:
        train_data = train_data or config.train_dataset or "shapes"
        val_data = val_data or config.val_dataset or "shapes"
        _resolve_run(config, train_data, val_data, brief, out)
        run_dir = run_directory(config)
        changes = []
    worker = _non_chief_worker(strategy)
    if worker is not None:
        # Every worker saves (Keras needs all of them to take part); only the chief's
        # files are the run's, the others go to a folder of their own inside it.
        run_dir = run_dir / "workers" / f"worker-{worker}"
        if resume is not None and not (run_dir / CONFIG_FILE).is_file():
            resume = None
    if resume is None and latest_checkpoint(run_dir) is not None:
        _check_rerun(load_config(run_dir / CONFIG_FILE), config, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = _setup_logging(run_dir)
    try:
        if changes:
            _record_changes(run_dir, changes)
        save_config(config, run_dir / CONFIG_FILE)
        with _op_determinism(config.deterministic):
            return _train_in(
                config, run_dir, strategy, str(train_data), str(val_data), pretrained, verbose
            )
    finally:
        logging.getLogger("maskspine").removeHandler(handler)
        handler.close()


@contextlib.contextmanager
def _op_determinism(enabled: bool) -> Iterator[None]:
    """TensorFlow's op determinism (deterministic kernels, an error for an op without one)
    for the run only: a notebook's later work is not slowed down by it."""
    from tensorflow.python.framework import config as tf_config

    if not enabled or tf_config.is_op_determinism_enabled():
        yield
        return
    tf_config.enable_op_determinism()
    try:
        yield
    finally:
        tf_config.disable_op_determinism()


def _resolve_run(
    config: Config,
    train_data: str | Path,
    val_data: str | Path,
    brief: str | None,
    out: str | Path | None,
) -> None:
    """Fills in what a run's config records beyond the file: data, name, classes."""
    config.train_dataset, config.val_dataset = str(train_data), str(val_data)
    config.brief = brief or config.brief
    config.train_outputs = str(out or config.train_outputs)
    resolve_classes(config, load_categories(train_data))


def _describe(changes: list[tuple[str, Any, Any]]) -> str:
    return "\n".join(f"  {key}: {old!r} -> {new!r}" for key, old, new in changes)


def _resume_changes(saved: Config, config: Config, run_dir: Path) -> list[tuple[str, Any, Any]]:
    """The changes `config` makes to the saved config of `run_dir` (resume).

    Raises:
        TrainingError: a change to a key the checkpoints depend on, naming each.
    """
    changes = [
        change for change in config_differences(saved, config) if change[0] not in RUN_IDENTITY_KEYS
    ]
    frozen = [change for change in changes if is_frozen_on_resume(change[0])]
    if frozen:
        raise TrainingError(
            f"cannot resume {run_dir} with these changes: its checkpoints were trained with "
            "the saved values (model, classes, input size, optimizer type, batch and data "
            "stay fixed for a run):\n"
            + _describe(frozen)
            + "\nStart a new run for them (another --brief or --out, optionally "
            "--pretrained from this run), or resume with the saved values."
        )
    return changes


def _check_rerun(previous: Config, config: Config, run_dir: Path) -> None:
    """The same command again continues the run in `run_dir`, only with the same config.

    Raises:
        TrainingError: the configs differ; lists the keys and the two ways forward.
    """
    changes = config_differences(previous, config)
    if changes:
        raise TrainingError(
            f"{run_dir} already holds a run with another config:\n"
            + _describe(changes)
            + f"\nTo continue that run with these changes: --resume {run_dir} (keys that "
            "change the model, classes, size, optimizer type, batch or data cannot change "
            "mid-run). To start a new run: another --brief (or --out)."
        )


def _record_changes(run_dir: Path, changes: list[tuple[str, Any, Any]]) -> None:
    """Logs a resume's changes and appends them to `config_changes.jsonl`."""
    logger.info("Resuming with changed settings:\n%s", _describe(changes))
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "changes": {key: [old, new] for key, old, new in changes},
    }
    path = run_dir / CONFIG_CHANGES_FILE
    previous = path.read_text(encoding="utf-8") if path.is_file() else ""
    write_text_atomic(path, previous + json.dumps(record) + "\n")


def _non_chief_worker(strategy: tf.distribute.Strategy) -> int | None:
    """The task index of a MultiWorkerMirroredStrategy worker other than the chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return None
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief") or (task_type == "worker" and task_id == 0):
        return None
    return int(task_id)


def _train_in(
    config: Config,
    run_dir: Path,
    strategy: tf.distribute.Strategy,
    train_data: str,
    val_data: str,
    pretrained: str | Path | None,
    verbose: str | int,
) -> TrainResult:
    replicas = strategy.num_replicas_in_sync
    global_batch = config.batch_size * replicas
    logger.info("Strategy: %s", describe(strategy))
    logger.info("Threads: %s", describe_threads(config.intra_op_threads))
    logger.info(
        "Batch: %d per replica x %d replica(s) = global batch %d",
        config.batch_size,
        replicas,
        global_batch,
    )
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        logger.info("Deterministic: TensorFlow op determinism on")

    if config.steps_per_epoch > 0:
        steps_per_epoch = config.steps_per_epoch
    else:
        steps_per_epoch = _training_images(config, train_data) // global_batch
        if steps_per_epoch <= 0:
            raise TrainingError(
                f"{train_data} has fewer training images than one global batch of {global_batch}"
            )
    logger.info("Steps per epoch: %d", steps_per_epoch)

    logger.info("Creating network...")
    # The parts' variables in the strategy's scope, the model composing them outside it:
    # Keras then trains under the strategy in scope at fit (`build_mask_rcnn`).
    model = build_mask_rcnn(config, strategy)
    with strategy.scope():
        optimizer = build_optimizer(config, steps_per_epoch, model.precision)
        # XLA when jit_compile resolved true (`maskspine.jit`): the model was built for it.
        model.compile(optimizer=optimizer, auto_scale_loss=False)
    logger.info("Number of parameters: %d", model.count_params())
    logger.info("Precision: %s (config: %s)", model.precision, config.precision)
    logger.info(
        "XLA: %s (config jit_compile: %s)", "on" if model.xla else "off", config.jit_compile
    )
    logger.info("Device type: %s", "GPU" if tf.config.list_logical_devices("GPU") else "CPU")

    state = cb.TrainingState(run_dir)
    latest = _load_resume_checkpoint(model, run_dir)
    if latest is not None:
        state.move_to(checkpoint_step(latest), steps_per_epoch)
        state.checkpoint = latest.name
        state.checkpoints = [
            path.name
            for path in periodic_checkpoints(run_dir)
            if checkpoint_step(path) <= state.global_step
        ]
        logger.info(
            "Resuming from %s: epoch %d, step %d of the epoch, global step %d",
            latest.name,
            state.epoch + 1,
            state.step_in_epoch,
            state.global_step,
        )
    elif pretrained or config.pre_trained:
        source = pretrained or config.pre_trained
        report = transfer_weights(model, source, fresh_class_layers=bool(config.finetune))
        logger.info("Transfer from %s: %s", source, report.table())

    epochs = config.epoch_size
    if state.epoch >= epochs:
        logger.info("Training already finished (%d epochs) in %s", epochs, run_dir)
        return TrainResult(run_dir, state.epoch, state.global_step, None, {})

    mlflow = cb.import_mlflow() if config.mlflow else None
    evaluator = None
    if config.run_eval:
        evaluator = _coco_evaluator(config, val_data)
    guard = cb.NaNGuard(state)
    periodic = cb.PeriodicCheckpoint(
        run_dir, state, config.save_every, config.keep_checkpoint_max, steps_per_epoch
    )

    def callbacks(first_step_in_epoch: int) -> list:
        items = [
            guard,
            periodic,
            cb.ReferenceLogger(config.log_every, steps_per_epoch, first_step_in_epoch),
        ]
        if evaluator is not None:
            items.append(
                cb.EvaluationCheckpoint(
                    run_dir,
                    evaluator,
                    eval_every=config.eval_every,
                    keep_max=config.keep_best_checkpoints_max,
                    last_epoch=epochs,
                )
            )
        if mlflow is not None:
            params = cb.flatten_params(config_to_dict(config))
            items.append(cb.MLflowLogger(mlflow, run_dir, params))
        items += [
            cb.MetricsCSV(run_dir / "metrics.csv"),
            keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), write_graph=False),
        ]
        return items

    history: dict[str, list[float]] = {}
    last_eval = None
    segments = []
    if state.step_in_epoch:
        # finish the interrupted epoch first, then whole epochs
        segments.append(
            (
                state.epoch,
                state.epoch + 1,
                steps_per_epoch - state.step_in_epoch,
                state.step_in_epoch,
            )
        )
        if state.epoch + 1 < epochs:
            segments.append((state.epoch + 1, epochs, steps_per_epoch, 0))
    else:
        segments.append((state.epoch, epochs, steps_per_epoch, 0))
    for initial_epoch, end_epoch, steps, first_step in segments:
        items = callbacks(first_step)
        # Each segment reads the data from the batch the run has reached.
        train_set = _training_stream(config, train_data, global_batch, state.global_step)
        with strategy.scope():
            fit = model.fit(
                train_set,
                initial_epoch=initial_epoch,
                epochs=end_epoch,
                steps_per_epoch=steps,
                callbacks=items,
                verbose=verbose,
                shuffle=False,  # the stream is shuffled per pass already (Keras would warn)
            )
        for key, values in fit.history.items():
            history.setdefault(key, []).extend(values)
        for item in items:
            if isinstance(item, cb.EvaluationCheckpoint) and item.last_result is not None:
                last_eval = item.last_result
        if guard.failure:
            raise TrainingError(guard.failure)
    logger.info(
        "Training done: %d epochs, %d steps, run directory %s",
        state.epoch,
        state.global_step,
        run_dir,
    )
    return TrainResult(run_dir, state.epoch, state.global_step, last_eval, history)


def _load_resume_checkpoint(model: keras.Model, run_dir: Path) -> Path | None:
    """Loads the newest periodic checkpoint of `run_dir` that can be read into `model` and
    returns it (None when there is none). A damaged one (a full disk, a cut copy) is
    renamed `<name>.damaged` and the next older one tried, with a warning naming both."""
    damaged: Path | None = None
    for path in reversed(periodic_checkpoints(run_dir)):
        try:
            load_weights_checked(model, path)
        except DamagedCheckpointError as error:
            logger.warning("%s", error)
            path.rename(path.with_name(f"{path.name}.damaged"))
            damaged = damaged or path
            continue
        if damaged is not None:
            logger.warning(
                "The latest checkpoint %s is damaged (kept as %s.damaged); resuming from the "
                "newest good one, %s",
                damaged.name,
                damaged.name,
                path.name,
            )
        return path
    if damaged is not None:
        logger.warning(
            "No readable checkpoint in %s (the damaged ones are kept as *.damaged): "
            "training starts again from step 0",
            run_dir / CHECKPOINT_DIR,
        )
    return None


def _training_stream(
    config: Config, train_data: str, global_batch: int, start_batch: int
) -> tf.data.Dataset:
    """The endless training batches from global batch `start_batch` on, sharded by batch
    over the workers (a prepared data set may be a single shard file)."""
    dataset = build_dataset(
        config, train_data, training=True, batch_size=global_batch, start_batch=start_batch
    )
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    # No autotuning: its optimisation thread is what the iterator's destructor waited for
    # when fit returned (15-55 s in a third of the demo's runs: `py-spy dump --native` put the
    # main thread in RootDataset::Iterator::~Iterator joining it). The map's parallelism is
    # the config's `num_parallel_workers` (TensorFlow's default where 0), and the pipeline
    # keeps ahead of the step without autotuning (benchmarks/README.md, "Thread pools": "The
    # wait after the last epoch").
    options.autotune.enabled = False
    return dataset.with_options(options)


def _training_images(config: Config, train_data: str) -> int:
    """Images the training pipeline uses in one pass (those with a non-crowd instance)."""
    prepared = prepare_source(train_data, training=True, seed=config.seed)
    counts = prepared.non_crowd_counts
    if config.train_dataset_num > 0:
        counts = counts[: config.train_dataset_num]
    return sum(count > 0 for count in counts)


def _coco_evaluator(config: Config, val_data: str):
    """A function model -> COCO stats on the validation split (bbox and segm), on the
    data, ground truth and category mapping `maskspine eval` uses."""
    from maskspine.evaluation import evaluate_coco
    from maskspine.evaluation.runner import evaluation_data, predict_coco_results

    data = evaluation_data(config, val_data)

    def evaluate(model) -> dict[str, Any]:
        results = predict_coco_results(model, data.dataset, data.category_ids, progress=False)
        return evaluate_coco(data.annotations_file, results, print_summary=True)

    return evaluate
