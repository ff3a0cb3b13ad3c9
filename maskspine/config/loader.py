"""Loading a config: YAML files, a base mapping (a run's saved config) they are merged onto,
`--set key=value` overrides checked one by one, the MindSpore-only keys of the reference,
and writing a config back. Every loaded config is validated once
(`maskspine.config.schema.validate`). Nothing here imports TensorFlow.

    config = load_config("configs/mask_rcnn_49_640.yaml", ["backbone.arch=49S", "lr=0.02"])
    config = load_config("test_only.yaml", base=read_yaml_mapping("runs/x/config.yaml"))
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from maskspine.config.schema import (
    MINDSPORE_ONLY_KEYS,
    Config,
    _build,
    config_to_dict,
    validate,
)
from maskspine.errors import ConfigError
from maskspine.files import write_text_atomic

logger = logging.getLogger(__name__)


def load_config(
    path: str | Path | None,
    overrides: Sequence[str] = (),
    *,
    base: Mapping[str, Any] | None = None,
) -> Config:
    """Loads a YAML config into a validated `Config`.

    Args:
        path: a YAML file, or None for the defaults alone.
        overrides: `key=value` strings with dotted paths (`backbone.arch=49S`,
            `lr=0.02`, `lr_steps=[8,11]`); values are parsed as YAML. Each is checked on its
            own first, so that a misspelt key or a wrong type names the override.
        base: a nested mapping (a saved run's config) that the file's keys, then the
            overrides, are merged onto: a key the file does not set keeps the base's value.

    Raises:
        ConfigError: naming the file (or the override), the key and what would fix it.
    """
    source = str(path) if path is not None else "<defaults>"
    data: dict[str, Any] = copy.deepcopy(dict(base)) if base is not None else {}
    if path is not None:
        _merge(data, read_yaml_mapping(path))
    for override in overrides:
        _merge(data, _parse_override(override))
    return config_from_dict(data, source=source)


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML config file, as read (not yet checked).

    Raises:
        ConfigError: the file is missing, not text, not YAML (naming the line and column),
            or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(
            f"{path} is not a text file (not UTF-8): give a YAML config such as "
            "configs/shapes_demo.yaml"
        ) from None
    except OSError as error:
        raise ConfigError(f"cannot read the config {path}: {error.strerror or error}") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML{_yaml_problem(error)}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return loaded


def _yaml_problem(error: yaml.YAMLError) -> str:
    """Where and what a YAML error is, on one line (` at line 3, column 5: ...`)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    context = getattr(error, "context", None)
    return f"{where}: {problem}" + (f" ({context})" if context else "")


def _merge(data: dict[str, Any], update: Mapping[str, Any]) -> None:
    """Merges `update` into `data` key by key: nested mappings are merged, others replaced."""
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(data.get(key), dict):
            _merge(data[key], value)
        else:
            data[key] = copy.deepcopy(value)


def config_from_dict(data: Mapping[str, Any], *, source: str = "<dict>") -> Config:
    """Builds a validated `Config` from a nested mapping (as read from YAML)."""
    ignored = sorted(key for key in data if key in MINDSPORE_ONLY_KEYS)
    if ignored:
        logger.warning(
            "%s: ignoring keys that only apply to MindSpore: %s", source, ", ".join(ignored)
        )
    data = {key: value for key, value in data.items() if key not in MINDSPORE_ONLY_KEYS}
    data = _fold_mixed_precision(data, source)
    config = _build(Config(), data, source=source, prefix="")
    validate(config, source=source)
    return config


def _fold_mixed_precision(data: dict[str, Any], source: str) -> dict[str, Any]:
    """The reference's `mixed_precision: True / False` as `precision`: True is `auto`
    (mixed precision where the hardware runs it natively), unless `precision` is given."""
    if "mixed_precision" not in data:
        return data
    data = dict(data)
    value = data.pop("mixed_precision")
    if not isinstance(value, (bool, int)) or value not in (0, 1):
        raise ConfigError(
            f"{source}: mixed_precision = {value!r} has the wrong type: expected bool "
            "(or use precision: float32 | bfloat16 | float16 | auto)"
        )
    if value and "precision" not in data:
        data["precision"] = "auto"
    return data


def save_config(config: Config, path: str | Path) -> None:
    """Writes the resolved config as YAML that `load_config` reads back unchanged."""
    write_text_atomic(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))


def _parse_override(override: str) -> dict[str, Any]:
    """`key.sub=value` as the nested mapping `{"key": {"sub": value}}`, its key and type
    checked against the schema (the error names the override)."""
    source = f"--set {override}"
    if "=" not in override:
        raise ConfigError(f"{source}: an override looks like key=value (e.g. lr=0.02)")
    key, raw = override.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"{source}: no key before '='")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: the value is not valid YAML{_yaml_problem(error)}") from None
    data: dict[str, Any] = {}
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    if parts[0] not in MINDSPORE_ONLY_KEYS and parts[0] != "mixed_precision":
        _build(Config(), data, source=source, prefix="")  # the key and the value's type
    return data
