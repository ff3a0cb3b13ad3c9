"""What the commands share: the one mapping of user errors to `error:` lines, help texts.

Every command function is wrapped in `user_errors`: an error of `maskspine.errors` (bad
config, data, checkpoint, input file, ...) or a missing path is printed as one line on
stderr, `error: <message>`, with exit code 2, never a traceback. Importing this module
does not import TensorFlow.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from enum import Enum
from typing import TypeVar

import typer

from maskspine.choices import JIT_COMPILE, PRECISIONS
from maskspine.errors import USER_ERRORS

F = TypeVar("F", bound=Callable)

CONFIG_HELP = (
    "A config whose keys replace those saved with the checkpoint, the others kept "
    "(optional: the run directory's config.yaml alone is used)."
)
CHECKPOINT_HELP = "A .weights.h5 file, or a run directory (its best checkpoint, else its latest)."
SET_HELP = "Config override KEY=VALUE (repeatable), e.g. --set test_cfg.rcnn.score_thr=0.3."
PRECISION_HELP = (
    "Compute in float32, bfloat16, float16 or auto (the config's `precision`; default: the "
    "saved config's)."
)
DATA_DIR_HELP = (
    "Where generated and prepared data go (default $MASKSPINE_DATA_DIR or ~/.cache/maskspine)."
)


#: `--precision` values: the config's `precision` (maskspine/precision.py).
Precision = Enum("Precision", {value: value for value in PRECISIONS}, type=str)
#: `--jit-compile` values: the config's `jit_compile` (maskspine/jit.py).
JitCompile = Enum("JitCompile", {value: value for value in JIT_COMPILE}, type=str)

JIT_HELP = (
    "XLA for the model: auto (by device kind), true or false (the config's `jit_compile`; "
    "default: the saved config's)."
)


def compute_overrides(precision: Enum | None, jit_compile: Enum | None = None) -> list[str]:
    """`--precision P` and `--jit-compile J` as the config overrides they stand for (none for
    an option not given)."""
    overrides = [] if precision is None else [f"precision={precision.value}"]
    return overrides + ([] if jit_compile is None else [f"jit_compile={jit_compile.value}"])


def user_errors(function: F) -> F:
    """Turns the errors a user can act on into one line on stderr, exit code 2."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except USER_ERRORS as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def report_failures(failures: list[tuple[str, str]], what: str, unit: str = "image") -> None:
    """Names every failed item on stderr with its reason, then a count."""
    for path, reason in failures:
        typer.echo(f"skipped {path}: {reason}", err=True)
    if failures:
        typer.echo(f"{len(failures)} {unit}(s) skipped (could not be {what})", err=True)
