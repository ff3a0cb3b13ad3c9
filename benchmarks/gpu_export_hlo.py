"""Writes the XLA programs of SpineNet-49 Mask R-CNN at 640 (inference at batch 1 and 8, the
training step at batch 2 and 8, float32 and bfloat16) as serialized HLO, for
`benchmarks/gpu_run_hlo.py` to time on a GPU machine that has JAX but no TensorFlow
(`../shared/tools/gpu_via_jax/`).

    python benchmarks/gpu_export_hlo.py OUT_DIR [--config configs/mask_rcnn_49_640.yaml]

Each program is the model built with `jit_compile: true` (the parts' XLA kernels) traced by
`tf.function(jit_compile=True)` and lowered with `experimental_get_compiler_ir`: the
variables it reads become parameters, so the file holds the program and not the weights.
Beside each `<name>.hlo.pb` a `<name>.json` lists the parameters' shapes and dtypes (read off
the HLO's entry computation) for the runner to fill with random values; a static-shaped
program's speed does not depend on them. The training step is forward, losses, backward
and an SGD (momentum 0.9) update, on a synthetic batch of `benchmark.synthetic_training_batch`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from maskspine.benchmark import synthetic_training_batch  # noqa: E402
from maskspine.config import load_config  # noqa: E402
from maskspine.modeling.factory import build_mask_rcnn  # noqa: E402

#: HLO element types -> numpy dtype names.
HLO_TYPES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16", "s32": "int32",
             "s64": "int64", "u32": "uint32", "u8": "uint8", "pred": "bool", "u64": "uint64"}  # fmt: skip


def entry_parameters(hlo_text: str) -> list[dict]:
    """Shapes and dtypes of the entry computation's parameters, in order."""
    entry = next(line for line in hlo_text.splitlines() if line.startswith("ENTRY"))
    signature = entry[entry.index("(") + 1 : entry.index(") ->")]
    found = []
    for kind, dims in re.findall(r":\s*(\w+)\[([\d,]*)\]", signature):
        shape = [int(d) for d in dims.split(",") if d]
        found.append({"dtype": HLO_TYPES[kind], "shape": shape})
    return found


def write_program(function, arguments, out: Path, name: str) -> None:
    start = time.perf_counter()
    lowered = function.experimental_get_compiler_ir(*arguments)
    (out / f"{name}.hlo.pb").write_bytes(lowered(stage="hlo_serialized"))
    parameters = entry_parameters(lowered(stage="hlo"))
    (out / f"{name}.json").write_text(json.dumps({"name": name, "parameters": parameters}))
    size = (out / f"{name}.hlo.pb").stat().st_size / 1e6
    print(
        f"{name}: {len(parameters)} parameters, {size:.1f} MB, {time.perf_counter() - start:.0f} s"
    )


def inference_function(model):
    """The model's inference as one XLA-compiled function of (images, image_info)."""

    @tf.function(jit_compile=True)
    def infer(images, info):
        return model({"images": images, "image_info": info})

    return infer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--config", default="configs/mask_rcnn_49_640.yaml")
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--infer-batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--train-batches", nargs="+", type=int, default=[2, 8])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for precision in args.precisions:
        config = load_config(
            args.config, [*args.overrides, f"precision={precision}", "jit_compile=true"]
        )
        model = build_mask_rcnn(config)
        size = (config.img_height, config.img_width)
        infer = inference_function(model)
        for batch in args.infer_batches:
            images = tf.zeros([batch, *size, 3])
            info = tf.tile(tf.constant([[size, size, [1.0, 1.0], [0.0, 0.0]]]), [batch, 1, 1])
            write_program(infer, (images, info), args.out, f"infer_{precision}_b{batch}")
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
        step = tf.function(model.train_step, jit_compile=True)
        for batch in args.train_batches:
            data = {
                key: tf.constant(value)
                for key, value in synthetic_training_batch(config, batch).items()
            }
            write_program(step, (data,), args.out, f"train_{precision}_b{batch}")


if __name__ == "__main__":
    main()
