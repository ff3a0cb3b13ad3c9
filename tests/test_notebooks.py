"""The notebooks run top to bottom (nbclient) and draw their figures.

Each runs with a tiny fresh model at 128 px on a few shapes images (the parameters are
replaced after the notebook's `parameters` cell, as papermill does), so that the three take
about a minute together. The notebooks in git carry no outputs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from model_fixtures import REPO, TINY_OVERRIDES

from maskspine.data.shapes import ShapesSpec, write_shapes_split

nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(REPO) / "notebooks"
NAMES = ("visualize_dataset", "draw_predictions", "evaluate")
SMALL_SHAPES = ShapesSpec(min_image_size=64, max_image_size=96, min_shape_size=16, max_shapes=3)
#: The tiny model's overrides (the notebooks set the classes from the data themselves), and
#: at most 10 detections per image, so that drawing and evaluating them are quick.
OVERRIDES = [
    *(o for o in TINY_OVERRIDES if not o.startswith(("coco_classes", "num_classes"))),
    "test_cfg.rcnn.max_per_img=10",
]


@pytest.fixture(scope="module")
def shapes_folders(tmp_path_factory):
    """A few shapes images in two COCO-format folders (train, validation), and a data cache."""
    root = tmp_path_factory.mktemp("notebook_data")
    write_shapes_split(root / "train", 6, seed=2, split_index=0, spec=SMALL_SHAPES)
    write_shapes_split(root / "validation", 4, seed=2, split_index=1, spec=SMALL_SHAPES)
    return root


def _parameters(name: str, root: Path) -> dict:
    common = {"DATA_DIR": str(root / "cache"), "CONFIG_OVERRIDES": OVERRIDES}
    if name == "visualize_dataset":
        return {**common, "DATA": str(root / "train"), "NUM_IMAGES": 3}
    if name == "draw_predictions":
        return {
            **common,
            "IMAGES": str(root / "validation" / "data"),
            "NUM_IMAGES": 3,
            "SCORE_THRESHOLD": 0.0,  # an untrained model's scores are low: draw them all
        }
    return {
        **common,
        "VAL_DATA": str(root / "validation"),
        "ANALYSIS_DIR": str(root / "analysis"),
        "BATCH_SIZE": 4,
    }


def _with_parameters(notebook, parameters: dict):
    """A copy of the notebook with a cell setting `parameters` after its parameters cell."""
    (index,) = [
        i
        for i, cell in enumerate(notebook.cells)
        if "parameters" in cell.get("metadata", {}).get("tags", [])
    ]
    source = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = ["injected-parameters"]
    notebook.cells.insert(index + 1, cell)
    return notebook


def _figures(notebook) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_stored_without_outputs(name):
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, name


@pytest.mark.parametrize(
    ("name", "min_figures"),
    [("visualize_dataset", 3), ("draw_predictions", 2), ("evaluate", 6)],
)
def test_notebook_runs_and_draws_its_figures(name, min_figures, shapes_folders):
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    notebook = _with_parameters(notebook, _parameters(name, shapes_folders))
    environment = {
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }
    previous = {key: os.environ.get(key) for key in environment}
    os.environ.update(environment)
    try:
        client = nbclient.NotebookClient(
            notebook,
            timeout=300,
            kernel_name="python3",
            resources={"metadata": {"path": str(NOTEBOOKS)}},
        )
        client.execute()
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.get("output_type") == "error"
    ]
    assert not errors, json.dumps(errors)[:2000]
    assert _figures(notebook) >= min_figures
    if name == "evaluate":
        text = "".join(
            output.get("text", "")
            for cell in notebook.cells
            if cell.cell_type == "code"
            for output in cell.outputs
        )
        assert "Bbox eval result:" in text and "Segmentation eval result:" in text
        assert (shapes_folders / "analysis" / "segm" / "error_breakdown.csv").is_file()
