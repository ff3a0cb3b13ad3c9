"""`maskspine benchmark`: time a config's inference, training step and input pipeline here.

    maskspine benchmark configs/mask_rcnn_49_640.yaml --what infer
    maskspine benchmark configs/shapes_demo.yaml --precision bfloat16 --what all
    maskspine benchmark --checkpoint runs/<run> --batch-size 4 --json timings.json

Prints one table (median seconds per call, images/s, each inference stage's share of the
whole model, peak memory) under a line describing the machine (CPU, cores, native
bfloat16, GPUs), which is what the figures depend on. `maskspine.benchmark` does the work.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from maskspine.cli.common import (
    CHECKPOINT_HELP,
    DATA_DIR_HELP,
    JIT_HELP,
    PRECISION_HELP,
    SET_HELP,
    JitCompile,
    Precision,
    compute_overrides,
    user_errors,
)


class Part(str, Enum):
    """`--what` values."""

    infer = "infer"
    train = "train"
    data = "data"
    all = "all"


@user_errors
def benchmark_command(
    config: Annotated[
        Path | None,
        typer.Argument(
            help="YAML config (optional with --checkpoint: the run's saved config).",
            show_default=False,
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", help=CHECKPOINT_HELP + " Optional.")
    ] = None,
    what: Annotated[
        list[Part] | None,
        typer.Option("--what", help="What to time (repeatable): infer, train, data or all."),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            min=1,
            help="Images per call (default: test_batch_size for infer, batch_size otherwise).",
        ),
    ] = None,
    runs: Annotated[int, typer.Option("--runs", min=1, help="Timed calls per figure.")] = 5,
    data: Annotated[
        str, typer.Option("--data", help="Data for --what data and the classes (default: shapes).")
    ] = "shapes",
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help=DATA_DIR_HELP)] = None,
    precision: Annotated[Precision | None, typer.Option("--precision", help=PRECISION_HELP)] = None,
    jit_compile: Annotated[JitCompile | None, typer.Option("--jit-compile", help=JIT_HELP)] = None,
    json_output: Annotated[
        Path | None, typer.Option("--json", help="Also write the figures here as JSON.")
    ] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help=SET_HELP)] = None,
) -> None:
    """Time inference (per stage), a training step and the input pipeline on this machine."""
    from maskspine import benchmark
    from maskspine.config import ConfigError, load_config
    from maskspine.files import write_json_atomic

    overrides = [*(overrides or []), *compute_overrides(precision, jit_compile)]
    parts = {p.value for p in (what or [Part.infer])}
    parts = set(benchmark.WHAT) if Part.all.value in parts else parts
    model = None
    if checkpoint is not None:
        from maskspine.checkpoints import load_model

        model, loaded, weights = load_model(checkpoint, config, overrides)
        typer.echo(f"loaded {weights}")
    elif config is not None:
        loaded = load_config(config, overrides)
        if Part.train.value in parts:
            from maskspine.threads import set_threads

            # before anything runs on TensorFlow (run_benchmark would be too late)
            set_threads(loaded.intra_op_threads, loaded.inter_op_threads)
        if loaded.classes_from_data:
            from maskspine.data import load_categories
            from maskspine.training.trainer import resolve_classes

            resolve_classes(loaded, load_categories(data))
    else:
        raise ConfigError("give a CONFIG file or --checkpoint RUN")
    typer.echo(f"machine: {benchmark.machine_description()}")
    from maskspine.jit import device_kind, resolve_jit_compile
    from maskspine.precision import resolve_precision

    kind = device_kind()
    jit = resolve_jit_compile(loaded.jit_compile, kind)
    from maskspine.threads import describe_threads, threads_restricted

    # the pools in effect (a loaded checkpoint started TensorFlow before they could be set)
    threads_note = ""
    if threads_restricted() or loaded.intra_op_threads == "auto":
        threads_note = f", threads {describe_threads(loaded.intra_op_threads)}"
    typer.echo(
        f"config: SpineNet-{loaded.backbone.arch}, {loaded.img_height}x{loaded.img_width}, "
        f"{loaded.num_classes - 1} classes (and background), precision {loaded.precision} "
        f"({resolve_precision(loaded.precision)}), XLA {'on' if jit else 'off'} "
        f"(jit_compile {loaded.jit_compile} on a {kind.upper()})" + threads_note
    )
    rows = benchmark.run_benchmark(
        loaded,
        model=model,
        what=[part for part in benchmark.WHAT if part in parts],
        batch_size=batch_size,
        runs=runs,
        data_source=data,
        data_dir=data_dir,
    )
    typer.echo(benchmark.format_table(rows))
    if json_output is not None:
        write_json_atomic(
            json_output,
            [
                {
                    "part": row.part,
                    "name": row.name,
                    "seconds": row.seconds,
                    "median_s": row.median,
                    "images_per_s": row.images_per_second,
                    "images_per_call": row.images,
                    "peak_memory_bytes": row.peak_memory_bytes,
                    "first_call_s": row.first_call,
                    "dense_flops": row.flops.dense if row.flops is not None else None,
                    "other_flops": row.flops.other if row.flops is not None else None,
                    "gflops_per_s": row.gflops_per_second,
                    "share_of_peak": row.share_of_peak,
                    "peaks_flops_per_s": row.peaks,
                }
                for row in rows
            ],
        )
        typer.echo(f"wrote {json_output}")
