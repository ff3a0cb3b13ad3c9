"""Fixtures of the data tests: small COCO-format folders written into tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest
from coco_fixtures import make_colour_folder, make_messy_folder


@pytest.fixture
def messy_folder(tmp_path) -> Path:
    """A split folder (`data/` + `labels.json`) full of awkward cases; see make_messy_folder."""
    folder = tmp_path / "messy"
    make_messy_folder(folder)
    return folder


@pytest.fixture
def colour_folder(tmp_path) -> Path:
    """Four images of a red, a green and a blue shape; see make_colour_folder."""
    folder = tmp_path / "colours"
    make_colour_folder(folder)
    return folder
