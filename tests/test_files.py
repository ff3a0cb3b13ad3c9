"""Atomic writes: whole files only, with the mode the umask gives."""

from __future__ import annotations

import os
import stat

import pytest

from maskspine.files import write_text_atomic


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_mode_of_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        path = write_text_atomic(tmp_path / "sub" / "config.yaml", "a: 1\n")
        replaced = write_text_atomic(path, "a: 2\n")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(replaced.stat().st_mode) == mode
    assert replaced.read_text() == "a: 2\n"
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # no temporary left
