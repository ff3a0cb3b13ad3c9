"""The `maskspine` console script: one Typer app, one sub-command per task.

The CLI is thin: each command parses its flags, loads the config and calls one
library function. Errors a user can fix (bad config, missing files) are printed
as one clear line and exit with code 2, never as a traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

import typer

import maskspine
from maskspine.checkpoints import CheckpointError
from maskspine.config import ConfigError
from maskspine.data.coco import DataError
from maskspine.training import TrainingError

app = typer.Typer(
    name="maskspine",
    help="SpineNet Mask R-CNN instance segmentation: train, evaluate, infer, draw, export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable)

#: Exceptions that mean "the user's input is wrong", printed without a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    FileNotFoundError,
    DataError,
    CheckpointError,
    TrainingError,
)


def user_errors(function: F) -> F:
    """Turns the user-facing errors raised by a command into one line on stderr, exit 2."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except USER_ERRORS as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


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


from maskspine.cli.data import app as data_app  # noqa: E402

app.add_typer(data_app, name="data")

from maskspine.cli.train import train_command  # noqa: E402

app.command("train")(train_command)

from maskspine.cli.export import export_command  # noqa: E402

app.command("export")(export_command)

from maskspine.cli.draw import draw_command  # noqa: E402
from maskspine.cli.evaluate import eval_command  # noqa: E402
from maskspine.cli.infer import infer_command  # noqa: E402

app.command("eval")(eval_command)
app.command("infer")(infer_command)
app.command("draw")(draw_command)
