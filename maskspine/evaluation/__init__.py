"""COCO evaluation (pycocotools), per-class tables, the predictions file, error analysis.

`analyze` (matplotlib) is imported on first use, so evaluation alone does not load matplotlib.
"""

from maskspine.evaluation.coco_eval import (
    IOU_TYPES,
    STAT_NAMES,
    EvaluationResult,
    PerClassAP,
    evaluate_coco,
    format_per_class_table,
    load_coco_gt,
    load_predictions,
    per_class_ap,
    per_class_tables,
    save_per_class_csv,
    save_predictions,
)

__all__ = [
    "IOU_TYPES",
    "STAT_NAMES",
    "EvaluationResult",
    "PerClassAP",
    "analyze",
    "evaluate_coco",
    "format_per_class_table",
    "load_coco_gt",
    "load_predictions",
    "per_class_ap",
    "per_class_tables",
    "save_per_class_csv",
    "save_predictions",
]


def __getattr__(name: str):
    if name == "analyze":
        from maskspine.evaluation.analysis import analyze

        return analyze
    raise AttributeError(f"module 'maskspine.evaluation' has no attribute {name!r}")
