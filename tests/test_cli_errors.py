"""Every error the README promises as one line is one line (`error: ...`, exit code 2), naming
the file, key or option and the fix, and comes before any model is built: usage errors (a bad
choice, a value out of range, a missing option), broken YAML, unknown `--set` keys, a
damaged archive, unwritable or unsafe outputs, a missing run directory."""

from __future__ import annotations

import os

import pytest
from model_fixtures import REPO
from typer.testing import CliRunner

from maskspine.cli.main import app
from maskspine.data.shapes import ShapesSpec, write_shapes_split

CONFIG = os.path.join(REPO, "configs", "shapes_demo.yaml")


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def one_error_line(code, out, err) -> str:
    assert code == 2, (out, err)
    (line,) = err.strip().splitlines()
    assert line.startswith("error: ") and "Traceback" not in out + err
    return line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["import-weights", "x.tar.gz", "--format", "tpuu", "--model", "49", "--output", "o"],
            "'tpuu' is not one of 'tpu', 'modelgarden'",
        ),
        (
            ["infer", "--checkpoint", "r", "--input", "x", "--precision", "float64"],
            "'float64' is not one of 'float32', 'bfloat16', 'float16', 'auto'",
        ),
        (["benchmark", CONFIG, "--what", "inferr"], "'inferr' is not one of 'infer', 'train'"),
        (["infer", "--checkpoint", "r", "--input", "x", "--batch-size", "0"], "--batch-size"),
        (["infer", "--checkpoint", "r"], "Missing option '--input'"),
        (["nosuchcommand"], "No such command 'nosuchcommand'"),
    ],
)
def test_usage_errors_are_one_line_with_the_choices(args, expected):
    # Before: a six-line usage box.
    line = one_error_line(*invoke(*args))
    assert expected in line and "--help" in line


def test_broken_yaml_is_one_line_with_where(tmp_path):
    # Before: eight lines about "<unicode string>".
    broken = tmp_path / "broken.yaml"
    broken.write_text("lr: 0.02\nlr_steps: [8, 11\nbatch_size: 2\n")
    line = one_error_line(*invoke("train", broken))
    assert f"{broken}: not valid YAML at line 3" in line and "unicode string" not in line


def test_an_unknown_or_mistyped_set_names_the_override_not_the_file():
    # Before: "--set nosuchkey=1" was reported as an error in the run's config.yaml.
    line = one_error_line(*invoke("train", CONFIG, "--set", "nosuchkey=1"))
    assert line == "error: --set nosuchkey=1: unknown key 'nosuchkey'"
    line = one_error_line(*invoke("train", CONFIG, "--set", "lr_step=[1, 2]"))
    assert "--set lr_step=[1, 2]: unknown key 'lr_step'; did you mean 'lr_steps'?" in line
    line = one_error_line(*invoke("train", CONFIG, "--set", "lr=fast"))
    assert "--set lr=fast: lr = 'fast' has the wrong type: expected float" in line


def test_a_garbage_archive_is_one_line(tmp_path):
    # Before: tarfile's internals, one line per compression method tried.
    archive = tmp_path / "spinenet-49.tar.gz"
    archive.write_bytes(os.urandom(3000))
    line = one_error_line(
        *invoke(
            "import-weights",
            archive,
            "--format",
            "tpu",
            "--model",
            "49",
            "--output",
            tmp_path / "o",
        )
    )
    assert f"{archive}: not a .tar, .tar.gz or .tgz archive" in line


def test_export_to_an_unwritable_place_fails_before_loading(tmp_path):
    # Before: the model was loaded first, then a raw errno line.
    line = one_error_line(
        *invoke("export", "--checkpoint", tmp_path / "none", "--output", "/proc/x")
    )
    assert line.startswith("error: /proc/x: cannot write the --output here")
    weights = tmp_path / "model.weights.h5"
    weights.write_bytes(b"weights")
    line = one_error_line(*invoke("export", "--checkpoint", weights, "--output", weights))
    assert "must be a folder" in line and weights.read_bytes() == b"weights"


def test_resume_of_a_missing_or_foreign_folder_names_it(tmp_path):
    # Before: "config file not found: runs/nosuch/config.yaml".
    line = one_error_line(*invoke("train", "--resume", tmp_path / "nosuch"))
    assert f"run directory not found: {tmp_path / 'nosuch'}" in line
    line = one_error_line(*invoke("train", "--resume", tmp_path))
    assert "is not a run directory" in line


def test_data_show_never_draws_into_the_images_folder(tmp_path):
    root = tmp_path / "set"
    spec = ShapesSpec(min_image_size=64, max_image_size=96, min_shape_size=16, max_shapes=3)
    write_shapes_split(root, 3, seed=0, split_index=0, spec=spec)
    before = {path.name: path.read_bytes() for path in (root / "data").iterdir()}
    for output in (root / "data", root):
        line = one_error_line(*invoke("data", "show", root, "--output", output, "--count", "2"))
        assert "--output" in line and "another folder" in line
    assert {path.name: path.read_bytes() for path in (root / "data").iterdir()} == before
    code, out, err = invoke("data", "show", root, "--output", tmp_path / "samples", "--count", "2")
    assert code == 0, out + err
    assert len(list((tmp_path / "samples").glob("*.png"))) == 2
    assert not [p for p in (tmp_path / "samples").iterdir() if p.name.startswith(".")]
