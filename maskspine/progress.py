"""A progress line for long runs over images or frames, plain when nobody watches it.

    bar = ProgressBar(total=120, unit="image")
    for ...:
        bar.update(done)          # count so far
    bar.finish(done)

On a terminal the line is redrawn in place (a carriage return, no other control codes):
`37/120 images  4.2 images/s  0:20 left`. When the stream is not a terminal (a file, a
pipe, a CI log) it writes a whole line at most every `interval` seconds and one at the end,
with no carriage returns, backspaces or ANSI codes. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class ProgressBar:
    """Counts `unit`s done, their rate and, with a `total`, the time left.

    The rate leaves out the first update (the model's trace and the pipeline's start are in
    it): it is the units done after the first update over the time since.

    Args:
        total: the count expected, when known.
        unit: what is counted ("image", "frame").
        stream: where the line goes (default standard output).
        interval: seconds between lines when `stream` is not a terminal.
    """

    def __init__(
        self,
        total: int | None = None,
        unit: str = "image",
        *,
        stream: TextIO | None = None,
        interval: float = 30.0,
    ) -> None:
        self.total = total
        self.unit = unit
        self.stream = stream if stream is not None else sys.stdout
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = 0.1 if self.live else interval
        self._start = time.monotonic()
        self._first: tuple[int, float] | None = None
        self._last_written = -float("inf")
        self._width = 0
        self.done = 0

    def rate(self, now: float | None = None) -> float | None:
        """Units per second after the first update (the first update's own rate until there
        is more); None before any update."""
        now = time.monotonic() if now is None else now
        if self._first is None:
            return None
        counted, since = self._first
        if self.done > counted:
            return (self.done - counted) / max(now - since, 1e-9)
        return self.done / max(now - self._start, 1e-9)

    def text(self, now: float | None = None) -> str:
        """The line as it would be written now."""
        now = time.monotonic() if now is None else now
        plural = "" if (self.total or self.done) == 1 else "s"
        count = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
        parts = [f"{count} {self.unit}{plural}"]
        rate = self.rate(now)
        if rate is not None:
            parts.append(f"{rate:.3g} {self.unit}s/s")
            if self.total is not None and rate > 0 and self.done < self.total:
                parts.append(f"{_duration((self.total - self.done) / rate)} left")
        parts.append(f"{_duration(now - self._start)} elapsed")
        return "  ".join(parts)

    def update(self, done: int) -> None:
        """Records `done` units so far; writes the line when it is time to."""
        now = time.monotonic()
        self.done = int(done)
        if self._first is None:
            self._first = (self.done, now)
        if now - self._last_written >= self.interval:
            self._write(now, final=False)

    def finish(self, done: int | None = None) -> None:
        """Writes the last line (with a newline)."""
        if done is not None:
            self.done = int(done)
        self._write(time.monotonic(), final=True)

    def _write(self, now: float, *, final: bool) -> None:
        line = self.text(now)
        if self.live:
            padding = " " * max(0, self._width - len(line))
            self.stream.write(f"\r{line}{padding}" + ("\n" if final else ""))
            self._width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._last_written = now
