"""GPU readiness without a GPU: the training step and inference traced in graph mode, and
every op type that has no GPU kernel in TensorFlow's kernel registry (this CUDA build of
TensorFlow registers them) and would run outside an XLA cluster is named in the README's
"GPU readiness" list, with why it stays on the host. Under jit_compile every op is in the
cluster (the whole function compiles, `tests/modeling/test_xla.py`)."""

from __future__ import annotations

import re
from pathlib import Path

import keras
import pytest
import tensorflow as tf
from model_fixtures import REPO, TINY_OVERRIDES, make_batch
from tensorflow.python.framework import kernels

from maskspine.config import load_config
from maskspine.graphs import graph_ops
from maskspine.modeling.factory import build_mask_rcnn

#: Kernels of these device types run on a GPU (DEFAULT: any device, e.g. control flow).
GPU_DEVICE_TYPES = {"GPU", "DEFAULT"}
#: Ops that call a function (its ops are walked) and run wherever they are placed.
FUNCTION_CALLS = {"PartitionedCall", "StatefulPartitionedCall"}


def host_only_ops(overrides: list[str]) -> set[str]:
    config = load_config(f"{REPO}/configs/shapes_demo.yaml", [*TINY_OVERRIDES, *overrides])
    model = build_mask_rcnn(config)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    batch, _ = make_batch(2)
    batch = {key: tf.constant(value) for key, value in batch.items()}
    inference = tf.function(lambda x, info: model({"images": x, "image_info": info}))
    graphs = [
        inference.get_concrete_function(batch["images"], batch["image_info"]).graph,
        tf.function(model.train_step).get_concrete_function(batch).graph,
    ]
    found = set()
    for graph in graphs:
        for op in graph_ops(graph):
            if op.type in FUNCTION_CALLS:
                continue
            devices = {
                kernel.device_type
                for kernel in kernels.get_registered_kernels_for_op(op.type).kernel
            }
            if not devices & GPU_DEVICE_TYPES:
                found.add(op.type)
    return found


def readme_host_ops() -> set[str]:
    text = Path(REPO, "README.md").read_text(encoding="utf-8")
    section = text.split("### GPU readiness", 1)[1].split("\n#", 1)[0]
    return set(re.findall(r"^\| `(\w+)` \|", section, re.M))


@pytest.mark.slow  # traces the training step twice
@pytest.mark.skipif(not tf.test.is_built_with_cuda(), reason="a TensorFlow without CUDA kernels")
@pytest.mark.parametrize(
    "overrides",
    [
        [],  # the defaults: combined NMS rules, crop_and_resize
        [
            "test_cfg.rcnn.nms_rule=padded",
            "test_cfg.rpn.nms_rule=padded",
            "train_cfg.rpn_proposal.nms_rule=padded",
        ],  # the imports' rules
    ],  # fmt: skip
)
def test_every_op_without_a_gpu_kernel_is_named_in_the_readme(overrides):
    found = host_only_ops([*overrides, "jit_compile=false"])
    assert found <= readme_host_ops(), found - readme_host_ops()
    assert "Conv2D" not in found and "CropAndResize" not in found  # the registry is a GPU one
