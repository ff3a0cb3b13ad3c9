"""Synthetic checkpoints in the originals' formats, with the real variable names.

The variable tables (tables/*.json.gz, written once from the original code by
tools/pretrained/make_{tpu,modelgarden}_tables.py) give every variable's name and shape.
`write_tpu_checkpoint` writes a TF1 name-based checkpoint (what `tf.compat.v1.train.Saver`
writes: no object graph), `write_modelgarden_checkpoint` an object-based one
(`tf.train.Checkpoint`, keys `model/.../.ATTRIBUTES/VARIABLE_VALUE`). Values come from
`pattern`: each variable's first element is its index in the table, the rest a ramp, so a
value found in a weight says which variable it came from and in which layout.
"""

from __future__ import annotations

import gzip
import json
import os

import numpy as np
import tensorflow as tf

from maskspine.pretrained.writer import VALUE_SUFFIX, write_modelgarden_checkpoint  # noqa: F401

TABLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tables")

#: Shrinks a configs/pretrained model (names unchanged, widths small, 128 px).
TINY_PRETRAINED_OVERRIDES = [
    "img_height=128",
    "img_width=128",
    "backbone.filter_size_scale=0.125",
    "backbone.endpoints_num_filters=16",
    "rpn.in_channels=16",
    "rpn.feat_channels=16",
    "bbox_head.in_channels=16",
    "bbox_head.conv_out_channels=16",
    "bbox_head.fc_out_channels=32",
    "mask_head.in_channels=16",
    "mask_head.conv_out_channels=16",
    "roi.out_channels=16",
    "mask_roi.out_channels=16",
    "test_cfg.rpn.nms_pre=100",
    "test_cfg.rpn.max_per_img=100",
    "test_cfg.rcnn.max_per_img=20",
]


def load_table(format: str, model: str) -> dict:
    with gzip.open(os.path.join(TABLES, f"{format}_{model}.json.gz"), "rt") as f:
        return json.load(f)


def pattern(index: int, shape) -> np.ndarray:
    """A float32 array whose flat element 0 is `index` and element k > 0 is index + k/1e4
    (k mod 1000): identifies the variable and the element order."""
    size = int(np.prod(shape)) if len(shape) else 1
    values = index + (np.arange(size) % 1000) / 1e4
    values[0] = index
    return values.reshape(shape).astype(np.float32)


def write_tpu_checkpoint(prefix: str, variables: dict[str, np.ndarray]) -> str:
    """A TF1 name-based checkpoint (`prefix.index`, `prefix.data-00000-of-00001`)."""
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    names = list(variables)
    tf.raw_ops.SaveV2(
        prefix=prefix,
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(variables[n]) for n in names],
    )
    return prefix


def plausible(name: str, shape, rng: np.random.Generator) -> np.ndarray:
    """A value a trained network could hold (BatchNorm scales and variances near 1, small
    kernels), so that a model filled with them computes finite outputs."""
    leaf = name.removesuffix(VALUE_SUFFIX).rsplit("/", 1)[-1]
    if leaf in ("gamma", "moving_variance"):
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if leaf in ("beta", "moving_mean", "bias"):
        return rng.normal(0, 0.05, shape).astype(np.float32)
    fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    return rng.normal(0, 1.0 / np.sqrt(fan_in), shape).astype(np.float32)
