"""What a resumed run may change (`maskspine train --resume`): the keys frozen with the run
(its weights' shapes and meaning, its optimizer's variables, its position in the data), the
keys that name the run, and the differences between two configs. Nothing here imports
TensorFlow.
"""

from __future__ import annotations

from typing import Any

from maskspine.config.schema import Config, flatten_config


def config_differences(old: Config, new: Config) -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) of every key whose value differs, in key order."""
    before, after = flatten_config(old), flatten_config(new)
    return [(key, before[key], after[key]) for key in before if before[key] != after[key]]


#: Keys a resumed run may not change: the weights' shapes and meaning (model, classes,
#: input size), the optimizer's variables (its type, accumulation, loss scaling) and the
#: position bookkeeping (global batch, steps per epoch, the training data and its order).
#: A key or section listed here covers every key below it.
RESUME_FROZEN_KEYS = (
    "detector",
    "backbone",
    "rpn",
    "bbox_head",
    "mask_head",
    "roi",
    "mask_roi",
    "coco_classes",
    "num_classes",
    "category_ids",
    "img_width",
    "img_height",
    "divider",
    "img_mean",
    "img_std",
    "to_rgb",
    "keep_ratio",
    "mask_crop_size",
    "opt_type",
    "accumulate_step",
    "precision",
    "batch_size",
    "steps_per_epoch",
    "train_dataset",
    "train_dataset_num",
    "seed",
)

#: Keys that name the run rather than configure it: a resumed run keeps its own.
RUN_IDENTITY_KEYS = ("train_outputs", "brief")


#: Keys inside frozen sections that may change all the same: how a part computes, not what
#: (the kernels give the same values to float rounding).
RESUME_FREE_KEYS = ("roi.roi_layer.method", "mask_roi.roi_layer.method")


def is_frozen_on_resume(key: str) -> bool:
    """True for a dotted key that `RESUME_FROZEN_KEYS` covers (and `RESUME_FREE_KEYS` does
    not free)."""
    if key in RESUME_FREE_KEYS:
        return False
    return any(key == frozen or key.startswith(f"{frozen}.") for frozen in RESUME_FROZEN_KEYS)
