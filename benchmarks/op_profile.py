"""Where inference or a training step spends its time, by TensorFlow op type, from the
TensorFlow profiler's trace: each op's time on the executor threads, summed over a few
calls after a warm-up.

    python benchmarks/op_profile.py [--config configs/mask_rcnn_49_640.yaml] [--what infer|train]
        [--precision float32|bfloat16] [--runs 3] [--config-pools] [--set KEY=VALUE ...]

Prints the share of conv / matmul kernels in all op time, then the op types and the single
ops that take the most. Op times are CPU time on TensorFlow's executor threads (ops that
run at once on two threads both count), so shares, not seconds, are the figures to read.
Then how many executor threads ran an op through the calls (none, one, two or more: the
share of the time), and the ops that ran alone, by layer: what keeps a core idle.
`--config-pools`: TensorFlow's thread pools as the config sets them for training
(`intra_op_threads`, `inter_op_threads`; the shapes demo runs one thread per op), instead of
TensorFlow's default.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

#: Op types counted as convolution / matrix product kernels (oneDNN names included).
MATRIX_OPS = (
    "Conv2D",
    "_MklConv2D",
    "_MklNativeConv2D",
    "_FusedConv2D",
    "_MklFusedConv2D",
    "_MklNativeFusedConv2D",
    "Conv2DBackpropInput",
    "Conv2DBackpropFilter",
    "_MklNativeConv2DBackpropInput",
    "_MklNativeConv2DBackpropFilter",
    "_MklConv2DBackpropInput",
    "_MklConv2DBackpropFilter",
    "MatMul",
    "_MklMatMul",
    "_FusedMatMul",
    "_MklFusedMatMul",
    "_MklNativeFusedMatMul",
    "BatchMatMulV2",
    "BatchMatMulV3",
    "_MklBatchMatMulV2",
    "Einsum",
    "DepthwiseConv2dNative",
)


def op_events(trace_dir: str) -> list[tuple[int, int, int, str]]:
    """(start, end in picoseconds, executor thread id, "op name:op type") of every op in a
    profiler trace, on TensorFlow's executor threads (`tf_Compute*`)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    events = []
    for path in Path(trace_dir).glob("plugins/profile/*/*.xplane.pb"):
        space = xplane_pb2.XSpace()
        space.ParseFromString(path.read_bytes())
        for plane in space.planes:
            metadata = plane.event_metadata
            for line in plane.lines:
                if not line.name.startswith("tf_Compute"):
                    continue
                origin = line.timestamp_ns * 1000
                for event in line.events:
                    name = metadata[event.metadata_id].name
                    # not ops: the executor's own spans and the thread pool's regions
                    if ":" not in name or name.startswith(("ExecutorState", "ThreadpoolListener")):
                        continue
                    start = origin + event.offset_ps
                    events.append((start, start + event.duration_ps, line.id, name))
    return events


def op_times(events) -> tuple[collections.Counter, collections.Counter]:
    """(seconds by op type, seconds by op name) of `op_events`."""
    by_type: collections.Counter = collections.Counter()
    by_name: collections.Counter = collections.Counter()
    for start, end, _, name in events:
        by_type[name.rsplit(":", 1)[1]] += (end - start) * 1e-12
        by_name[name] += (end - start) * 1e-12
    return by_type, by_name


def concurrency(events) -> tuple[collections.Counter, collections.Counter]:
    """(seconds with 0, 1, 2, ... threads running an op, between the first op and the last;
    seconds each op ran while no other thread ran one) of `op_events`. An op nested in
    another on its thread counts as that thread's outer op."""
    points = sorted(
        [(start, 1, thread, name) for start, _, thread, name in events]
        + [(end, -1, thread, name) for _, end, thread, name in events],
        key=lambda point: (point[0], point[1]),
    )
    busy: collections.Counter = collections.Counter()
    alone: collections.Counter = collections.Counter()
    depth: collections.Counter = collections.Counter()
    outer: dict[int, str] = {}
    previous = points[0][0] if points else 0
    for time_ps, step, thread, name in points:
        running = [t for t, d in depth.items() if d > 0]
        seconds = (time_ps - previous) * 1e-12
        busy[len(running)] += seconds
        if len(running) == 1:
            alone[outer[running[0]]] += seconds
        depth[thread] += step
        if step > 0 and depth[thread] == 1:
            outer[thread] = name
        previous = time_ps
    return busy, alone


def by_scope(
    by_name: collections.Counter, depth: int = 2, marked: bool = False
) -> collections.Counter:
    """Seconds summed by the first `depth` parts of the ops' name scope, a gradient's
    `gradient_tape/` prefix dropped. By default of the ops that are not conv / matmul
    kernels, a layer's forward and backward together; `marked`: of every op, the gradient's
    apart ("[gradient]" after the scope)."""
    scopes: collections.Counter = collections.Counter()
    for name, seconds in by_name.items():
        op_name, op_type = name.rsplit(":", 1)
        if op_type in MATRIX_OPS and not marked:
            continue
        parts = op_name.removeprefix("gradient_tape/").split("/")
        gradient = marked and op_name.startswith("gradient_tape/")
        scopes["/".join(parts[:depth]) + (" [gradient]" if gradient else "")] += seconds
    return scopes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/mask_rcnn_49_640.yaml")
    parser.add_argument("--what", choices=("infer", "train"), default="infer")
    parser.add_argument("--precision", default=None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--config-pools", action="store_true")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    from maskspine.config import load_config
    from maskspine.threads import set_threads

    overrides = args.overrides + ([f"precision={args.precision}"] if args.precision else [])
    config = load_config(args.config, overrides)
    if args.config_pools:  # before TensorFlow starts
        set_threads(config.intra_op_threads, config.inter_op_threads)

    import numpy as np
    import tensorflow as tf

    from maskspine.benchmark import synthetic_training_batch
    from maskspine.data import load_categories
    from maskspine.modeling.factory import build_mask_rcnn
    from maskspine.predict import predict_function
    from maskspine.training.optimizer import build_optimizer
    from maskspine.training.trainer import resolve_classes

    if config.classes_from_data:
        resolve_classes(config, load_categories("shapes"))
    model = build_mask_rcnn(config)
    if args.what == "infer":
        size = (config.img_height, config.img_width)
        images = tf.random.uniform([1, *size, 3], -1, 1, seed=0)
        info = tf.constant([[size, size, [1.0, 1.0], [0.0, 0.0]]], tf.float32)
        predict = predict_function(model)

        def call():
            return predict(images, info)
    else:
        model.compile(
            optimizer=build_optimizer(config, 100, model.precision), auto_scale_loss=False
        )
        batch = {
            k: tf.constant(v)
            for k, v in synthetic_training_batch(config, config.batch_size).items()
        }
        step = tf.function(model.train_step)

        def call():
            return step(batch)

    tf.nest.map_structure(np.asarray, call())  # trace and warm up
    with tempfile.TemporaryDirectory() as trace:
        tf.profiler.experimental.start(trace)
        start = time.perf_counter()
        for _ in range(args.runs):
            tf.nest.map_structure(np.asarray, call())
        wall = (time.perf_counter() - start) / args.runs
        tf.profiler.experimental.stop()
        events = op_events(trace)
    by_type, by_name = op_times(events)
    busy, alone = concurrency(events)
    # Shares of the wall time of a call: asynchronous kernels (CropAndResize on CPU) have no
    # op event in the trace, so the time that no event covers is listed as its own line.
    total = wall * args.runs
    matrix = sum(seconds for op, seconds in by_type.items() if op in MATRIX_OPS)
    by_type["(not in an op event: CropAndResize, executor)"] = max(
        total - sum(by_type.values()), 0.0
    )
    print(
        f"{args.what}, {args.config} {' '.join(overrides)}, precision {model.precision}: "
        f"{wall:.3f} s per call (with the profiler on), conv/matmul kernels "
        f"{100 * matrix / total:.1f} % of it"
    )
    print("op types:")
    for op, seconds in by_type.most_common(args.top):
        print(f"  {100 * seconds / total:5.1f} %  {seconds / args.runs:7.3f} s  {op}")
    print("ops:")
    for op, seconds in by_name.most_common(args.top):
        print(f"  {100 * seconds / total:5.1f} %  {seconds / args.runs:7.3f} s  {op}")
    print("other than conv/matmul kernels, by the layer they belong to (forward and gradient):")
    for scope, seconds in by_scope(by_name).most_common(args.top):
        print(f"  {100 * seconds / total:5.1f} %  {seconds / args.runs:7.3f} s  {scope}")
    pools = "the config's" if args.config_pools else "TensorFlow's default"
    span = sum(busy.values())
    mean = sum(threads * seconds for threads, seconds in busy.items()) / max(span, 1e-12)
    print(
        f"executor threads running an op ({pools} pools), share of the calls' span "
        f"(mean {mean:.2f}, most {max(busy, default=0)}):"
    )
    shown: collections.Counter = collections.Counter()
    for threads, seconds in busy.items():
        shown[min(threads, 3)] += seconds
    for threads, seconds in sorted(shown.items()):
        label = f"{threads}{'+' if threads == 3 else ''}"
        print(
            f"  {label:>2}: {100 * seconds / max(span, 1e-12):5.1f} %  {seconds / args.runs:7.3f} s"
        )
    print("ops that ran while no other thread ran one, by layer (forward; gradient marked):")
    for scope, seconds in by_scope(alone, marked=True).most_common(args.top):
        print(f"  {100 * seconds / total:5.1f} %  {seconds / args.runs:7.3f} s  {scope}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
