"""`maskspine infer`: a checkpoint run over image files, written as the reference's JSON.

    maskspine infer --checkpoint runs/260101_MaskRCNN_shapes_256x256 --input photos/ \
        --output predictions.json --score-threshold 0.3

Every JPEG / PNG in the folder's top level (or the one file given) is read; an image that
cannot be read is named on stderr and skipped, the others are still written, and the exit
code is then 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from maskspine.cli.common import (
    CHECKPOINT_HELP,
    CONFIG_HELP,
    PRECISION_HELP,
    SET_HELP,
    Precision,
    precision_override,
    report_failures,
    user_errors,
)


@user_errors
def infer_command(
    config: Annotated[Path | None, typer.Argument(help=CONFIG_HELP, show_default=False)] = None,
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help=CHECKPOINT_HELP)] = ...,
    input: Annotated[
        Path, typer.Option("--input", help="An image file, or a folder of JPEG / PNG images.")
    ] = ...,
    output: Annotated[Path, typer.Option("--output", help="The JSON file to write.")] = ...,
    score_threshold: Annotated[
        float,
        typer.Option(
            "--score-threshold",
            min=0.0,
            max=1.0,
            help="Leave out predictions scoring below this (the config's "
            "test_cfg.rcnn.score_thr applies first).",
        ),
    ] = 0.0,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", min=1, help="Images per model call (default: config)."),
    ] = None,
    precision: Annotated[Precision | None, typer.Option("--precision", help=PRECISION_HELP)] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help=SET_HELP)] = None,
) -> None:
    """Predict instances in images: JSON keyed by image path, as the reference writes it."""
    from maskspine.checkpoints import load_model
    from maskspine.data.images import find_images
    from maskspine.formats import save_inference_json
    from maskspine.predict import predict_images

    images = find_images(input)
    overrides = [*(overrides or []), *precision_override(precision)]
    model, model_config, weights = load_model(checkpoint, config, overrides)
    typer.echo(f"Loaded {weights}; {len(images)} image(s) from {input}")
    entries, failures = predict_images(
        model,
        model_config,
        images,
        batch_size=batch_size,
        score_threshold=score_threshold,
        progress=True,
    )
    save_inference_json(output, entries)
    count = sum(len(entry["predictions"]) for entry in entries.values())
    typer.echo(f"Wrote {count} predictions for {len(entries)} image(s) to {output}")
    report_failures(failures, "read")
    if failures:
        raise typer.Exit(1)
