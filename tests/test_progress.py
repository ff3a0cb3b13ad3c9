"""The progress line: plain whole lines when nobody watches (a file, a pipe, CI), redrawn in
place on a terminal; the rate leaves out the first update (the trace)."""

from __future__ import annotations

import io

import pytest

import maskspine.progress as progress
from maskspine.progress import ProgressBar


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    return clock


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_without_a_terminal_lines_are_plain_and_few(clock):
    # Before: Keras' bar wrote ANSI codes and backspaces into a redirected stdout.
    stream = io.StringIO()
    bar = ProgressBar(total=10, unit="image", stream=stream, interval=30)
    clock.now += 20.0  # the first batch: the trace
    bar.update(2)
    for done in range(3, 11):
        clock.now += 1.0
        bar.update(done)
    bar.finish(10)
    text = stream.getvalue()
    assert not {"\r", "\b", "\x1b"} & set(text)
    lines = text.splitlines()
    assert len(lines) == 2  # the first update, then at most one per 30 s, then the end
    assert lines[0].startswith("2/10 images")
    # 8 images in the 8 s after the first update: 1 image/s, the trace left out.
    assert lines[-1].startswith("10/10 images  1 images/s") and "0:28 elapsed" in lines[-1]


def test_on_a_terminal_the_line_is_redrawn_in_place(clock):
    stream = Terminal()
    bar = ProgressBar(total=4, unit="frame", stream=stream)
    for done in range(1, 5):
        clock.now += 1.0
        bar.update(done)
    bar.finish()
    text = stream.getvalue()
    assert text.count("\r") == 5 and text.endswith("\n") and "\x1b" not in text
    assert "2/4 frames  1 frames/s  0:02 left" in text
