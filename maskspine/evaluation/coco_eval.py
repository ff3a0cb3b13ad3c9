"""COCO evaluation with pycocotools: summaries, per-class AP, the predictions file.

`evaluate_coco` prints what the reference's eval prints (pycocotools' progress lines and
12-line summary per type, then `Bbox eval result: X` / `Segmentation eval result: Y`) and
returns the 12 numbers by name. Results are the `COCO.loadRes` records `to_coco_results`
makes: `image_id`, `category_id` (the data set's own id), `bbox` COCO xywh in original pixels,
`score` and, for `segm`, `segmentation` (compressed RLE).

For `segm` the records are passed without `bbox` and for `bbox` without `segmentation`, so
that pycocotools takes each detection's area from the mask (segm) or the box (bbox), as
Detectron2 does; `loadRes` would otherwise use the box area for both.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskspine.files import load_json_file, write_text_atomic

#: The 12 numbers of `COCOeval.summarize`, in its order.
STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)
IOU_TYPES = ("bbox", "segm")
#: The reference's line after each summary.
RESULT_LINE_NAMES = {"bbox": "Bbox eval result", "segm": "Segmentation eval result"}

_REQUIRED_KEYS = {"bbox": "bbox", "segm": "segmentation"}


class EvaluationResult(dict):
    """`{iou_type: {stat name: value}}` (see `STAT_NAMES`), plus the pycocotools objects.

    Attributes:
        evaluators: `{iou_type: COCOeval}` after `summarize()`, for `per_class_ap` and analysis.
        num_results: how many result records were evaluated.
    """

    def __init__(self, stats: Mapping[str, Mapping[str, float]], evaluators, num_results: int):
        super().__init__({key: dict(value) for key, value in stats.items()})
        self.evaluators: dict[str, COCOeval] = dict(evaluators)
        self.num_results = num_results


class PerClassAP(NamedTuple):
    """AP of one category (IoU .50:.95, .50 and .75; area all; 100 detections); NaN when the
    category has no ground truth in the evaluated images."""

    category_id: int
    name: str
    AP: float
    AP50: float
    AP75: float


# --------------------------------------------------------------------------- inputs


def load_coco_gt(coco_gt: COCO | str | os.PathLike, *, quiet: bool = False) -> COCO:
    """A pycocotools COCO object from itself or from the path of a labels.json.

    Raises:
        FileNotFoundError: naming the missing file.
    """
    if isinstance(coco_gt, COCO):
        return coco_gt
    path = Path(coco_gt)
    if not path.is_file():
        raise FileNotFoundError(f"ground-truth annotations file not found: {path}")
    with _maybe_quiet(quiet):
        return COCO(str(path))


def _maybe_quiet(quiet: bool):
    return contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext()


def results_list(results: Sequence[Mapping[str, Any]] | str | os.PathLike) -> list[dict]:
    """COCO result records given in memory, or the path of a predictions file, as a list of
    dicts (`load_predictions` reads the file)."""
    if isinstance(results, (str, os.PathLike)):
        return load_predictions(results)
    return [dict(record) for record in results]


def check_results(coco_gt: COCO, results: Sequence[Mapping[str, Any]], iou_type: str) -> None:
    """Errors a user can act on, before pycocotools fails with an assertion.

    Raises:
        ValueError: naming the results' image ids that are not in the ground truth, category
            ids the ground truth does not have, or records missing the `iou_type`'s field.
    """
    if iou_type not in _REQUIRED_KEYS:
        raise ValueError(f"unknown iou_type {iou_type!r}; use one of {IOU_TYPES}")
    key = _REQUIRED_KEYS[iou_type]
    missing = [index for index, record in enumerate(results) if key not in record]
    if missing:
        raise ValueError(
            f"{len(missing)} result records (first at index {missing[0]}) have no '{key}', "
            f"which '{iou_type}' evaluation needs; evaluate with iou_types without "
            f"'{iou_type}' or write '{key}' into the results"
        )
    image_ids = set(coco_gt.getImgIds())
    unknown_images = sorted({r["image_id"] for r in results} - image_ids, key=str)
    if unknown_images:
        shown = ", ".join(repr(i) for i in unknown_images[:10])
        more = f" and {len(unknown_images) - 10} more" if len(unknown_images) > 10 else ""
        raise ValueError(
            f"results name image ids not in the ground truth: {shown}{more}. Are the "
            "predictions from another split or annotations file?"
        )
    category_ids = set(coco_gt.getCatIds())
    unknown_categories = sorted({r["category_id"] for r in results} - category_ids, key=str)
    if unknown_categories:
        raise ValueError(
            f"results name category ids not in the ground truth: {unknown_categories} (the "
            f"ground truth has {sorted(category_ids)}). Results must carry the data set's "
            "category ids, not the model's contiguous labels."
        )


def _empty_results(coco_gt: COCO) -> COCO:
    """A results COCO with no detections (`loadRes` cannot take an empty list)."""
    empty = COCO()
    empty.dataset = {
        "images": list(coco_gt.dataset.get("images", [])),
        "categories": copy.deepcopy(coco_gt.dataset.get("categories", [])),
        "annotations": [],
    }
    with _maybe_quiet(True):
        empty.createIndex()
    return empty


def results_for_iou_type(results: Iterable[Mapping[str, Any]], iou_type: str) -> list[dict]:
    """Copies of the records with only the `iou_type`'s geometry (see the module docstring)."""
    drop = "segmentation" if iou_type == "bbox" else "bbox"
    return [{key: value for key, value in r.items() if key != drop} for r in results]


def load_results(coco_gt: COCO, results: Sequence[Mapping[str, Any]], iou_type: str) -> COCO:
    """`coco_gt.loadRes` of checked copies of `results` (the caller's records are not
    modified); an empty list gives a results COCO with no detections."""
    check_results(coco_gt, results, iou_type)
    if not results:
        return _empty_results(coco_gt)
    return coco_gt.loadRes(results_for_iou_type(results, iou_type))


# --------------------------------------------------------------------------- evaluation


def run_cocoeval(
    coco_gt: COCO, results: Sequence[Mapping[str, Any]], iou_type: str, *, verbose: bool = True
) -> COCOeval:
    """evaluate(), accumulate() and summarize() of one iou type; pycocotools prints unless
    `verbose` is False."""
    with _maybe_quiet(not verbose):
        coco_dt = load_results(coco_gt, results, iou_type)
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def evaluate_coco(
    coco_gt: COCO | str | os.PathLike,
    results: Sequence[Mapping[str, Any]] | str | os.PathLike,
    *,
    iou_types: Sequence[str] = IOU_TYPES,
    print_summary: bool = True,
) -> EvaluationResult:
    """COCO metrics of `results` against `coco_gt` with pycocotools.

    Args:
        coco_gt: a pycocotools COCO, or the path of its labels.json.
        results: COCO result records, or the path of a predictions JSON (`save_predictions`).
        iou_types: any of "bbox", "segm".
        print_summary: print pycocotools' output and the reference's `Bbox eval result: X` /
            `Segmentation eval result: Y` lines.

    Returns:
        `{iou_type: {"AP": ..., "AP50": ..., ..., "ARl": ...}}` (names in `STAT_NAMES`); -1 where
        pycocotools has nothing to average (no ground truth in that area range). With no
        results at all every AP / AR is 0 (or -1 without ground truth), and a line says so.

    Raises:
        ValueError: results for image / category ids the ground truth does not have, or an
            unknown iou type.
    """
    for iou_type in iou_types:
        if iou_type not in IOU_TYPES:
            raise ValueError(f"unknown iou_type {iou_type!r}; use one of {IOU_TYPES}")
    gt = load_coco_gt(coco_gt, quiet=not print_summary)
    records = results_list(results)
    for iou_type in iou_types:
        check_results(gt, records, iou_type)
    if not records and print_summary:
        print(
            "No detections to evaluate: every AP and AR is 0 (-1 where there is no ground truth)."
        )
    stats: dict[str, dict[str, float]] = {}
    evaluators: dict[str, COCOeval] = {}
    for iou_type in iou_types:
        evaluator = run_cocoeval(gt, records, iou_type, verbose=print_summary)
        evaluators[iou_type] = evaluator
        stats[iou_type] = {
            name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats, strict=True)
        }
        if print_summary:
            print(f"{RESULT_LINE_NAMES[iou_type]}: {stats[iou_type]['AP']}")
    return EvaluationResult(stats, evaluators, len(records))


# --------------------------------------------------------------------------- per class


def mean_over_valid(values: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    """Mean of the entries that are neither pycocotools' -1 ("no ground truth") nor NaN,
    over `axis` (all entries when None); NaN where there are none."""
    values = np.asarray(values, np.float64)
    valid = (values > -1) & ~np.isnan(values)
    total = np.where(valid, values, 0.0).sum(axis=axis)
    count = valid.sum(axis=axis)
    mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return float(mean) if axis is None else mean


def per_class_ap(coco_eval: COCOeval) -> list[PerClassAP]:
    """Per-category AP, AP50, AP75 (area all, 100 detections) from an accumulated COCOeval.

    Returns:
        One row per category of the evaluation, in category id order; NaN for categories
        without ground truth.
    """
    if not coco_eval.eval:
        raise ValueError("per_class_ap needs an accumulated COCOeval (run accumulate() first)")
    params = coco_eval.params
    precision = coco_eval.eval["precision"]  # [T, R, K, A, M]
    iou_thresholds = np.asarray(params.iouThrs)
    area_index = list(params.areaRngLbl).index("all")
    detections_index = len(params.maxDets) - 1
    at_50 = np.flatnonzero(np.isclose(iou_thresholds, 0.5))
    at_75 = np.flatnonzero(np.isclose(iou_thresholds, 0.75))
    rows = []
    for k, category_id in enumerate(params.catIds):
        values = precision[:, :, k, area_index, detections_index]
        name = coco_eval.cocoGt.cats.get(category_id, {}).get("name", str(category_id))
        rows.append(
            PerClassAP(
                int(category_id),
                str(name),
                mean_over_valid(values),
                mean_over_valid(values[at_50]) if at_50.size else math.nan,
                mean_over_valid(values[at_75]) if at_75.size else math.nan,
            )
        )
    return rows


def per_class_tables(result: EvaluationResult) -> dict[str, list[PerClassAP]]:
    """`{iou_type: per_class_ap(...)}` of every type in an `evaluate_coco` result."""
    return {iou_type: per_class_ap(evaluator) for iou_type, evaluator in result.evaluators.items()}


def _percent(value: float) -> str:
    return "nan" if math.isnan(value) else f"{100.0 * value:.1f}"


def format_per_class_table(tables: Mapping[str, Sequence[PerClassAP]]) -> str:
    """A text table, one row per category, AP / AP50 / AP75 in percent for each iou type."""
    types = list(tables)
    if not types:
        return ""
    names = {row.category_id: row.name for rows in tables.values() for row in rows}
    by_type = {t: {row.category_id: row for row in tables[t]} for t in types}
    name_width = max([len("category")] + [len(n) for n in names.values()])
    header = f"{'id':>5}  {'category':<{name_width}}"
    for iou_type in types:
        header += "".join(f"  {f'{iou_type} {s}':>11}" for s in ("AP", "AP50", "AP75"))
    lines = [header, "-" * len(header)]
    for category_id in sorted(names):
        line = f"{category_id:>5}  {names[category_id]:<{name_width}}"
        for iou_type in types:
            row = by_type[iou_type].get(category_id)
            values = (row.AP, row.AP50, row.AP75) if row else (math.nan,) * 3
            line += "".join(f"  {_percent(v):>11}" for v in values)
        lines.append(line)
    return "\n".join(lines)


def save_per_class_csv(path: str | os.PathLike, tables: Mapping[str, Sequence[PerClassAP]]) -> Path:
    """Write the per-class table as CSV: `category_id, name, <type>_AP, <type>_AP50,
    <type>_AP75` for each iou type (fractions in [0, 1], empty when NaN).

    Returns:
        The path written.
    """
    path = Path(path)
    types = list(tables)
    names = {row.category_id: row.name for rows in tables.values() for row in rows}
    by_type = {t: {row.category_id: row for row in tables[t]} for t in types}
    header = ["category_id", "name"] + [f"{t}_{s}" for t in types for s in ("AP", "AP50", "AP75")]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    for category_id in sorted(names):
        row = [category_id, names[category_id]]
        for iou_type in types:
            entry = by_type[iou_type].get(category_id)
            values = (entry.AP, entry.AP50, entry.AP75) if entry else (math.nan,) * 3
            row.extend("" if math.isnan(v) else repr(float(v)) for v in values)
        writer.writerow(row)
    write_text_atomic(path, buffer.getvalue())
    return path


# --------------------------------------------------------------------------- predictions file


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("ascii")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def save_predictions(path: str | os.PathLike, results: Sequence[Mapping[str, Any]]) -> Path:
    """Write COCO result records as a JSON list, atomically (temporary file + replace).

    Returns:
        The path written.
    """
    path = Path(path)
    text = json.dumps(list(results), default=_json_default)
    write_text_atomic(path, text)
    return path


def load_predictions(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a predictions JSON written by `save_predictions` (or any COCO results file).

    Raises:
        FileNotFoundError: naming the file.
        ValueError: naming the file when it is not a JSON list of result records.
    """
    path = Path(path)
    records = load_json_file(path, "predictions file", fix="; delete it to run the model again")
    if not isinstance(records, list):
        raise ValueError(f"{path}: a predictions file is a JSON list of COCO result records")
    for index, record in enumerate(records):
        if not isinstance(record, dict) or not {"image_id", "category_id", "score"} <= set(record):
            raise ValueError(
                f"{path}: record {index} is not a COCO result (needs image_id, category_id, "
                "score and bbox / segmentation)"
            )
    return records
