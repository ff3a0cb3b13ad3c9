"""Typed configuration: the schema (`schema`: dataclasses, type checks, the checks across
keys), loading (`loader`: YAML, a saved config as the base, `--set` overrides) and the rules
of a resumed run (`resume`). The names below are the package's interface.

    config = load_config("configs/mask_rcnn_49_640.yaml", ["backbone.arch=49S", "lr=0.02"])

Key names and nesting follow the reference's YAML (its "Script Parameters" block), so a
config written for it can be carried over; keys that only make sense on MindSpore are
accepted and ignored with one warning line. Nothing here imports TensorFlow.
"""

from maskspine.choices import CONFIG_CHOICES, SPINENET_ARCHS
from maskspine.config.loader import (
    config_from_dict,
    load_config,
    read_yaml_mapping,
    save_config,
)
from maskspine.config.resume import (
    RESUME_FROZEN_KEYS,
    RUN_IDENTITY_KEYS,
    config_differences,
    is_frozen_on_resume,
)
from maskspine.config.schema import (
    CLASSES_FROM_DATA,
    MINDSPORE_ONLY_KEYS,
    Config,
    config_to_dict,
    flatten_config,
    validate,
)
from maskspine.errors import ConfigError

__all__ = [
    "CLASSES_FROM_DATA",
    "CONFIG_CHOICES",
    "MINDSPORE_ONLY_KEYS",
    "RESUME_FROZEN_KEYS",
    "RUN_IDENTITY_KEYS",
    "SPINENET_ARCHS",
    "Config",
    "ConfigError",
    "config_differences",
    "config_from_dict",
    "config_to_dict",
    "flatten_config",
    "is_frozen_on_resume",
    "load_config",
    "read_yaml_mapping",
    "save_config",
    "validate",
]
