"""Keeping TensorFlow's C++ log lines off the console of the `maskspine` commands.

TensorFlow's native code writes to file descriptor 2 directly: the absl notice before its
log is initialised, CUDA stub lines on machines without a GPU, the CPU feature and oneDNN
notices, and `PredictCost()` errors for ops without a cost model (CropAndResize). No
environment variable silences all of them (`TF_CPP_MIN_LOG_LEVEL` misses the lines
written before absl's log starts), so the console script sends descriptor 2 through a
filter that drops these lines and passes everything else on: warnings and errors of
TensorFlow's own (`W...`, `E...` other than the known noise, `F...`), tracebacks, and
anything else a library prints. Python's `sys.stderr` (our `error:` lines, logging,
progress bars) goes to the terminal directly, not through the filter.

`maskspine --verbose ...` or `MASKSPINE_TF_LOGS=1` leaves descriptor 2 alone.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading

#: Set to 1 to see TensorFlow's native log lines.
ENV_VARIABLE = "MASKSPINE_TF_LOGS"

# A native log line: severity, date or zeros, time, thread id, file:line] message.
_NATIVE_LINE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d\d[.\d]*\s+\d+ [\w./-]+:\d+\] (.*)$")
#: Messages of warning or error lines that are noise on every machine.
_NOISE_MESSAGES = re.compile(
    r"PredictCost\(\)|"
    r"Unable to register cu(DNN|FFT|BLAS) factory|"
    r"failed call to cuInit|"
    r"computation placer already registered|"
    r"TF-TRT Warning|"
    r"Could not find cuda drivers|"
    r"oneDNN custom operations are on"
)
_NOISE_LINES = re.compile(
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to "
    r"STDERR$|"
    r"^To enable the following instructions: .* in other operations, rebuild TensorFlow "
    r"with the appropriate compiler flags\.$"
)


def is_noise(line: str) -> bool:
    """True for a native log line the commands do not show (info lines, known noise)."""
    line = line.rstrip("\r\n")
    if _NOISE_LINES.match(line):
        return True
    match = _NATIVE_LINE.match(line)
    if match is None:
        return False
    severity, message = match.groups()
    return severity == "I" or bool(_NOISE_MESSAGES.search(message))


def wanted(argv: list[str]) -> bool:
    """Whether to filter: not with --verbose or MASKSPINE_TF_LOGS=1, nor without a real
    descriptor 2."""
    if "--verbose" in argv or os.environ.get(ENV_VARIABLE, "") not in ("", "0"):
        return False
    try:
        os.fstat(2)
    except OSError:
        return False
    return True


def install() -> None:
    """Routes descriptor 2 through the noise filter for the rest of the process."""
    terminal = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    sys.stderr.flush()
    sys.stderr = open(  # noqa: SIM115 - lives as long as the process
        terminal,
        "w",
        buffering=1,
        encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
        errors="backslashreplace",
        closefd=False,
    )

    def forward() -> None:
        with open(read_end, "rb", buffering=0) as pipe:
            pending = b""
            while chunk := pipe.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                kept = [line for line in lines if not is_noise(line.decode("utf-8", "replace"))]
                if kept:
                    os.write(terminal, b"\n".join(kept) + b"\n")
            if pending and not is_noise(pending.decode("utf-8", "replace")):
                os.write(terminal, pending)

    thread = threading.Thread(target=forward, name="native-log-filter", daemon=True)
    thread.start()

    def finish() -> None:
        # Put the terminal back on descriptor 2: the pipe's last writer closes, the
        # thread reads to the end and passes on what is left.
        sys.stderr.flush()
        os.dup2(terminal, 2)
        thread.join(timeout=2.0)

    atexit.register(finish)
