"""`maskspine export`: a SavedModel for TF Serving.

    maskspine export --checkpoint runs/shapes --output exports/shapes
    maskspine export configs/mask_rcnn_49S_640.yaml --checkpoint best.weights.h5 \\
        --output exports/coco --input-type all --full-masks

Writes `OUTPUT/<version>/` (version 1, or the next free number), which TF Serving serves as
it is (`maskspine.export` describes the signatures).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from maskspine.cli.common import (
    JIT_HELP,
    SET_HELP,
    JitCompile,
    Precision,
    compute_overrides,
    user_errors,
)


class InputType(str, Enum):
    """`--input-type` values."""

    image_tensor = "image_tensor"
    image_bytes = "image_bytes"
    tf_example = "tf_example"
    all = "all"


@user_errors
def export_command(
    checkpoint: Annotated[
        Path,
        typer.Option(
            "--checkpoint",
            help="A .weights.h5 file or a run directory (its best, else latest, checkpoint).",
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", help="Base folder of the model for TF Serving.")
    ],
    config: Annotated[
        Path | None,
        typer.Argument(
            help="YAML config; default the config.yaml saved with the checkpoint.",
            metavar="CONFIG",
            show_default=False,
        ),
    ] = None,
    version: Annotated[
        int | None,
        typer.Option("--version", min=1, help="Version folder; default the next free number."),
    ] = None,
    input_type: Annotated[
        InputType,
        typer.Option(
            "--input-type",
            help="Serving input: uint8 image tensors, encoded image bytes, tf.Examples, or all "
            "three (the first is serving_default).",
        ),
    ] = InputType.all,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", min=1, help="Fix the batch size (default: any)."),
    ] = None,
    score_threshold: Annotated[
        float | None,
        typer.Option(
            "--score-threshold",
            min=0.0,
            max=1.0,
            help="Drop detections scoring below this (default: the config's test_cfg.rcnn.score_thr).",
        ),
    ] = None,
    full_masks: Annotated[
        bool,
        typer.Option(
            "--full-masks",
            help="Also output detection_masks_image: uint8 masks pasted into the original image.",
        ),
    ] = False,
    precision: Annotated[
        Precision | None,
        typer.Option(
            "--precision",
            help="Compute in this precision (the config's `precision`; default: the saved "
            "config's). Inputs stay uint8 / strings, outputs float32.",
        ),
    ] = None,
    jit_compile: Annotated[JitCompile | None, typer.Option("--jit-compile", help=JIT_HELP)] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help=SET_HELP),
    ] = None,
) -> None:
    """Export a checkpoint as a SavedModel for TF Serving (pre- and post-processing inside)."""
    from maskspine.checkpoints import load_model
    from maskspine.export import export_saved_model, free_version
    from maskspine.files import check_writable_folder

    # Checked before loading the model: fails in a second instead of after the build. An
    # export never replaces anything: it writes a new version folder.
    check_writable_folder(output, "--output")
    target_version = free_version(output, version)
    overrides = [*(overrides or []), *compute_overrides(precision, jit_compile)]
    model, loaded_config, weights = load_model(checkpoint, config, overrides)
    typer.echo(f"loaded {weights} ({model.precision}); XLA {'on' if model.xla else 'off'}")
    result = export_saved_model(
        model,
        loaded_config,
        output,
        version=target_version,
        input_types=input_type.value,
        batch_size=batch_size,
        score_threshold=score_threshold,
        full_masks=full_masks,
    )
    typer.echo(
        f"exported {result.path} in {result.seconds:.1f} s ({result.size_bytes / 1e6:.1f} MB)"
    )
    typer.echo(f"signatures: {', '.join(result.signatures)}")
