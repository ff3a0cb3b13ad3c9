"""`fit`'s function of one training step, A/B in one process: Keras' own (a `tf.function`
of the step called from a `tf.function` that reads the iterator) against maskspine's
(`MaskRCNN.make_train_function`: the read and the step in one graph), on one model and the
demo's real training stream, in alternated blocks of steps.

    python benchmarks/train_function_ab.py [--config configs/shapes_demo.yaml]
        [--precision float32|bfloat16] [--blocks 10] [--steps 10] [--synthetic]
        [--set KEY=VALUE ...]

Prints the median and mean step time of each over all blocks (each block after two
unmeasured steps of its function), and their ratio. The config's thread pools apply.
`--synthetic` repeats `maskspine.benchmark.synthetic_training_batch` instead of reading the
shapes set (configs whose classes are not the shapes set's, e.g. COCO's at 640).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    root = Path(__file__).resolve().parents[1]
    parser.add_argument("--config", default=str(root / "configs" / "shapes_demo.yaml"))
    parser.add_argument("--precision", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)

    from maskspine.config import load_config
    from maskspine.threads import set_threads

    overrides = args.overrides + ([f"precision={args.precision}"] if args.precision else [])
    config = load_config(args.config, overrides)
    set_threads(config.intra_op_threads, config.inter_op_threads)

    import keras
    import tensorflow as tf

    from maskspine.benchmark import synthetic_training_batch
    from maskspine.data import load_categories
    from maskspine.modeling.factory import build_mask_rcnn
    from maskspine.training.optimizer import build_optimizer
    from maskspine.training.trainer import _training_stream, resolve_classes

    source = config.train_dataset or "shapes"
    if not args.synthetic:
        resolve_classes(config, load_categories(source))
    model = build_mask_rcnn(config)
    model.compile(optimizer=build_optimizer(config, 100, model.precision), auto_scale_loss=False)
    keras.Model.make_train_function(model, force=True)  # sets model.train_function
    functions = {"keras": model.train_function}
    functions["maskspine"] = model.make_train_function(force=True)
    if args.synthetic:
        batch = synthetic_training_batch(config, config.batch_size)
        stream = tf.data.Dataset.from_tensors(batch).repeat()
    else:
        stream = _training_stream(config, source, config.batch_size, 0)
    iterator = iter(stream)
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(args.blocks):
        for name, function in functions.items():
            for step in range(args.steps + 2):
                start = time.perf_counter()
                logs = function(iterator)
                float(logs["loss"])
                if step >= 2:
                    times[name].append(time.perf_counter() - start)
    print(f"{config.backbone.arch} {config.img_height}x{config.img_width}, {model.precision}")
    for name, values in times.items():
        print(
            f"{name:10s} median {statistics.median(values):.4f} s  "
            f"mean {statistics.mean(values):.4f} s  ({len(values)} steps)"
        )
    ratio = statistics.median(times["keras"]) / statistics.median(times["maskspine"])
    print(f"keras / maskspine (medians): {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
