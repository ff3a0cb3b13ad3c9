"""How long tracing the training step and inference takes, with AutoGraph on and off.

    python benchmarks/trace_time.py [--config configs/shapes_demo.yaml] [--pairs 3]
        [--set KEY=VALUE ...]

Each measurement runs in a fresh process (AutoGraph caches its conversions per process), in
turns: AutoGraph on, then off, `--pairs` times. A measurement builds the model, then times
`get_concrete_function` of `tf.function(model.train_step)` on a synthetic batch of 2 (the
Python trace: graph building, no Grappler) and the first call after it (Grappler, kernel
set-up, one step); inference (`model(..., training=False)` on the batch's images) is timed
the same way in a process of its own. Prints the
medians and the traced graph's op count, which is the same either way when the model has no
Python control flow on tensors.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def measure(config_path: str, overrides: list[str], what: str, autograph: bool) -> dict:
    """One process's trace and first-call times (s) and op count of `what` ("train" or
    "infer")."""
    import keras
    import tensorflow as tf

    from maskspine.benchmark import synthetic_training_batch
    from maskspine.config import load_config
    from maskspine.data import load_categories
    from maskspine.modeling.factory import build_mask_rcnn
    from maskspine.training.trainer import resolve_classes

    config = load_config(config_path, overrides)
    if config.classes_from_data:
        resolve_classes(config, load_categories("shapes"))
    model = build_mask_rcnn(config)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    batch = {k: tf.constant(v) for k, v in synthetic_training_batch(config, 2).items()}
    result: dict = {}
    if what == "infer":
        return _measure_inference(model, batch, autograph)
    step = tf.function(model.train_step, autograph=autograph)
    start = time.perf_counter()
    concrete = step.get_concrete_function(batch)
    result["train trace"] = time.perf_counter() - start
    result["train ops"] = len(concrete.graph.get_operations())
    start = time.perf_counter()
    step(batch)
    result["train first call"] = time.perf_counter() - start
    return result


def _measure_inference(model, batch: dict, autograph: bool) -> dict:
    import tensorflow as tf

    result: dict = {}

    def infer(images, info):
        return model({"images": images, "image_info": info}, training=False)

    function = tf.function(infer, autograph=autograph)
    args = (batch["images"], batch["image_info"])
    start = time.perf_counter()
    concrete = function.get_concrete_function(*args)
    result["infer trace"] = time.perf_counter() - start
    result["infer ops"] = len(concrete.graph.get_operations())
    start = time.perf_counter()
    function(*args)
    result["infer first call"] = time.perf_counter() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/shapes_demo.yaml")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--child", help=argparse.SUPPRESS)  # "on-train", "off-infer", ...
    args = parser.parse_args()
    if args.child:
        mode, what = args.child.split("-")
        print(json.dumps(measure(args.config, args.overrides, what, mode == "on")))
        return
    runs: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    for _ in range(args.pairs):
        for mode in ("on", "off"):
            result = {}
            for what in ("train", "infer"):
                command = [sys.executable, __file__, "--config", args.config]
                command += ["--child", f"{mode}-{what}"]
                command += [f"--set={override}" for override in args.overrides]
                completed = subprocess.run(command, check=True, capture_output=True, text=True)
                result.update(json.loads(completed.stdout.strip().splitlines()[-1]))
            runs[mode].append(result)
    print(f"{args.config} {' '.join(args.overrides)}: medians of {args.pairs} processes each")
    keys = list(runs["on"][0])
    print(f"{'':18} {'AutoGraph on':>14} {'AutoGraph off':>14}")
    for key in keys:
        on = statistics.median(run[key] for run in runs["on"])
        off = statistics.median(run[key] for run in runs["off"])
        if key.endswith("ops"):
            print(f"{key:18} {on:>12.0f}   {off:>12.0f}")
        else:
            print(f"{key:18} {on:>12.2f} s {off:>12.2f} s")


if __name__ == "__main__":
    main()
