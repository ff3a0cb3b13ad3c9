"""Error analysis of COCO results: precision/recall curves and the COCO error breakdown.

What the reference's DetectEval analysis (detecteval.py) gives, written on pycocotools:

- precision/recall curves per category and overall (mean over categories) at IoU .50, .75
  and averaged over .50:.95 (area all, 100 detections per image), as PNG and CSV;
- the COCO error breakdown of the COCO API's `analyze()` (after D. Hoiem et al., "Diagnosing
  Error in Object Detectors"): for each category, a series of precision/recall curves, each
  at least as high as the one before as the evaluation forgives one more kind of error:

  ====  ==========================================================================
  C75   PR at IoU .75
  C50   PR at IoU .50
  Loc   PR at IoU .10: localisation errors forgiven (duplicates still count)
  Sim   PR at IoU .10 after false positives on objects of another category of the same
        supercategory are removed (those objects become "ignore" regions)
  Oth   same with all other categories: every class confusion removed
  BG    all remaining false positives (background) removed: precision 1 up to the
        highest recall reached
  FN    all false negatives removed as well: precision 1 at every recall
  ====  ==========================================================================

  The area under each curve (the mean precision over the 101 recall points) is the number
  shown in the legends and the CSV; e.g. C75 is the category's AP75 and C50 its AP50.

Differences from the MATLAB `analyze()`: categories without ground truth (in an area range)
are left out of the overall means instead of counting as zeros; categories without a
`supercategory` (or with an empty one) share one group, so when no category has one, Sim
equals Oth. The Python pycocotools overwrites an annotation's `ignore` flag with `iscrowd`,
so the Sim / Oth runs use a small `COCOeval` subclass that keeps it, as the MATLAB API does.

Figures are drawn on `matplotlib.figure.Figure` objects and saved with the Agg renderer,
without pyplot, so importing this module leaves the user's matplotlib backend alone.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskspine.evaluation.coco_eval import (
    check_results,
    load_coco_gt,
    load_results,
    mean_over_valid,
    results_list,
)
from maskspine.files import write_text_atomic

#: The rows of the error breakdown, from strictest to most forgiving.
ERROR_ROWS = ("C75", "C50", "Loc", "Sim", "Oth", "BG", "FN")
#: pycocotools' area ranges, in its order.
AREAS = ("all", "small", "medium", "large")
#: IoU thresholds of the curves: the standard .50:.95 plus .10 for Loc.
_STANDARD_IOUS = np.linspace(0.5, 0.95, 10)
_EVAL_IOUS = np.append(_STANDARD_IOUS, 0.1)
_COLOURS = ("#f0f0f0", "#bcd4e6", "#4f81bd", "#c0504d", "#9bbb59", "#8064a2", "#f79646")
_IGNORE_KEY = "_analysis_ignore"


class _IgnoreFlagCOCOeval(COCOeval):
    """COCOeval that keeps ground truth marked with `_analysis_ignore` as "ignore" regions
    (pycocotools' `_prepare` resets `ignore` to `iscrowd`)."""

    def _prepare(self) -> None:
        super()._prepare()
        for ground_truth in self._gts.values():
            for annotation in ground_truth:
                if annotation.get(_IGNORE_KEY):
                    annotation["ignore"] = 1


def _quiet():
    return contextlib.redirect_stdout(io.StringIO())


def _coco_from(images: list, categories: list, annotations: list) -> COCO:
    coco = COCO()
    coco.dataset = {"images": images, "categories": categories, "annotations": annotations}
    with _quiet():
        coco.createIndex()
    return coco


def _slug(category_id: int, name: str) -> str:
    return f"{category_id:04d}_" + (re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "category")


# --------------------------------------------------------------------------- computation


def _precision_at_10(
    gt: COCO, gt_annotations: list[dict], dt_annotations: list[dict], image_ids: list, iou_type: str
) -> np.ndarray:
    """Class-agnostic PR at IoU .1 of `dt_annotations` against `gt_annotations` (some flagged
    to ignore), over `image_ids`. Returns [R, A] precision (-1 where no ground truth)."""
    images = [gt.imgs[i] for i in image_ids]
    categories = list(gt.dataset["categories"])
    gt_k = _coco_from(images, categories, gt_annotations)
    dt_k = _coco_from(images, categories, dt_annotations)
    evaluator = _IgnoreFlagCOCOeval(gt_k, dt_k, iou_type)
    evaluator.params.imgIds = list(image_ids)
    evaluator.params.catIds = sorted(gt.getCatIds())
    evaluator.params.useCats = 0
    evaluator.params.iouThrs = np.array([0.1])
    evaluator.params.maxDets = [100]
    with _quiet():
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator.eval["precision"][0, :, 0, :, 0]


def _error_breakdown(gt: COCO, coco_dt: COCO, iou_type: str, precision: np.ndarray) -> np.ndarray:
    """The module docstring's seven curves per category and area.

    Args:
        precision: [T, R, K, A] of the evaluation at `_EVAL_IOUS` (-1 without ground truth).

    Returns:
        [7, R, K, A] precision, -1 where a category has no ground truth in an area range.
    """
    category_ids = sorted(gt.getCatIds())
    ps = np.zeros((len(ERROR_ROWS), *precision.shape[1:]))
    ps[0] = precision[int(np.flatnonzero(np.isclose(_EVAL_IOUS, 0.75))[0])]
    ps[1] = precision[int(np.flatnonzero(np.isclose(_EVAL_IOUS, 0.5))[0])]
    ps[2] = precision[len(_EVAL_IOUS) - 1]  # IoU .1

    def group(category_id: int) -> str:
        return str(gt.cats[category_id].get("supercategory") or "")

    for k, category_id in enumerate(category_ids):
        dts = [dict(a) for a in coco_dt.loadAnns(coco_dt.getAnnIds(catIds=[category_id]))]
        own = gt.loadAnns(gt.getAnnIds(catIds=[category_id]))
        if not dts or not own:  # nothing to forgive: Sim and Oth are Loc
            ps[3, :, k] = ps[4, :, k] = ps[2, :, k]
            continue
        image_ids = sorted({a["image_id"] for a in dts} | {a["image_id"] for a in own})
        for row, same_group_only in ((3, True), (4, False)):
            gts = []
            for image_id in image_ids:
                for annotation in gt.imgToAnns.get(image_id, []):
                    other = annotation["category_id"] != category_id
                    if (
                        other
                        and same_group_only
                        and group(annotation["category_id"]) != group(category_id)
                    ):
                        continue
                    gts.append({**annotation, _IGNORE_KEY: other})
            ps[row, :, k] = _precision_at_10(gt, gts, dts, image_ids, iou_type)
    has_gt = ps[2] > -1  # [R, K, A]
    ps[ps == -1] = 0.0
    ps[5] = ps[4] > 0
    ps[6] = 1.0
    ps[:, ~has_gt] = -1.0
    return ps


# --------------------------------------------------------------------------- plots


def _plot_breakdown(path: Path, recall: np.ndarray, curves: np.ndarray, title: str) -> None:
    """Stacked areas between successive curves; `curves` [7, R]."""
    figure = Figure(figsize=(6.4, 4.8), dpi=100)
    axes = figure.add_subplot()
    lower = np.zeros_like(recall)
    for row, name in enumerate(ERROR_ROWS):
        upper = np.maximum(curves[row], lower)
        area = float(np.mean(curves[row]))
        label = f"[{area:.3f}] {name}"
        axes.fill_between(recall, lower, upper, color=_COLOURS[row], label=label, linewidth=0)
        axes.plot(recall, upper, color="#404040", linewidth=0.6)
        lower = upper
    axes.set(xlim=(0, 1), ylim=(0, 1.0), xlabel="recall", ylabel="precision", title=title)
    axes.legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)


def _plot_pr(path: Path, recall: np.ndarray, curves: Mapping[str, np.ndarray], title: str) -> None:
    figure = Figure(figsize=(6.4, 4.8), dpi=100)
    axes = figure.add_subplot()
    for label, curve in curves.items():
        if np.all(np.isnan(curve)):
            continue
        ap = float(np.mean(curve))
        axes.plot(recall, curve, label=f"IoU={label} (AP {ap:.3f})")
    axes.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall", ylabel="precision", title=title)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)


# --------------------------------------------------------------------------- entry point


def analyze(
    coco_gt: COCO | str | os.PathLike,
    results: Sequence[Mapping[str, Any]] | str | os.PathLike,
    output_dir: str | os.PathLike,
    iou_type: str = "bbox",
) -> dict[str, Any]:
    """PR curves and the COCO error breakdown of `results`, written under
    `output_dir/<iou_type>/`.

    Args:
        coco_gt: a pycocotools COCO or the path of its labels.json.
        results: COCO result records (as for `evaluate_coco`) or the path of a predictions JSON.
        output_dir: folder for the files (created).
        iou_type: "bbox" or "segm".

    Returns:
        dict with `files` (every path written), `pr_curves_csv`, `error_breakdown_csv`,
        `overall` ({row: area under curve} over categories, area all), `overall_by_area`
        ({area: {row: value}}) and `per_class` ({category_id: {"name", row: value}}, area
        all; NaN for a category without ground truth). Files: `pr_curves.csv`,
        `pr_curves_overall.png`, `pr_curves/<id>_<name>.png`, `error_breakdown.csv`,
        `errors_overall_<area>.png` and `errors/<id>_<name>.png`.
    """
    gt = load_coco_gt(coco_gt, quiet=True)
    records = results_list(results)
    check_results(gt, records, iou_type)
    with _quiet():
        coco_dt = load_results(gt, records, iou_type)
        evaluator = COCOeval(gt, coco_dt, iou_type)
        evaluator.params.iouThrs = _EVAL_IOUS
        evaluator.params.maxDets = [100]
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][..., 0]  # [T, R, K, A]
    recall = np.asarray(evaluator.params.recThrs)
    category_ids = list(evaluator.params.catIds)
    names = {c: str(gt.cats[c].get("name", c)) for c in category_ids}
    breakdown = _error_breakdown(gt, coco_dt, iou_type, precision)

    folder = Path(output_dir) / iou_type
    (folder / "pr_curves").mkdir(parents=True, exist_ok=True)
    (folder / "errors").mkdir(parents=True, exist_ok=True)
    files: list[Path] = []

    # PR curves, area all: per category at .50, .75 and the mean over .50:.95; NaN where a
    # category has no ground truth.
    area_all = AREAS.index("all")
    standard = precision[: len(_STANDARD_IOUS), :, :, area_all]  # [10, R, K]
    at_50, at_75 = (int(np.flatnonzero(np.isclose(_STANDARD_IOUS, v))[0]) for v in (0.5, 0.75))
    curves = {  # each [R, K]
        "0.50": mean_over_valid(standard[at_50 : at_50 + 1], axis=0),
        "0.75": mean_over_valid(standard[at_75 : at_75 + 1], axis=0),
        "0.50:0.95": mean_over_valid(standard, axis=0),
    }
    overall_curves = {label: mean_over_valid(c, axis=1) for label, c in curves.items()}
    rows: list[list[Any]] = [["scope", "category_id", "name", "iou", "recall", "precision"]]
    for label, curve in overall_curves.items():
        rows += [
            ["overall", "", "all", label, f"{r:.2f}", _number(p)]
            for r, p in zip(recall, curve, strict=True)
        ]
    for k, category_id in enumerate(category_ids):
        name = names[category_id]
        for label, curve in curves.items():
            rows += [
                ["category", category_id, name, label, f"{r:.2f}", _number(p)]
                for r, p in zip(recall, curve[:, k], strict=True)
            ]
        if not np.all(np.isnan(curves["0.50"][:, k])):
            path = folder / "pr_curves" / f"{_slug(category_id, name)}.png"
            per_iou = {label: c[:, k] for label, c in curves.items()}
            _plot_pr(path, recall, per_iou, f"{iou_type}: {name}")
            files.append(path)
    path = folder / "pr_curves_overall.png"
    _plot_pr(path, recall, overall_curves, f"{iou_type}: overall (mean over categories)")
    files.append(path)
    pr_csv = folder / "pr_curves.csv"
    _write_csv(pr_csv, rows)
    files.append(pr_csv)

    # Error breakdown: area under each curve per category and overall.
    auc = mean_over_valid(breakdown, axis=1)  # [7, K, A]; NaN without ground truth
    overall_curves_by_area = mean_over_valid(breakdown, axis=2)  # [7, R, A]
    rows = [["scope", "category_id", "name", "area", *ERROR_ROWS]]
    overall_by_area: dict[str, dict[str, float]] = {}
    for a, area in enumerate(AREAS):
        values = {
            row: float(np.mean(overall_curves_by_area[i, :, a])) for i, row in enumerate(ERROR_ROWS)
        }
        overall_by_area[area] = values
        rows.append(["overall", "", "all", area, *(_number(v) for v in values.values())])
        if not np.all(np.isnan(overall_curves_by_area[:, :, a])):
            path = folder / f"errors_overall_{area}.png"
            _plot_breakdown(
                path, recall, overall_curves_by_area[:, :, a], f"{iou_type}: overall-{area}"
            )
            files.append(path)
    supercategories = sorted(
        {str(gt.cats[c].get("supercategory") or "") for c in category_ids} - {""}
    )
    for supercategory in supercategories:
        members = [
            k
            for k, c in enumerate(category_ids)
            if gt.cats[c].get("supercategory") == supercategory
        ]
        curves_sup = mean_over_valid(breakdown[:, :, members], axis=2)
        for a, area in enumerate(AREAS):
            values = [_number(float(np.mean(curves_sup[i, :, a]))) for i in range(len(ERROR_ROWS))]
            rows.append(["supercategory", "", supercategory, area, *values])
    per_class: dict[int, dict[str, Any]] = {}
    for k, category_id in enumerate(category_ids):
        for a, area in enumerate(AREAS):
            rows.append(
                [
                    "category",
                    category_id,
                    names[category_id],
                    area,
                    *(_number(v) for v in auc[:, k, a]),
                ]
            )
        per_class[int(category_id)] = {
            "name": names[category_id],
            **{row: float(auc[i, k, area_all]) for i, row in enumerate(ERROR_ROWS)},
        }
        if not np.isnan(auc[0, k, area_all]):
            path = folder / "errors" / f"{_slug(category_id, names[category_id])}.png"
            _plot_breakdown(
                path, recall, breakdown[:, :, k, area_all], f"{iou_type}: {names[category_id]}-all"
            )
            files.append(path)
    errors_csv = folder / "error_breakdown.csv"
    _write_csv(errors_csv, rows)
    files.append(errors_csv)

    return {
        "iou_type": iou_type,
        "files": files,
        "pr_curves_csv": pr_csv,
        "error_breakdown_csv": errors_csv,
        "overall": overall_by_area["all"],
        "overall_by_area": overall_by_area,
        "per_class": per_class,
    }


def _number(value: float) -> str:
    return "" if np.isnan(value) else f"{float(value):.6f}"


def _write_csv(path: Path, rows: list[list[Any]]) -> None:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    write_text_atomic(path, buffer.getvalue())
