"""The errors a user can act on: bad input, named where it is wrong, with the fix.

Every one derives from `MaskspineError`, which the command line prints as one `error:`
line (exit code 2) instead of a traceback (`maskspine.cli.common.user_errors`). The
modules raise them and re-export the one they own (`maskspine.config.ConfigError`, ...).
Nothing here imports TensorFlow.
"""

from __future__ import annotations

import os


class MaskspineError(Exception):
    """Input that cannot be used as given; the message says what, where and the fix."""


class ConfigError(MaskspineError, ValueError):
    """A config file or override that cannot be used (names the file and key)."""


class DataError(MaskspineError, ValueError):
    """Data that cannot be used as given.

    Attributes:
        reason: what is wrong and what would fix it.
        path: the file or folder it is about, when there is one.
    """

    def __init__(self, reason: str, *, path: str | os.PathLike | None = None):
        self.reason = str(reason)
        self.path = None if path is None else str(path)
        super().__init__(self.reason if self.path is None else f"{self.path}: {self.reason}")


class CheckpointError(MaskspineError, ValueError):
    """A checkpoint that is missing or does not fit the model; the message says which."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint file that cannot be read at all (cut short, overwritten, not HDF5)."""


class TrainingError(MaskspineError, RuntimeError):
    """Training stopped for a reason the user can act on (the message says which)."""


class EvaluationError(MaskspineError, ValueError):
    """Predictions or ground truth that cannot be evaluated together (names the file)."""


class InferenceError(MaskspineError, ValueError):
    """Input that inference or drawing cannot use; the message names the file and the fix."""


class ExportError(MaskspineError, ValueError):
    """An export that cannot be written as asked (names the folder or option)."""


class WeightsImportError(MaskspineError, ValueError):
    """A checkpoint of the originals that cannot be imported (`maskspine import-weights`):
    missing or damaged files, another format, variables and weights that do not fit."""


#: What the command line reports as `error: <message>`, exit code 2. `FileNotFoundError`
#: (a path given by the user that does not exist) is reported the same way.
USER_ERRORS: tuple[type[BaseException], ...] = (MaskspineError, FileNotFoundError)
