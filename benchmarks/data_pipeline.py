"""Training input pipeline throughput (images per second) on the shapes data.

    python benchmarks/data_pipeline.py                       # configs/shapes_demo.yaml
    python benchmarks/data_pipeline.py --set img_width=320 --set img_height=320 --runs 7

Builds the training dataset exactly as training does (`maskspine.data.build_dataset`,
augmentation on), warms it up, then times `--batches` batches `--runs` times and prints
each run and the median. The shapes set is generated and prepared first if needed (not
timed). `num_parallel_workers` <= 0 in the config means AUTOTUNE.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "shapes_demo.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--batches", type=int, default=40, help="batches timed per run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=10, help="batches before timing")
    parser.add_argument("--data-dir", default=None, help="default: $MASKSPINE_DATA_DIR")
    args = parser.parse_args()

    import tensorflow as tf

    from maskspine.config import load_config
    from maskspine.data import build_dataset

    config = load_config(args.config if Path(args.config).is_file() else None, args.overrides)
    dataset = build_dataset(config, "shapes", training=True, data_dir=args.data_dir).repeat()
    batch_size = int(dataset.element_spec["images"].shape[0])
    iterator = iter(dataset)
    for _ in range(args.warmup):
        next(iterator)
    rates = []
    for run in range(args.runs):
        start = time.perf_counter()
        for _ in range(args.batches):
            batch = next(iterator)
        _ = batch["images"].numpy()  # make sure the last batch is materialised
        elapsed = time.perf_counter() - start
        rates.append(args.batches * batch_size / elapsed)
        print(f"run {run + 1}: {rates[-1]:.1f} images/s")
    workers = config.num_parallel_workers if config.num_parallel_workers > 0 else "AUTOTUNE"
    print(
        f"training pipeline, shapes data, {config.img_height}x{config.img_width}, batch "
        f"{batch_size}, scale jitter {config.aug_scale_min}-{config.aug_scale_max}, flip "
        f"{config.flip_ratio}, expand {config.expand_ratio}, workers {workers}, "
        f"{os.cpu_count()} CPUs, TF {tf.__version__}: median {statistics.median(rates):.1f} images/s"
    )


if __name__ == "__main__":
    main()
