"""The `maskspine` console script: one Typer app, one sub-command per task.

The CLI is thin: each command parses its flags, loads the config and calls one
library function. Errors a user can fix (bad config, missing files) are printed
as one clear line and exit with code 2, never as a traceback (`maskspine.cli.common`).
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.core import TyperGroup

import maskspine
from maskspine.cli.benchmark import benchmark_command
from maskspine.cli.data import app as data_app
from maskspine.cli.draw import draw_command
from maskspine.cli.evaluate import eval_command
from maskspine.cli.export import export_command
from maskspine.cli.import_weights import import_weights_command
from maskspine.cli.infer import infer_command
from maskspine.cli.train import train_command


def usage_error_line(error: Exception) -> str:
    """A usage error (a bad choice, a value out of range, a missing option, an unknown
    command) as one line: Click's message, the valid choices included, and where the help is."""
    message = " ".join(error.format_message().split())  # type: ignore[attr-defined]
    message = message.replace("Value error, ", "")  # Typer's wording of a bad choice
    context = getattr(error, "ctx", None)
    command = context.command_path if context is not None else "maskspine"
    return f"error: {message.rstrip('.')} (see {command} --help)"


class OneLineErrors(TyperGroup):
    """The app's command group: a usage error is one `error:` line on stderr, exit code 2
    (instead of Click's usage box), as every other error of the command line is."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except typer.Abort:
            typer.echo("Aborted.", err=True)
            sys.exit(1)
        except typer.TyperException as error:  # Click's errors, as Typer vendors them
            if type(error).__name__ == "NoArgsIsHelpError":  # `maskspine` alone: the help
                typer.echo(error.ctx.get_help())  # type: ignore[attr-defined]
                sys.exit(0)
            if hasattr(error, "ctx"):  # a usage error
                typer.echo(usage_error_line(error), err=True)
                sys.exit(2)
            typer.echo(f"error: {error}", err=True)
            sys.exit(getattr(error, "exit_code", 1))
        # Without standalone mode Click returns the exit code of a command that exited
        # (typer.Exit), and the command's return value (None) otherwise.
        sys.exit(result if isinstance(result, int) else 0)


app = typer.Typer(
    name="maskspine",
    cls=OneLineErrors,
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
