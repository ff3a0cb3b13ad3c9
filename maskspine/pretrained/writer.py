"""The inverse of `import-weights --format modelgarden`: a maskspine run's weights written as
a Model Garden `tf.train.Checkpoint(model=...)` checkpoint (for fine-tuning in Model Garden,
and for the transfer measurement of tools/README.md).

    path = write_run_as_modelgarden("runs/<run>", "out/ckpt-1")

The run's model must be a Model Garden flavour (a `configs/pretrained/*_modelgarden.yaml`
config): its weights then map one to one onto the variables Model Garden's
`maskrcnn_spinenet_coco` model writes (`maskspine.pretrained.names`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from maskspine.pretrained.sources import WeightsImportError

#: The end of every variable key of an object-based checkpoint.
VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


class _Node(tf.Module):
    """One object of the checkpoint's object graph (its attributes are the children)."""


def write_modelgarden_checkpoint(
    prefix: str | os.PathLike, variables: dict[str, np.ndarray]
) -> str:
    """An object-based checkpoint whose keys are `variables`' names (`model/a/b/kernel`, with
    or without `/.ATTRIBUTES/VARIABLE_VALUE`), as `tf.train.Checkpoint(model=..., ...).write`
    makes them (objects and variables nested by the names' parts).

    Returns:
        The checkpoint's prefix.
    """
    root = _Node()
    for key, value in variables.items():
        parts = key.removesuffix(VALUE_SUFFIX).split("/")
        node = root
        for part in parts[:-1]:
            child = getattr(node, part, None)
            if child is None:
                child = _Node()
                setattr(node, part, child)
            node = child
        setattr(node, parts[-1], tf.Variable(value, name=parts[-1]))
    tops = {key.split("/", 1)[0] for key in variables}
    checkpoint = tf.train.Checkpoint(**{top: getattr(root, top) for top in tops})
    return checkpoint.write(str(prefix))


def write_run_as_modelgarden(run: str | os.PathLike, prefix: str | os.PathLike) -> tuple[str, int]:
    """The weights of a run directory (or weights file) as a Model Garden checkpoint.

    Returns:
        (the checkpoint's prefix, the number of variables written).

    Raises:
        WeightsImportError: the run's model is not a Model Garden flavour.
    """
    from maskspine.checkpoints import load_model
    from maskspine.pretrained import names

    model, config, _ = load_model(Path(run))
    prefixes = {part: candidates[0] for part, candidates in names.MODELGARDEN_PREFIXES.items()}
    mapping = names.modelgarden_variable_map(config, prefixes)
    weights = {w.path: w.numpy() for w in model.weights}
    if set(mapping.values()) != set(weights):
        raise WeightsImportError(
            f"{run}: its model is not a Model Garden flavour (train it with a "
            "configs/pretrained/*_modelgarden.yaml config)"
        )
    path = write_modelgarden_checkpoint(prefix, {key: weights[t] for key, t in mapping.items()})
    return path, len(mapping)
