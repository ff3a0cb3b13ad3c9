"""Checkpoints: where they live in a run directory, finding the right one, loading them.

A run directory (`maskspine train`) holds:

    config.yaml                       the resolved config (classes, category ids)
    checkpoints/ckpt-00000100.weights.h5   periodic: model + optimizer state
    checkpoints/state.json            epoch / step bookkeeping of the latest one
    best_ckpt/best-epoch0003.weights.h5    the best by segm mAP
    best_ckpt/best.json               their scores

A run directory written by `maskspine import-weights` (published weights) holds
`config.yaml` and `model.weights.h5` (the model's weights alone) instead.

`.weights.h5` files are Keras' own format; a file written by a compiled model holds
the optimizer's variables too, so one file resumes training exactly.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from maskspine.config import Config, ConfigError, load_config, read_yaml_mapping
from maskspine.errors import CheckpointError, DamagedCheckpointError
from maskspine.files import read_json

if TYPE_CHECKING:
    import keras

    from maskspine.modeling.mask_rcnn import MaskRCNN

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best_ckpt"
BEST_INDEX = "best.json"
STATE_FILE = "state.json"
WEIGHTS_SUFFIX = ".weights.h5"
#: The weights of a run directory written by `maskspine import-weights`.
IMPORTED_WEIGHTS = "model.weights.h5"
_STEP_PATTERN = re.compile(r"ckpt-(\d+)\.weights\.h5$")


def periodic_checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"ckpt-{step:08d}{WEIGHTS_SUFFIX}"


def checkpoint_step(path: str | Path) -> int:
    """The global step in a periodic checkpoint's name (`ckpt-00000100.weights.h5` -> 100)."""
    match = _STEP_PATTERN.search(Path(path).name)
    if match is None:
        raise ValueError(f"{path} is not a periodic checkpoint (ckpt-<step>{WEIGHTS_SUFFIX})")
    return int(match.group(1))


def periodic_checkpoints(run_dir: str | Path) -> list[Path]:
    """The periodic checkpoints of `run_dir`, by increasing step."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    return sorted(
        (path for path in folder.iterdir() if _STEP_PATTERN.fullmatch(path.name)),
        key=checkpoint_step,
    )


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The periodic checkpoint with the highest step in `run_dir`, or None."""
    found = periodic_checkpoints(run_dir)
    return found[-1] if found else None


def save_weights_atomic(model: keras.Model, path: Path) -> None:
    """`model.save_weights` to a temporary name, then an atomic rename: a run killed while
    writing leaves the previous checkpoint intact and no partial file under `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    model.save_weights(tmp, overwrite=True)
    os.replace(tmp, path)


def best_checkpoint(run_dir: str | Path) -> Path | None:
    """The best checkpoint recorded in `run_dir/best_ckpt/best.json`, or None."""
    folder = Path(run_dir) / BEST_DIR
    entries = [e for e in read_json(folder / BEST_INDEX, []) if (folder / e["file"]).is_file()]
    if not entries:
        return None
    return folder / max(entries, key=lambda e: e["score"])["file"]


def resolve_checkpoint(path: str | Path) -> Path:
    """A weights file as given, or for a run directory its best checkpoint, else its latest,
    else its imported weights (`model.weights.h5` of `maskspine import-weights`).

    Raises:
        CheckpointError: nothing usable at `path`.
    """
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        found = best_checkpoint(path) or latest_checkpoint(path)
        if found is None and path.name in (CHECKPOINT_DIR, BEST_DIR):
            found = best_checkpoint(path.parent) or latest_checkpoint(path.parent)
        if found is None and (path / IMPORTED_WEIGHTS).is_file():
            found = path / IMPORTED_WEIGHTS
        if found is None:
            raise CheckpointError(
                f"no checkpoint in {path}: expected {BEST_DIR}/{BEST_INDEX} or "
                f"{CHECKPOINT_DIR}/ckpt-*{WEIGHTS_SUFFIX} (a run directory of `maskspine train`), "
                f"{IMPORTED_WEIGHTS} (of `maskspine import-weights`) or a {WEIGHTS_SUFFIX} file"
            )
        return found
    raise CheckpointError(f"checkpoint not found: {path}")


def run_config_path(checkpoint: Path) -> Path | None:
    """The `config.yaml` saved by training beside a checkpoint (its folder or the run dir)."""
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        if (folder / CONFIG_FILE).is_file():
            return folder / CONFIG_FILE
    return None


def config_for_checkpoint(
    checkpoint: Path, config_path: str | Path | None = None, overrides: Sequence[str] = ()
) -> Config:
    """The config to rebuild the model of `checkpoint`.

    The config saved with the checkpoint (its run's `config.yaml`) is the base: a CONFIG file
    given by the user replaces only the keys it sets (a file that sets only `test_cfg`
    changes only that), and `overrides` come last. A CONFIG whose `coco_classes` is
    `from_data` keeps the trained classes and category ids. Without a saved config, CONFIG
    is the whole config.

    Raises:
        ConfigError: no config at all, or one that cannot be used (naming the file or key).
    """
    saved = run_config_path(checkpoint)
    if saved is None:
        if config_path is None:
            raise ConfigError(
                f"no {CONFIG_FILE} beside {checkpoint} or in its run directory: give the "
                "config the model was trained with"
            )
        config = load_config(config_path, overrides)
        if config.classes_from_data:
            raise ConfigError(
                f"{config_path}: coco_classes is 'from_data' and no trained config was found "
                f"beside {checkpoint}; list the classes the model was trained with"
            )
        return config
    if config_path is None:
        return load_config(saved, overrides)
    config = load_config(config_path, overrides, base=read_yaml_mapping(saved))
    if config.classes_from_data:
        trained = load_config(saved)
        config.coco_classes = list(trained.coco_classes)
        config.num_classes = trained.num_classes
        config.category_ids = list(trained.category_ids)
    return config


def load_model(
    checkpoint: str | Path,
    config_path: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> tuple[MaskRCNN, Config, Path]:
    """Builds the model of a checkpoint (a weights file or a run directory) and loads it.

    Returns:
        (model, config, the weights file used).

    Raises:
        CheckpointError: missing checkpoint, or one whose weights do not fit (names the
            layers that disagree, the config keys that set them, and the file).
    """
    from maskspine.modeling.factory import build_mask_rcnn

    path = resolve_checkpoint(checkpoint)
    config = config_for_checkpoint(path, config_path, overrides)
    model = build_mask_rcnn(config)
    load_weights_checked(model, path, source_config=_saved_config_or_none(path), config=config)
    return model, config, path


def _saved_config_or_none(checkpoint: Path) -> Config | None:
    saved = run_config_path(checkpoint)
    return load_config(saved) if saved is not None else None


#: The config keys that shape each part's weights (first component of a weight's path).
_PART_KEYS = {
    "rpn_head": "rpn.*",
    "box_head": "bbox_head.*, num_classes",
    "mask_head": "mask_head.*, num_classes",
}
_BACKBONE_KEYS = "backbone.* (arch, filter_size_scale, endpoints_num_filters, block_repeats)"


def _part_keys(weight_path: str) -> str:
    return _PART_KEYS.get(weight_path.split("/")[0], _BACKBONE_KEYS)


def _layer_of(weight_path: str) -> str:
    """The layer a weight belongs to (`box_head/box_head_fc1/kernel` -> `box_head_fc1`)."""
    parts = weight_path.split("/")
    return parts[-2] if len(parts) > 1 else parts[0]


def _model_differences(source: Config, config: Config) -> list[str]:
    """`key (checkpoint's run: A, now: B)` for every key of the model sections that differs."""
    from maskspine.config import config_differences, is_frozen_on_resume

    model_keys = ("backbone", "rpn", "bbox_head", "mask_head", "roi", "mask_roi", "num_classes")
    return [
        f"{key} (checkpoint's run: {old!r}, now: {new!r})"
        for key, old, new in config_differences(source, config)
        if key.split(".")[0] in model_keys and is_frozen_on_resume(key)
    ]


def _unloaded_layers(error: Exception, model: keras.Model) -> list[str]:
    """The layers Keras names in a load error, in the model's order."""
    named = set(re.findall(r"name=([^,>\s]+)", str(error)))
    named |= set(re.findall(r"Layer '([^']+)'", str(error)))
    ordered = []
    for weight in model.weights:
        layer = _layer_of(weight.path)
        if layer in named and layer not in ordered:
            ordered.append(layer)
    return ordered


def load_weights_checked(
    model: keras.Model,
    checkpoint: Path,
    *,
    source_config: Config | None = None,
    config: Config | None = None,
) -> None:
    """Loads `checkpoint` into `model`; on a mismatch, one line says what disagrees.

    Optimizer variables in the file are ignored unless the model has a built optimizer.
    Keras' own warnings about the layers it skips (hundreds for another architecture) are
    not shown: the error names the first layer whose shape differs, how many do, and the
    config keys that set them (the model keys in which `config` differs from
    `source_config`, the checkpoint's run's config, when both are known).

    Raises:
        DamagedCheckpointError: the file cannot be read (cut short, not a weights file).
        CheckpointError: the weights do not fit the model.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.load_weights(checkpoint)
        return
    except OSError as error:  # h5py: truncated file, not an HDF5 file, unreadable
        raise DamagedCheckpointError(
            f"{checkpoint} is damaged or not a Keras weights file "
            f"({str(error).splitlines()[0][:200]}); use another checkpoint of the run "
            f"({CHECKPOINT_DIR}/ or {BEST_DIR}/) or train again"
        ) from None
    except (ValueError, KeyError) as error:
        keras_error = error
    shapes = _checkpoint_shapes(checkpoint, source_config)
    target = [(w.path, tuple(w.shape)) for w in model.weights]
    if shapes is not None:
        differing = [
            (path, shapes.get(path), shape) for path, shape in target if shapes.get(path) != shape
        ]
        layers = list(dict.fromkeys(_layer_of(path) for path, _, _ in differing))
        first_path, theirs, ours = differing[0] if differing else (None, None, None)
    else:
        layers = _unloaded_layers(keras_error, model)
        first_path = theirs = ours = None
    if not layers:
        detail = " ".join(str(keras_error).split())[:200]
        raise CheckpointError(
            f"{checkpoint} does not fit the model built from the config ({detail})"
        )
    first = layers[0]
    shape_text = (
        f" ({first_path.split('/')[-1]}: checkpoint {theirs or 'missing'}, model {ours})"
        if first_path is not None
        else ""
    )
    changed = (
        _model_differences(source_config, config)
        if source_config is not None and config is not None
        else []
    )
    first_weight = next(w.path for w in model.weights if _layer_of(w.path) == first)
    keys = (
        "the config keys that differ from the checkpoint's run: "
        + ", ".join(changed[:4])
        + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
        if changed
        else f"set by {_part_keys(first_weight)}: use the config the checkpoint was trained with"
    )
    raise CheckpointError(
        f"{checkpoint} does not fit the model built from the config: {len(layers)} "
        f"layer(s) differ, the first {first}{shape_text}; {keys}"
    )


def _checkpoint_shapes(checkpoint: Path, source_config: Config | None) -> dict[str, tuple] | None:
    """{weight path: shape} of a checkpoint, read by building the model of the config saved
    with it; None when there is no such config or the checkpoint does not fit it either."""
    if source_config is None:
        return None
    from maskspine.modeling.factory import build_mask_rcnn

    try:
        source = build_mask_rcnn(source_config)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            source.load_weights(checkpoint)
    except (ConfigError, ValueError, KeyError, OSError):
        return None
    return {w.path: tuple(w.shape) for w in source.weights}


@dataclass
class TransferReport:
    """What `transfer_weights` copied and what it left freshly initialised."""

    loaded: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (weight, why)

    def table(self) -> str:
        lines = [f"loaded {len(self.loaded)} weights, skipped {len(self.skipped)}:"]
        width = max([len(name) for name, _ in self.skipped] + [6])
        lines.append(f"  {'weight':<{width}}  status")
        for name in self.loaded:
            lines.append(f"  {name:<{width}}  loaded")
        for name, why in self.skipped:
            lines.append(f"  {name:<{width}}  skipped: {why}")
        return "\n".join(lines)


#: Weights whose meaning depends on the class list (the reference's `finetune` resets them).
CLASS_LAYERS = ("box_head_class_logits", "box_head_box_deltas", "mask_head_logits")


def transfer_weights(
    model: keras.Model, checkpoint: str | Path, *, fresh_class_layers: bool = False
) -> TransferReport:
    """Copies every weight of a checkpoint whose name and shape match into `model`
    (transfer training); the others keep their fresh initialisation.

    Args:
        fresh_class_layers: also leave the class-dependent layers (`CLASS_LAYERS`) fresh
            even when their shapes match (config `finetune: 1`: new classes).

    The checkpoint's model is rebuilt from the config saved beside it.
    """
    from maskspine.modeling.factory import build_mask_rcnn

    path = resolve_checkpoint(checkpoint)
    saved = run_config_path(path)
    if saved is None:
        raise CheckpointError(
            f"cannot use {path} as a pretrained checkpoint: no {CONFIG_FILE} beside it or in "
            "its run directory to rebuild the model it was saved from"
        )
    source_config = load_config(saved)
    source_config.img_height, source_config.img_width = (*model.image_size,)
    source = build_mask_rcnn(source_config)
    load_weights_checked(source, path, source_config=source_config)
    by_path = {w.path: w for w in source.weights}
    report = TransferReport()
    for weight in model.weights:
        other = by_path.get(weight.path)
        if other is None:
            report.skipped.append((weight.path, "not in the checkpoint"))
        elif fresh_class_layers and any(f"/{name}/" in weight.path for name in CLASS_LAYERS):
            report.skipped.append((weight.path, "class-dependent layer, finetune: 1"))
        elif tuple(other.shape) != tuple(weight.shape):
            report.skipped.append(
                (
                    weight.path,
                    f"shape {tuple(other.shape)} in the checkpoint, {tuple(weight.shape)} here",
                )
            )
        else:
            weight.assign(other.value)
            report.loaded.append(weight.path)
    return report
