"""`train()`: the whole training run as users of the reference know it.

    result = train(load_config("configs/shapes_demo.yaml"))

Run directory `<train_outputs>/<YYMMDD>_MaskRCNN_<brief>_<W>x<H>/`:

    config.yaml          resolved config (classes and category ids included)
    train.log            the reference's log lines
    metrics.csv          per-epoch losses and mAPs (Keras CSVLogger)
    tensorboard/         TensorBoard events
    checkpoints/         periodic checkpoints (model + optimizer) and state.json
    best_ckpt/           the best checkpoints by segm mAP and best.json

Running the same command again (same day, brief and size), or `resume=RUN_DIR`,
continues from the latest checkpoint.
"""

from __future__ import annotations

import datetime
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from maskspine.checkpoints import (
    CONFIG_FILE,
    latest_checkpoint,
    load_weights_checked,
    transfer_weights,
)
from maskspine.config import Config, ConfigError, config_to_dict, load_config, save_config
from maskspine.data import build_dataset, load_categories, prepare_source, resolve_source
from maskspine.modeling.mask_rcnn import build_mask_rcnn
from maskspine.training import TrainingError
from maskspine.training import callbacks as cb
from maskspine.training.optimizer import build_optimizer, set_precision
from maskspine.training.strategy import choose_strategy, describe

logger = logging.getLogger("maskspine.train")


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
    strategy = choose_strategy(cpu_replicas)
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2

    if resume is not None:
        run_dir = Path(resume).expanduser()
        saved = run_dir / CONFIG_FILE
        if not saved.is_file():
            raise TrainingError(
                f"cannot resume {run_dir}: no {CONFIG_FILE} there (not a run directory)"
            )
        config = load_config(saved)
        train_data = train_data or config.train_dataset or "shapes"
        val_data = val_data or config.val_dataset or "shapes"
    else:
        train_data = train_data or config.train_dataset or "shapes"
        val_data = val_data or config.val_dataset or "shapes"
        config.train_dataset, config.val_dataset = str(train_data), str(val_data)
        config.brief = brief or config.brief
        config.train_outputs = str(out or config.train_outputs)
        resolve_classes(config, load_categories(train_data))
        run_dir = run_directory(config)
    worker = _non_chief_worker(strategy)
    if worker is not None:
        # Every worker saves (Keras needs all of them to take part); only the chief's
        # files are the run's, the others go to a folder of their own inside it.
        run_dir = run_dir / "workers" / f"worker-{worker}"
        if resume is not None and not (run_dir / CONFIG_FILE).is_file():
            resume = None
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = _setup_logging(run_dir)
    try:
        latest = latest_checkpoint(run_dir)
        if resume is None and latest is not None:
            previous = load_config(run_dir / CONFIG_FILE)
            if previous.coco_classes != config.coco_classes:
                raise TrainingError(
                    f"{run_dir} holds a run with other classes; use another --brief or --out"
                )
            config = previous
        if resume is None:
            save_config(config, run_dir / CONFIG_FILE)
        return _train_in(
            config, run_dir, strategy, str(train_data), str(val_data), pretrained, verbose
        )
    finally:
        logging.getLogger("maskspine").removeHandler(handler)
        handler.close()


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
    policy = set_precision(config)
    logger.info("Strategy: %s", describe(strategy))
    logger.info(
        "Batch: %d per replica x %d replica(s) = global batch %d; precision %s",
        config.batch_size,
        replicas,
        global_batch,
        policy,
    )
    keras.utils.set_random_seed(config.seed)

    train_set = build_dataset(config, train_data, training=True, batch_size=global_batch)
    if config.steps_per_epoch > 0:
        steps_per_epoch = config.steps_per_epoch
    else:
        steps_per_epoch = _training_images(config, train_data) // global_batch
        if steps_per_epoch <= 0:
            raise TrainingError(
                f"{train_data} has fewer training images than one global batch of {global_batch}"
            )
    logger.info("Steps per epoch: %d", steps_per_epoch)
    # Shard by batches, not files: a prepared data set may be a single shard file.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    train_set = train_set.repeat().with_options(options)

    logger.info("Creating network...")
    with strategy.scope():
        model = build_mask_rcnn(config)
        optimizer = build_optimizer(config, steps_per_epoch)
        model.compile(optimizer=optimizer, jit_compile=False, auto_scale_loss=False)
    logger.info("Number of parameters: %d", model.count_params())
    logger.info("Device type: %s", "GPU" if tf.config.list_logical_devices("GPU") else "CPU")

    state = cb.TrainingState(run_dir)
    latest = _resume_checkpoint(run_dir, state)
    if latest is not None:
        load_weights_checked(model, latest)
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
            keras.callbacks.CSVLogger(str(run_dir / "metrics.csv"), append=True),
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
        fit = model.fit(
            train_set,
            initial_epoch=initial_epoch,
            epochs=end_epoch,
            steps_per_epoch=steps,
            callbacks=items,
            verbose=verbose,
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


def _resume_checkpoint(run_dir: Path, state: cb.TrainingState) -> Path | None:
    """The checkpoint `state.json` names (it is written after the file is in place, so the
    two agree even when a run was killed between them), else the newest one."""
    if state.checkpoint:
        named = run_dir / "checkpoints" / state.checkpoint
        if named.is_file():
            return named
    return latest_checkpoint(run_dir)


def _training_images(config: Config, train_data: str) -> int:
    """Images the training pipeline uses in one pass (those with a non-crowd instance)."""
    prepared = prepare_source(train_data, training=True, seed=config.seed)
    counts = prepared.non_crowd_counts
    if config.train_dataset_num > 0:
        counts = counts[: config.train_dataset_num]
    return sum(count > 0 for count in counts)


def _coco_evaluator(config: Config, val_data: str):
    """A function model -> COCO stats on the validation split (bbox and segm)."""
    from maskspine.evaluation import evaluate_coco
    from maskspine.evaluation.runner import predict_coco_results

    source = resolve_source(val_data, training=False, seed=config.seed)
    labels = getattr(source, "annotations_file", None)
    dataset = build_dataset(config, val_data, training=False)

    def evaluate(model) -> dict[str, Any]:
        results = predict_coco_results(model, dataset, config.category_ids, progress=False)
        return evaluate_coco(labels, results, print_summary=True)

    return evaluate
