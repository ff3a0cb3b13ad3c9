"""`maskspine infer`: a checkpoint run over image files, written as the reference's JSON.

    maskspine infer --checkpoint runs/260101_MaskRCNN_shapes_256x256 --input photos/ \
        --output predictions.json --score-threshold 0.3

Every JPEG / PNG in the folder's top level (or the one file given) is read; an image that
cannot be read is named on stderr and skipped, the others are still written, and the exit
code is then 1.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from maskspine.config import ConfigError

F = TypeVar("F", bound=Callable)

CONFIG_HELP = (
    "A config overriding the model and test settings saved with the checkpoint "
    "(optional: the run directory's config.yaml is used)."
)
CHECKPOINT_HELP = "A .weights.h5 file, or a run directory (its best checkpoint, else its latest)."
SET_HELP = "Config override KEY=VALUE (repeatable), e.g. --set test_cfg.rcnn.score_thr=0.3."


def model_errors(function: F) -> F:
    """The errors a user can act on (config, data, checkpoint, input files) as `error: ...`
    on stderr and exit code 2, never a traceback.

    (The same contract as `maskspine.cli.main.user_errors`, with the model commands' own
    error types; kept here so that this module does not import `cli.main`, which imports it.)
    """

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        from maskspine.checkpoints import CheckpointError
        from maskspine.data.coco import DataError
        from maskspine.evaluation.runner import EvaluationError
        from maskspine.inference import InferenceError

        try:
            return function(*args, **kwargs)
        except (
            ConfigError,
            FileNotFoundError,
            CheckpointError,
            DataError,
            InferenceError,
            EvaluationError,
        ) as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def report_failures(failures: list[tuple[str, str]], what: str) -> None:
    """Names every failed image on stderr, then a count."""
    for path, reason in failures:
        typer.echo(f"skipped {path}: {reason}", err=True)
    if failures:
        typer.echo(f"{len(failures)} image(s) could not be {what}", err=True)


@model_errors
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
    overrides: Annotated[list[str] | None, typer.Option("--set", help=SET_HELP)] = None,
) -> None:
    """Predict instances in images: JSON keyed by image path, as the reference writes it."""
    from maskspine.checkpoints import load_model
    from maskspine.inference import find_images, predict_images, save_inference_json

    images = find_images(input)
    model, model_config, weights = load_model(checkpoint, config, overrides or [])
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
