"""`import_weights`: a tensorflow/tpu or Model Garden checkpoint -> a maskspine run directory.

    report = import_weights("spinenet-49.tar.gz", format="tpu", model="49", output="runs/coco49")
    print(report.summary())

The run directory gets `config.yaml` (the model's config from `configs/pretrained/`, with
the 91 COCO ids) and `model.weights.h5`, which `maskspine.checkpoints.resolve_checkpoint`
finds, so `eval`, `infer`, `draw`, `export`, `train --pretrained` and `load_model` take the
directory as they take one of `maskspine train`; `import.json` records where the weights
came from. Every weight of the model gets exactly one checkpoint variable and every
variable of the checkpoint is placed or ignored on purpose (optimizer slots, step
counters, moving-average copies); otherwise nothing is written and the error lists what
did not fit. The directory is written beside its destination and renamed into place, so
an existing one is never left half-overwritten.

Weights, not moving averages: the tensorflow/tpu detection code keeps no moving averages
of the weights and Model Garden's `maskrcnn_spinenet_coco` does not configure any, so
the raw variables are what their evaluation measured; `ExponentialMovingAverage` copies or
`average` optimizer slots, if a checkpoint holds them, are listed as ignored.
"""

from __future__ import annotations

import datetime
import importlib.resources
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from maskspine.checkpoints import CONFIG_FILE, IMPORTED_WEIGHTS
from maskspine.config import SPINENET_ARCHS, Config, ConfigError, load_config, save_config
from maskspine.files import write_text_atomic
from maskspine.pretrained import names
from maskspine.pretrained.sources import OpenCheckpoint, WeightsImportError, open_checkpoint

#: The formats and, per format, the SpineNet model ids with a config in configs/pretrained.
FORMATS = {
    "tpu": ("49S", "49", "96", "143", "190"),
    "modelgarden": ("49S", "49", "96", "143"),
}
FORMAT_NAMES = {
    "tpu": "tensorflow/tpu (TF1 Saver)",
    "modelgarden": "Model Garden (tf.train.Checkpoint)",
}
PROVENANCE_FILE = "import.json"
_LISTED = 12  # names shown per kind of problem


@dataclass
class ImportReport:
    """What `import_weights` did: per module the source variables used and target weights
    filled, what it ignored on purpose, and where it wrote."""

    format: str
    model: str
    prefix: str
    config_path: Path
    output: Path
    modules: list[tuple[str, int, int, int]] = field(
        default_factory=list
    )  # name, vars, weights, values
    ignored: dict[str, list[str]] = field(default_factory=dict)  # why -> checkpoint keys

    def summary(self) -> str:
        lines = [
            f"{FORMAT_NAMES[self.format]} checkpoint {self.prefix}",
            f"  -> SpineNet-{self.model} Mask R-CNN ({self.config_path.name})",
            f"  {'module':<10} {'variables':>10} {'weights':>8} {'values':>12}",
        ]
        totals = [0, 0, 0]
        for module, variables, weights, values in self.modules:
            lines.append(f"  {module:<10} {variables:>10} {weights:>8} {values:>12,}")
            totals = [totals[0] + variables, totals[1] + weights, totals[2] + values]
        lines.append(f"  {'total':<10} {totals[0]:>10} {totals[1]:>8} {totals[2]:>12,}")
        if self.ignored:
            parts = [f"{len(keys)} {why}" for why, keys in self.ignored.items()]
            lines.append("ignored on purpose: " + ", ".join(parts))
        else:
            lines.append("ignored on purpose: nothing (the checkpoint holds the model alone)")
        lines.append(f"wrote {self.output / CONFIG_FILE} and {self.output / IMPORTED_WEIGHTS}")
        return "\n".join(lines)


def pretrained_config_path(format: str, model: str) -> Path:
    """configs/pretrained/spinenet{model}_mrcnn_{format}.yaml of a published model."""
    _check_choice(format, model)
    name = f"spinenet{model.lower()}_mrcnn_{format}.yaml"
    source_tree = Path(__file__).resolve().parents[2] / "configs" / "pretrained" / name
    if source_tree.is_file():
        return source_tree
    try:  # an installed package: configs/ ships as maskspine.configs
        installed = importlib.resources.files("maskspine.configs") / "pretrained" / name
        if installed.is_file():
            return Path(str(installed))
    except ModuleNotFoundError:
        pass
    raise ConfigError(f"the config of {format} SpineNet-{model} ({name}) is not installed")


def import_weights(
    source: str | os.PathLike,
    *,
    format: str,
    model: str,
    output: str | os.PathLike,
    overrides: Sequence[str] = (),
    force: bool = False,
    echo: Callable[[str], None] | None = None,
) -> ImportReport:
    """Imports a published (or self-trained) SpineNet Mask R-CNN checkpoint.

    Args:
        source: a checkpoint prefix (`model.ckpt-162050`, `ckpt-1`), a directory holding one
            (the latest is taken), or the downloaded .tar.gz as it is.
        format: "tpu" (tensorflow/tpu model zoo, TF1) or "modelgarden" (TF2 Model Garden).
        model: SpineNet model id: 49S, 49, 96, 143, 190 (tpu) / 49S, 49, 96, 143 (modelgarden).
        output: the run directory to write.
        overrides: `key=value` config overrides (`--set`), e.g. `img_height=1024`; the
            model's structure options must stay those of the checkpoint.
        force: replace a non-empty existing `output` (renamed into place at the end).
        echo: called with progress lines (e.g. `print`).

    Returns:
        The `ImportReport`.

    Raises:
        WeightsImportError: the checkpoint or the destination cannot be used; nothing is
            written.
        ConfigError: a bad override.
    """
    say = echo or (lambda line: None)
    _check_choice(format, model)
    output = Path(output).expanduser()
    if output.exists() and not output.is_dir():
        raise WeightsImportError(f"{output} exists and is not a directory")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise WeightsImportError(
            f"{output} exists and is not empty; choose another --output or pass --force to "
            "replace it"
        )
    config_path = pretrained_config_path(format, model)
    config = load_config(config_path, overrides)
    if config.backbone.arch != model:
        raise WeightsImportError(
            f"--set changed backbone.arch to {config.backbone.arch!r} but --model is {model}; "
            "choose the model with --model"
        )
    with open_checkpoint(source) as checkpoint:
        if checkpoint.format != format:
            raise WeightsImportError(
                f"{source} is a {FORMAT_NAMES[checkpoint.format]} checkpoint, not a "
                f"{FORMAT_NAMES[format]} one; use --format {checkpoint.format}"
            )
        say(f"reading {checkpoint.prefix}")
        mapping = _variable_map(config, checkpoint)
        _check(mapping, checkpoint, format, model, expected=None)
        from maskspine.modeling.factory import build_mask_rcnn

        say(f"building SpineNet-{model} Mask R-CNN ({config.img_height}x{config.img_width})")
        network = build_mask_rcnn(config)
        expected = {w.path: tuple(int(d) for d in w.shape) for w in network.weights}
        _check(mapping, checkpoint, format, model, expected=expected)
        report = ImportReport(format, model, checkpoint.prefix, config_path, output)
        _fill(network, mapping, checkpoint, report)
        report.ignored = _ignored(set(checkpoint.shapes()) - set(mapping), format)
        _write_run_directory(network, config, report, force=force)
    return report


# --------------------------------------------------------------------------- internals


def _check_choice(format: str, model: str) -> None:
    if format not in FORMATS:
        raise WeightsImportError(
            f"unknown format {format!r}: use tpu (tensorflow/tpu model zoo) or modelgarden"
        )
    if model not in FORMATS[format]:
        close = [m for m in SPINENET_ARCHS if m.lower() == str(model).lower()]
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise WeightsImportError(
            f"no {format} config for SpineNet model {model!r}{hint}; use one of "
            f"{', '.join(FORMATS[format])}"
        )


def _variable_map(config: Config, checkpoint: OpenCheckpoint) -> dict[str, str]:
    if checkpoint.format == "tpu":
        return names.tpu_variable_map(config)
    keys = list(checkpoint.shapes())
    prefixes = {}
    for part, candidates in names.MODELGARDEN_PREFIXES.items():
        found = [p for p in candidates if any(key.startswith(p) for key in keys)]
        prefixes[part] = found[0] if found else candidates[0]
    try:
        return names.modelgarden_variable_map(config, prefixes)
    except KeyError as error:
        raise WeightsImportError(
            f"no recorded Model Garden layer order for this SpineNet ({error}); see "
            "tools/pretrained/make_modelgarden_tables.py"
        ) from None


def _check(
    mapping: dict[str, str],
    checkpoint: OpenCheckpoint,
    format: str,
    model: str,
    expected: dict[str, tuple[int, ...]] | None,
) -> None:
    """Every mapped variable present (and, given the model's weight shapes `expected`, of
    the right shape), every other variable ignorable; else one error listing all."""
    shapes = checkpoint.shapes()
    missing = [key for key in mapping if key not in shapes]
    unplaced = [key for key in shapes if key not in mapping and _why_ignored(key, format) is None]
    wrong = [
        f"{key}: {shapes[key]} in the checkpoint, {expected[target]} in SpineNet-{model}"
        for key, target in mapping.items()
        if expected is not None
        and key in shapes
        and target in expected
        and tuple(shapes[key]) != expected[target]
    ]
    if not (missing or unplaced or wrong):
        return
    problems = []
    for title, items in (
        ("model weights without a checkpoint variable", missing),
        ("checkpoint variables with no place in the model", unplaced),
        ("shape mismatches", wrong),
    ):
        if items:
            shown = "\n    ".join(items[:_LISTED])
            more = f"\n    ... and {len(items) - _LISTED} more" if len(items) > _LISTED else ""
            problems.append(f"  {len(items)} {title}:\n    {shown}{more}")
    guess = _guess_model(shapes, format, exclude=model)
    hint = (
        f"its variables are those of --model {guess}"
        if guess
        else f"is it a {format} SpineNet Mask R-CNN checkpoint with the published settings?"
    )
    raise WeightsImportError(
        f"{checkpoint.prefix} does not fit {format} SpineNet-{model}; {hint}\n"
        + "\n".join(problems)
    )


def _guess_model(shapes: dict[str, tuple[int, ...]], format: str, *, exclude: str) -> str | None:
    """The model id(s) whose variable names the checkpoint has (narrowed by the width of the
    endpoints when names alone do not decide, e.g. 49 and 49S), as "49" or "49 or 49S"."""
    from maskspine.config.schema import endpoint_channels

    keys = {key for key in shapes if _why_ignored(key, format) is None}
    fits, widths = [], []
    for candidate in FORMATS[format]:
        if candidate == exclude:
            continue
        config = load_config(pretrained_config_path(format, candidate))
        try:
            mapping = _variable_map(config, _Keys(format, shapes))
        except WeightsImportError:
            continue
        if set(mapping) != keys:
            continue
        fits.append(candidate)
        endpoint = [k for k, t in mapping.items() if t == "endpoint_P3_conv/kernel"]
        if endpoint and shapes[endpoint[0]][-1] == endpoint_channels(config):
            widths.append(candidate)
    found = widths or fits
    return " or ".join(found) if found else None


class _Keys:
    """Enough of an `OpenCheckpoint` for `_variable_map`: the format and the keys."""

    def __init__(self, format: str, shapes: dict[str, tuple[int, ...]]):
        self.format, self._shapes = format, shapes

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return self._shapes


def _fill(
    network, mapping: dict[str, str], checkpoint: OpenCheckpoint, report: ImportReport
) -> None:
    """Assigns every mapped variable to its weight; records the per-module counts."""
    import numpy as np

    weights = {w.path: w for w in network.weights}
    unfilled = sorted(set(weights) - set(mapping.values()))
    if unfilled:  # the config and the mapping disagree: a bug or an override of the structure
        shown = ", ".join(unfilled[:_LISTED])
        raise WeightsImportError(
            f"{len(unfilled)} model weights have no checkpoint variable ({shown}); did --set "
            "change the model's structure?"
        )
    by_target = {target: key for key, target in mapping.items()}
    for module, targets in names.iter_parts(mapping):
        values = 0
        for target in targets:
            key = by_target[target]
            try:
                value = checkpoint.reader.get_tensor(key)
            except Exception as error:  # noqa: BLE001 - TF raises several types for bad data
                raise WeightsImportError(
                    f"{checkpoint.prefix}: cannot read {key} ({str(error).splitlines()[0][:200]}); "
                    "is the download complete?"
                ) from None
            weight = weights[target]
            weight.assign(np.asarray(value, dtype=weight.dtype))
            values += int(np.prod(value.shape))
        report.modules.append((module, len(targets), len(targets), values))


def _why_ignored(key: str, format: str) -> str | None:
    """Why a checkpoint key that is not a model weight is left out on purpose, or None."""
    if format == "tpu":
        leaf = key.rsplit("/", 1)[-1]
        if key in ("global_step",) or key.endswith("/global_step"):
            return "step counter"
        if "ExponentialMovingAverage" in key:
            return "moving-average (EMA) copies"
        if leaf in ("Momentum", "Adam", "Adam_1", "RMSProp", "RMSProp_1", "Adagrad") or key in (
            "beta1_power",
            "beta2_power",
        ):
            return "optimizer slots"
        return None
    if "/.OPTIMIZER_SLOT/" in key:
        return "moving-average (EMA) copies" if "/average/" in key else "optimizer slots"
    if key.startswith("optimizer/"):
        return "optimizer state"
    if key.split("/", 1)[0] in ("global_step", "save_counter", "step"):
        return "step counter"
    return None


def _ignored(keys: set[str], format: str) -> dict[str, list[str]]:
    ignored: dict[str, list[str]] = {}
    for key in sorted(keys):
        why = _why_ignored(key, format)
        if why is not None:
            ignored.setdefault(why, []).append(key)
    return ignored


def _write_run_directory(network, config: Config, report: ImportReport, *, force: bool) -> None:
    """config.yaml + model.weights.h5 + import.json into a fresh directory beside the
    destination, then renamed into place (an existing destination only with `force`)."""
    from maskspine.checkpoints import save_weights_atomic

    output = report.output
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.importing-", dir=output.parent))
    backup = None
    try:
        save_config(config, staging / CONFIG_FILE)
        save_weights_atomic(network, staging / IMPORTED_WEIGHTS)
        provenance = {
            "format": report.format,
            "model": report.model,
            "checkpoint": os.path.abspath(report.prefix),
            "config": str(report.config_path),
            "imported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "modules": {m: {"variables": v, "values": n} for m, v, _, n in report.modules},
            "ignored": {why: len(keys) for why, keys in report.ignored.items()},
        }
        write_text_atomic(staging / PROVENANCE_FILE, json.dumps(provenance, indent=1))
        if output.exists():
            if any(output.iterdir()) and not force:  # appeared while importing
                raise WeightsImportError(f"{output} exists and is not empty; pass --force")
            backup = output.with_name(f".{output.name}.replaced-{os.getpid()}")
            os.replace(output, backup)
        os.replace(staging, output)
    except BaseException:
        _remove_tree(staging)
        if backup is not None and not output.exists():
            os.replace(backup, output)
            backup = None
        raise
    finally:
        if backup is not None:
            _remove_tree(backup)


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
