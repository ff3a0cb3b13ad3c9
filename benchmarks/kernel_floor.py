"""What the kernels allow: the time of a model's convolutions and matrix products, each run
alone at its own shapes and dtypes (`maskspine.flops.kernel_floor`), against the time the
whole call takes, in one or more precisions in the same run.

    python benchmarks/kernel_floor.py [--config configs/mask_rcnn_49_640.yaml]
        [--what infer|train] [--precision float32 --precision bfloat16] [--runs 5]
        [--set KEY=VALUE ...]

For each precision: the call's median (inference of one image, or a training step on a
synthetic batch, as `maskspine benchmark` times them), the kernels' floor (the sum of each
dense op's median time alone, times how often the call runs it) and the call over the
floor (below 1: ops of the call overlap, or its fused kernels beat the bare ones). With two
precisions, the ratio of the second to the first, of the calls and of the floors: the
ratio the kernels allow this model on this host. Then the ops that take most of the floor.
"""

from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def timed_call(config, what: str):
    """(the `tf.function` timed, its arguments): inference of one random image, or a
    training step on a synthetic batch of `config.batch_size`, of a fresh model."""
    import tensorflow as tf

    from maskspine.benchmark import synthetic_training_batch
    from maskspine.modeling.factory import build_mask_rcnn
    from maskspine.predict import predict_function
    from maskspine.training.optimizer import build_optimizer

    model = build_mask_rcnn(config)
    if what == "infer":
        size = (config.img_height, config.img_width)
        images = tf.random.stateless_uniform([1, *size, 3], seed=[0, 0]) * 2.0 - 1.0
        info = tf.constant([[size, size, [1.0, 1.0], [0.0, 0.0]]], tf.float32)
        function, arguments = predict_function(model), (images, info)
    else:
        model.compile(
            optimizer=build_optimizer(config, 100, model.precision), auto_scale_loss=False
        )
        batch = synthetic_training_batch(config, config.batch_size)
        function = tf.function(model.train_step, jit_compile=model.xla)
        arguments = ({key: tf.constant(value) for key, value in batch.items()},)
    return function, arguments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/mask_rcnn_49_640.yaml")
    parser.add_argument("--what", choices=("infer", "train"), default="infer")
    parser.add_argument("--precision", action="append", default=[])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    from maskspine.benchmark import machine_description, time_calls
    from maskspine.config import load_config
    from maskspine.data import load_categories
    from maskspine.flops import kernel_floor
    from maskspine.training.trainer import resolve_classes

    print(machine_description())
    results = []
    for precision in args.precision or ["float32"]:
        config = load_config(args.config, [*args.overrides, f"precision={precision}"])
        if config.classes_from_data:
            resolve_classes(config, load_categories("shapes"))
        function, arguments = timed_call(config, args.what)
        _, seconds = time_calls(lambda: function(*arguments), args.runs)  # noqa: B023
        call = statistics.median(seconds)
        floor = kernel_floor(function, *arguments, runs=args.runs)
        results.append((precision, call, floor))
        by_type = ", ".join(f"{kind} {s:.3f}" for kind, s in sorted(floor.by_type().items()))
        print(
            f"{args.what} {args.config} {' '.join(args.overrides)} {precision}: call "
            f"{call:.3f} s, kernels alone {floor.seconds:.3f} s ({by_type}), call / kernels "
            f"{call / floor.seconds:.2f}; {len(floor.rows)} distinct dense ops"
        )
        for op, count, alone in floor.rows[: args.top]:
            shapes = " ".join("x".join(map(str, shape)) for _, shape, _ in op.inputs)
            print(f"    {count} x {1e3 * alone:8.2f} ms  {op.type} {shapes}")
    for precision, call, floor in results[1:]:
        base, base_call, base_floor = results[0]
        print(
            f"{precision} / {base}: calls {call / base_call:.3f}, kernels alone "
            f"{floor.seconds / base_floor.seconds:.3f}"
        )


if __name__ == "__main__":
    main()
