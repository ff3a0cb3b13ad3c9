"""A small shapes data set and a tiny training config shared by the training tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def small_shapes(tmp_path_factory):
    """(train folder, validation folder) of a 16 + 6 image shapes set at ~100 px."""
    from maskspine.data.shapes import TRAIN_SPLIT, VALIDATION_SPLIT, ShapesSpec, ensure_shapes

    spec = ShapesSpec(
        num_train=16,
        num_validation=6,
        min_image_size=96,
        max_image_size=128,
        min_shapes=1,
        max_shapes=3,
        min_shape_size=20,
    )
    root = ensure_shapes(0, spec, data_dir=tmp_path_factory.mktemp("shapes"))
    return str(root / TRAIN_SPLIT), str(root / VALIDATION_SPLIT)


@pytest.fixture(autouse=True)
def _private_data_dir(tmp_path_factory, monkeypatch):
    """Prepared data of the tests stays out of ~/.cache."""
    monkeypatch.setenv("MASKSPINE_DATA_DIR", str(tmp_path_factory.getbasetemp() / "data"))
