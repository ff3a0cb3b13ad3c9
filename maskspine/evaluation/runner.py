"""Running a model over a validation split and evaluating it: what `maskspine eval` does.

    results = predict_coco_results(model, dataset, category_ids)    # any in-memory model
    stats = evaluate_coco(labels_json, results)                      # {"bbox": {...}, "segm": {...}}

    report = evaluate_checkpoint("runs/260101_MaskRCNN_shapes_256x256", val_data="shapes",
                                 predictions="preds.json", analysis_dir="analysis/")

`predict_coco_results` + `evaluate_coco` are what training's per-epoch evaluation calls on
the model it is training (a Keras callback): they need nothing but the model, an evaluation
dataset (`maskspine.data.build_dataset(config, source, training=False)`) and the data set's
category id of each contiguous label. The model runs on fixed-size batches under one
`tf.function` (traced once per model and batch size, reused by later calls).

Files `evaluate_results` writes into its `output_dir`: `per_class_ap.csv` (category_id,
name, bbox_AP, bbox_AP50, bbox_AP75, segm_AP, segm_AP50, segm_AP75; fractions) and
`metrics.json` (the 12 COCO numbers of each type by name, the number of results, the
checkpoint and predictions file when known).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maskspine.errors import EvaluationError
from maskspine.evaluation.coco_eval import (
    IOU_TYPES,
    EvaluationResult,
    PerClassAP,
    evaluate_coco,
    format_per_class_table,
    load_predictions,
    per_class_tables,
    save_per_class_csv,
    save_predictions,
)
from maskspine.files import write_text_atomic
from maskspine.formats import to_coco_results
from maskspine.postprocess import detections_to_instances
from maskspine.predict import run_detections

if TYPE_CHECKING:
    import tensorflow as tf

    from maskspine.config import Config

#: File names written into `output_dir`.
PER_CLASS_CSV = "per_class_ap.csv"
METRICS_JSON = "metrics.json"
#: The folder under a checkpoint's run directory that `evaluate_checkpoint` writes into when
#: no output directory is given.
DEFAULT_OUTPUT_FOLDER = "eval"


# --------------------------------------------------------------------------- model -> results


def predict_coco_results(
    model: Callable,
    dataset: tf.data.Dataset,
    category_ids: Sequence[int],
    progress: bool = True,
    *,
    num_images: int | None = None,
    score_threshold: float = 0.0,
    mask_threshold: float | None = None,
) -> list[dict[str, Any]]:
    """Runs the model over an evaluation dataset: COCO result records of every detection.

    Args:
        model: a `MaskRCNN` in memory (training's or a loaded checkpoint's); any callable
            taking `{"images", "image_info"}` and returning the detection dict works.
        dataset: evaluation batches (`build_dataset(config, source, training=False)`):
            `images` [B, H, W, 3] float32, `image_info` [B, 4, 2], `image_id` [B] int64.
        category_ids: the category id of each contiguous label (label k + 1 is
            `category_ids[k]`): `config.output_category_ids`.
        progress: show a progress bar (images).
        num_images: the progress bar's target (images in the dataset), when known.
        score_threshold: detections scoring below this are left out (the model's
            `test_cfg.rcnn.score_thr` has applied already).
        mask_threshold: mask probability threshold; default the model config's
            `test_cfg.rcnn.mask_thr_binary`, else 0.5.

    Returns:
        `COCO.loadRes` records: `image_id`, `category_id` (the data set's), `bbox` COCO xywh in
        original pixels, `score`, `segmentation` (compressed RLE, str counts, original size).

    Raises:
        EvaluationError: batches without `image_id`.
    """
    category_ids = [int(v) for v in category_ids]
    if mask_threshold is None:
        config = getattr(model, "config", None)
        mask_threshold = float(config.test_cfg.rcnn.mask_thr_binary) if config else 0.5
    results: list[dict[str, Any]] = []
    for values, outputs in run_detections(model, dataset, progress=progress, num_images=num_images):
        if "image_id" not in values:
            raise EvaluationError(
                "evaluation batches need image_id: build them with training=False"
            )
        instances = detections_to_instances(
            outputs,
            values["image_info"],
            score_threshold=score_threshold,
            mask_threshold=mask_threshold,
        )
        results.extend(to_coco_results(instances, int(values["image_id"]), category_ids))
    return results


# --------------------------------------------------------------------------- the data


@dataclass
class EvaluationData:
    """A validation split ready to evaluate on.

    Attributes:
        dataset: evaluation batches (`build_dataset(..., training=False)`).
        annotations_file: its labels.json, the ground truth for pycocotools.
        category_ids: the data set's category id of each contiguous label.
        num_images: images in the dataset.
        name: the split, for messages.
    """

    dataset: tf.data.Dataset
    annotations_file: Path
    category_ids: list[int]
    num_images: int
    name: str


def _source_or_default(config: Config, val_data: str | os.PathLike | None):
    return val_data if val_data not in (None, "") else (config.val_dataset or None)


def ground_truth_file(
    config: Config,
    val_data: str | os.PathLike | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
) -> Path:
    """The labels.json of a validation split (`val_data`, else `config.val_dataset`, else the
    shapes set's validation split, generated if needed).

    Raises:
        FileNotFoundError: the data or its labels.json is missing (named).
    """
    from maskspine.data import resolve_source
    from maskspine.data.tfds import load_prepared

    source = _source_or_default(config, val_data)
    resolved = resolve_source(source, training=False, seed=config.seed, data_dir=data_dir)
    if isinstance(resolved, Path):  # a prepared data set: it remembers its labels.json
        metadata = load_prepared(resolved).builder().info.metadata or {}
        labels = metadata.get("annotations_file")
        if not labels or not Path(labels).is_file():
            raise FileNotFoundError(
                f"evaluation needs the ground truth of the prepared data set {resolved}, but "
                f"its labels.json ({labels or 'not recorded'}) is not there; give the "
                "COCO-format folder it was prepared from instead"
            )
        return Path(labels)
    return resolved.annotations_file


def evaluation_data(
    config: Config,
    val_data: str | os.PathLike | None = None,
    *,
    batch_size: int | None = None,
    data_dir: str | os.PathLike | None = None,
) -> EvaluationData:
    """The evaluation batches, ground truth and category mapping of a validation split.

    Args:
        config: the model's config (sizes, normalisation, classes, `test_batch_size`).
        val_data: a COCO-format folder, a prepared data set, or "shapes"; default
            `config.val_dataset`, else the shapes set.
        batch_size: images per batch (default `config.test_batch_size`).
        data_dir: where generated and prepared data live.

    Raises:
        FileNotFoundError / DataError: missing or unusable data (the message says which).
    """
    from maskspine.data import build_dataset, prepare_source

    source = _source_or_default(config, val_data)
    prepared = prepare_source(source, training=False, seed=config.seed, data_dir=data_dir)
    category_ids = config.output_category_ids
    data_ids = {category_id for category_id, _ in prepared.categories}
    # Every category of the data must be one of the model's; the model may have more (the
    # 91 COCO-id classes of an imported COCO model hold 10 ids COCO's files never use).
    unknown = sorted(data_ids - set(category_ids))
    if unknown:
        raise EvaluationError(
            f"the model's classes have category ids {category_ids} (the config's category_ids, "
            f"or 1..K when it lists none) but {prepared.name} has {sorted(data_ids)}; "
            f"{unknown} are not among the model's. Give the config the data set's category_ids."
        )
    dataset = build_dataset(
        config, source, training=False, batch_size=batch_size, data_dir=data_dir
    )
    return EvaluationData(
        dataset=dataset,
        annotations_file=ground_truth_file(config, source, data_dir=data_dir),
        category_ids=category_ids,
        num_images=prepared.num_examples,
        name=prepared.name,
    )


# --------------------------------------------------------------------------- evaluation


@dataclass
class EvaluationReport:
    """What an evaluation found and wrote.

    Attributes:
        stats: `evaluate_coco`'s result: `{"bbox": {"AP": ..., ...}, "segm": {...}}`.
        per_class: `{iou_type: [PerClassAP]}`.
        results: the COCO result records evaluated.
        files: what was written, by role (`predictions`, `per_class_csv`, `metrics`,
            `analysis_bbox`, `analysis_segm`).
        model_ran: False when the results came from an existing predictions file.
        checkpoint: the weights file, when evaluating a checkpoint.
        analysis: `{iou_type: analyze(...) result}` when an analysis was asked for.
    """

    stats: EvaluationResult
    per_class: dict[str, list[PerClassAP]]
    results: list[dict[str, Any]]
    files: dict[str, Path] = field(default_factory=dict)
    model_ran: bool = True
    checkpoint: Path | None = None
    analysis: dict[str, dict[str, Any]] = field(default_factory=dict)


def evaluate_results(
    results: Sequence[dict[str, Any]],
    annotations_file: str | os.PathLike,
    *,
    output_dir: str | os.PathLike | None = None,
    analysis_dir: str | os.PathLike | None = None,
    print_summary: bool = True,
    source: str | None = None,
    extra_metrics: dict[str, Any] | None = None,
) -> EvaluationReport:
    """COCO metrics, per-class table and (optionally) the error analysis of results.

    Prints pycocotools' 12-line summaries, the reference's `Bbox eval result: X` /
    `Segmentation eval result: Y` lines and the per-class AP table (when `print_summary`).

    Args:
        results: COCO result records (`predict_coco_results` or `load_predictions`).
        annotations_file: the ground truth labels.json.
        output_dir: where `per_class_ap.csv` and `metrics.json` go (nothing written if None).
        analysis_dir: where `analyze` writes PR curves and the error breakdown of each type
            (`<dir>/bbox/`, `<dir>/segm/`; PNG and CSV).
        source: where the results came from (a predictions file), named in errors.
        extra_metrics: more entries for metrics.json (checkpoint, data).

    Raises:
        EvaluationError: results the ground truth cannot take (other image / category ids).
    """
    try:
        stats = evaluate_coco(annotations_file, list(results), print_summary=print_summary)
    except ValueError as error:
        where = f"{source}: " if source else ""
        fix = " Delete it to run the model again." if source else ""
        raise EvaluationError(f"{where}{error}{fix}") from None
    tables = per_class_tables(stats)
    report = EvaluationReport(stats=stats, per_class=tables, results=list(results))
    if print_summary:
        print("\nPer-class AP (%):")
        print(format_per_class_table(tables))
    if output_dir is not None:
        folder = Path(output_dir)
        report.files["per_class_csv"] = save_per_class_csv(folder / PER_CLASS_CSV, tables)
        metrics = {
            **dict(stats),
            "num_results": stats.num_results,
            "annotations_file": str(annotations_file),
            **(extra_metrics or {}),
        }
        write_text_atomic(folder / METRICS_JSON, json.dumps(metrics, indent=1) + "\n")
        report.files["metrics"] = folder / METRICS_JSON
    if analysis_dir is not None:
        from maskspine.evaluation.analysis import analyze

        for iou_type in IOU_TYPES:
            report.analysis[iou_type] = analyze(
                annotations_file, report.results, analysis_dir, iou_type
            )
            report.files[f"analysis_{iou_type}"] = Path(analysis_dir) / iou_type
    if print_summary:
        for role, path in report.files.items():
            print(f"{role.replace('_', ' ')}: {path}")
    return report


def evaluate_model(
    model: Callable,
    config: Config,
    val_data: str | os.PathLike | None = None,
    *,
    predictions: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    analysis_dir: str | os.PathLike | None = None,
    batch_size: int | None = None,
    data_dir: str | os.PathLike | None = None,
    progress: bool = True,
    print_summary: bool = True,
    extra_metrics: dict[str, Any] | None = None,
) -> EvaluationReport:
    """Runs an in-memory model over a validation split and evaluates it (`evaluate_results`).

    Args:
        model: the model, built for `config`.
        config: its config (resolved classes; `category_ids` or the data's categories).
        val_data: see `evaluation_data`.
        predictions: also save the COCO results here (JSON list, `save_predictions`).
        output_dir, analysis_dir, print_summary: see `evaluate_results`.
        batch_size: images per model call (default `config.test_batch_size`).
        data_dir: where generated and prepared data live.
        progress: show a progress bar.
        extra_metrics: more entries for metrics.json.
    """
    data = evaluation_data(config, val_data, batch_size=batch_size, data_dir=data_dir)
    if print_summary:
        print(f"Evaluating on {data.name}: {data.num_images} images")
    results = predict_coco_results(
        model, data.dataset, data.category_ids, progress, num_images=data.num_images
    )
    files = {}
    if predictions is not None:
        files["predictions"] = save_predictions(predictions, results)
    report = evaluate_results(
        results,
        data.annotations_file,
        output_dir=output_dir,
        analysis_dir=analysis_dir,
        print_summary=print_summary,
        extra_metrics={
            **(extra_metrics or {}),
            **({"predictions": str(predictions)} if predictions is not None else {}),
        },
    )
    report.files = {**files, **report.files}
    return report


def default_output_dir(checkpoint: Path) -> Path:
    """`<run dir>/eval`: the folder holding the checkpoint's config.yaml, else the
    checkpoint's own folder."""
    from maskspine.checkpoints import run_config_path

    config_file = run_config_path(checkpoint)
    run_dir = config_file.parent if config_file is not None else checkpoint.parent
    return run_dir / DEFAULT_OUTPUT_FOLDER


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    config_path: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    *,
    val_data: str | os.PathLike | None = None,
    predictions: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    analysis_dir: str | os.PathLike | None = None,
    batch_size: int | None = None,
    data_dir: str | os.PathLike | None = None,
    progress: bool = True,
    print_summary: bool = True,
) -> EvaluationReport:
    """`maskspine eval`: a checkpoint's COCO metrics on a validation split.

    Args:
        checkpoint: a `.weights.h5` file or a run directory (its best checkpoint, else its
            latest); the config saved beside it gives the classes and category ids.
        config_path: a config overriding the saved one's model and test settings.
        overrides: `key=value` config overrides, applied last.
        val_data: see `evaluation_data`.
        predictions: a COCO results JSON. When it exists it is evaluated and the model is not
            run (nor its weights loaded); otherwise the model's results are written to it.
        output_dir: where `per_class_ap.csv` and `metrics.json` go; default
            `default_output_dir(checkpoint)` (`<run dir>/eval/`).
        analysis_dir: write the error analysis here (see `evaluate_results`).
        batch_size: images per model call (default `config.test_batch_size`).
        data_dir: where generated and prepared data live.
        progress, print_summary: progress bar, printed summaries.

    Raises:
        CheckpointError: a missing checkpoint, or weights that do not fit the config's model
            (naming the file and the weights that disagree).
        ConfigError, FileNotFoundError, DataError, EvaluationError: unusable input, named.
    """
    from maskspine.checkpoints import config_for_checkpoint, load_model, resolve_checkpoint

    weights = resolve_checkpoint(checkpoint)
    output_dir = Path(output_dir) if output_dir is not None else default_output_dir(weights)
    extra = {"checkpoint": str(weights)}
    if predictions is not None and Path(predictions).is_file():
        config = config_for_checkpoint(weights, config_path, overrides)
        annotations = ground_truth_file(config, val_data, data_dir=data_dir)
        try:
            results = load_predictions(predictions)
        except ValueError as error:
            raise EvaluationError(str(error)) from None
        if print_summary:
            print(
                f"Loaded {len(results)} predictions from {predictions}; the model is not run "
                "(delete the file to run it again)"
            )
        report = evaluate_results(
            results,
            annotations,
            output_dir=output_dir,
            analysis_dir=analysis_dir,
            print_summary=print_summary,
            source=str(predictions),
            extra_metrics={**extra, "predictions": str(predictions)},
        )
        report.model_ran = False
        report.checkpoint = weights
        return report

    model, config, weights = load_model(weights, config_path, overrides)
    if print_summary:
        print(f"Loaded {weights}")
    report = evaluate_model(
        model,
        config,
        val_data,
        predictions=predictions,
        output_dir=output_dir,
        analysis_dir=analysis_dir,
        batch_size=batch_size,
        data_dir=data_dir,
        progress=progress,
        print_summary=print_summary,
        extra_metrics=extra,
    )
    report.checkpoint = weights
    return report
