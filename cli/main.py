"""The `maskspine` console script: one Typer app, one sub-command per task.

The CLI is thin: each command parses its flags, loads the config and calls one
library function. Errors a user can fix (bad config, missing files) are printed
as one clear line and exit with code 2, never as a traceback (`maskspine.cli.common`).
"""

from __future__ import annotations

import sys

import typer

import maskspine
from maskspine.cli.benchmark import benchmark_command
from maskspine.cli.data import app as data_app
from maskspine.cli.draw import draw_command
from maskspine.cli.evaluate import eval_command
from maskspine.cli.export import export_command
from maskspine.cli.import_weights import import_weights_command
from maskspine.cli.infer import infer_command
from maskspine.cli.train import train_command

app = typer.Typer(
    name="maskspine",
    help="SpineNet Mask R-CNN instance segmentation: train, evaluate, infer, draw, export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"maskspine {maskspine.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    verbose: bool = typer.Option(
        False,
        "--verbose",
        help="Show TensorFlow's native log lines (also: MASKSPINE_TF_LOGS=1).",
    ),
) -> None:
    """SpineNet Mask R-CNN instance segmentation (Keras 3 / TensorFlow)."""


def run() -> None:
    """The console script: TensorFlow's native log noise filtered (`native_logs`), then the app."""
    from maskspine.cli import native_logs

    if native_logs.wanted(sys.argv[1:]):
        native_logs.install()
    sys.exit(app())


app.add_typer(data_app, name="data")
app.command("train")(train_command)
app.command("eval")(eval_command)
app.command("infer")(infer_command)
app.command("draw")(draw_command)
app.command("export")(export_command)
app.command("benchmark")(benchmark_command)
app.command("import-weights")(import_weights_command)
