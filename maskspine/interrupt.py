"""Ctrl-C as "stop after what is in flight and keep the results", twice as "abort".

    with stop_on_interrupt(print) as stop:
        for item in work:
            if stop.is_set():
                break          # the first Ctrl-C: finish cleanly, write what was done
            ...
    # a second Ctrl-C raises KeyboardInterrupt at once: outputs written through
    # `maskspine.files.StagedOutputs` are then left as they were before the run

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

#: What the first Ctrl-C prints.
STOP_MESSAGE = "stopping after the images or frames in flight (Ctrl-C again to abort)"


@contextlib.contextmanager
def stop_on_interrupt(message: Callable[[str], None] | None = None) -> Iterator[threading.Event]:
    """An event set by the first Ctrl-C (SIGINT) inside the block, so that a run can stop
    after the work in flight and write everything so far; a second Ctrl-C interrupts at
    once (KeyboardInterrupt). Outside the main thread (where Python cannot take signals)
    the event is only set by hand. The previous SIGINT handler is restored at the end."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handle(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        if message is not None:
            message(STOP_MESSAGE)

    previous = signal.signal(signal.SIGINT, handle)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def until_stopped(items: Iterable[T], stop: threading.Event | None) -> Iterator[T]:
    """`items` until `stop` is set (checked after each item is handed out)."""
    for item in items:
        yield item
        if stop is not None and stop.is_set():
            return
