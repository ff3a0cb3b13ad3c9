"""`maskspine import-weights`: published SpineNet Mask R-CNN checkpoints into a run directory.

    maskspine import-weights spinenet-49.tar.gz --format tpu --model 49 --output runs/coco-49
    maskspine import-weights ~/mg/ckpt-162050 --format modelgarden --model 96 --output runs/mg96

The run directory then works with `eval`, `infer`, `draw`, `export` and `train --pretrained`
as one written by `maskspine train` does.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from maskspine.cli.common import SET_HELP, user_errors


class WeightsFormat(str, Enum):
    """`--format` values."""

    tpu = "tpu"
    modelgarden = "modelgarden"


@user_errors
def import_weights_command(
    source: Annotated[
        Path,
        typer.Argument(
            help="A checkpoint prefix (model.ckpt-162050, ckpt-1), a directory holding one "
            "(the latest), or the downloaded .tar.gz as it is.",
            metavar="SOURCE",
            show_default=False,
        ),
    ],
    format: Annotated[
        WeightsFormat,
        typer.Option(
            "--format",
            help="tpu: the tensorflow/tpu model zoo (TF1); modelgarden: a TF Model Garden "
            "tf.train.Checkpoint (maskrcnn_spinenet_coco).",
        ),
    ],
    model: Annotated[
        str,
        typer.Option("--model", help="SpineNet model id: 49S, 49, 96, 143, 190 (tpu only)."),
    ],
    output: Annotated[Path, typer.Option("--output", help="The run directory to write.")],
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help=SET_HELP + " Written into the run's config.yaml."),
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace OUTPUT if it exists and is not empty."),
    ] = False,
) -> None:
    """Import a tensorflow/tpu or Model Garden SpineNet Mask R-CNN checkpoint (COCO, 91
    classes by COCO id) as a maskspine run directory: config.yaml + model.weights.h5."""
    from maskspine.pretrained import import_weights

    report = import_weights(
        source,
        format=format.value,
        model=model,
        output=output,
        overrides=overrides or [],
        force=force,
        echo=typer.echo,
    )
    typer.echo(report.summary())
