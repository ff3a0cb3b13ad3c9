"""`maskspine eval`: COCO metrics of a checkpoint on a validation split.

    maskspine eval --checkpoint runs/260101_MaskRCNN_shapes_256x256 --val-data shapes
    maskspine eval configs/mask_rcnn_49_640.yaml --checkpoint best.weights.h5 \
        --val-data /data/coco-2017/validation --predictions preds.json --analysis analysis/

Prints pycocotools' 12-line summaries for bbox and segm, the reference's `Bbox eval result:`
and `Segmentation eval result:` lines and a per-class AP table. Writes `per_class_ap.csv`
and `metrics.json` into `--output` (default `<run dir>/eval/`), the COCO results into
`--predictions FILE` (and reads them from there instead of running the model when the file
already exists), and with `--analysis DIR` the PR curves and COCO error breakdown.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from maskspine.cli.common import (
    CHECKPOINT_HELP,
    CONFIG_HELP,
    DATA_DIR_HELP,
    JIT_HELP,
    PRECISION_HELP,
    SET_HELP,
    JitCompile,
    Precision,
    compute_overrides,
    user_errors,
)


@user_errors
def eval_command(
    config: Annotated[Path | None, typer.Argument(help=CONFIG_HELP, show_default=False)] = None,
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help=CHECKPOINT_HELP)] = ...,
    val_data: Annotated[
        str | None,
        typer.Option(
            "--val-data",
            help="Validation split: a COCO-format folder (data/ + labels.json), a prepared "
            "data set or 'shapes' (default: the config's val_dataset, else shapes).",
        ),
    ] = None,
    predictions: Annotated[
        Path | None,
        typer.Option(
            "--predictions",
            help="COCO results JSON: written after the model runs; when it exists, it is "
            "evaluated and the model is not run.",
        ),
    ] = None,
    analysis: Annotated[
        Path | None,
        typer.Option(
            "--analysis", help="Write PR curves and the COCO error breakdown (PNG, CSV) here."
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            help="Folder for per_class_ap.csv and metrics.json (default: <run dir>/eval).",
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", min=1, help="Images per model call (default: config)."),
    ] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help=DATA_DIR_HELP)] = None,
    precision: Annotated[Precision | None, typer.Option("--precision", help=PRECISION_HELP)] = None,
    jit_compile: Annotated[JitCompile | None, typer.Option("--jit-compile", help=JIT_HELP)] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help=SET_HELP)] = None,
) -> None:
    """Evaluate a checkpoint with the COCO metrics (bbox and segm), per class too."""
    from maskspine.evaluation.runner import evaluate_checkpoint

    evaluate_checkpoint(
        checkpoint,
        config,
        [*(overrides or []), *compute_overrides(precision, jit_compile)],
        val_data=val_data,
        predictions=predictions,
        output_dir=output,
        analysis_dir=analysis,
        batch_size=batch_size,
        data_dir=data_dir,
    )
