"""`maskspine train`: training as the reference's train scripts run it."""

from __future__ import annotations

from pathlib import Path

import typer

from maskspine.cli.common import user_errors


@user_errors
def train_command(
    config: Path | None = typer.Argument(
        None,
        help="YAML config (configs/*.yaml). With --resume: optional; its keys replace those of "
        "the run's saved config, the others kept.",
        show_default=False,
    ),
    train_data: str | None = typer.Option(
        None,
        "--train-data",
        help="COCO-format folder (data/ + labels.json). Default: config train_dataset, else shapes.",
    ),
    val_data: str | None = typer.Option(
        None, "--val-data", help="Validation folder. Default: config val_dataset, else shapes."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Parent of the run directory (config train_outputs)."
    ),
    brief: str | None = typer.Option(
        None, "--brief", help="Short experiment name in the run directory's name."
    ),
    pretrained: Path | None = typer.Option(
        None,
        "--pretrained",
        help="A checkpoint of ours to start from (weights whose shapes match).",
    ),
    resume: Path | None = typer.Option(
        None,
        "--resume",
        help="A run directory to continue; CONFIG and --set change what may change mid-run "
        "(schedule, evaluation, saving, logging).",
    ),
    cpu_replicas: int = typer.Option(
        0,
        "--cpu-replicas",
        help="Mirror over N logical CPU devices (multi-replica path without GPUs).",
    ),
    tpu: str | None = typer.Option(
        None,
        "--tpu",
        help="Train on this TPU (TPUStrategy; a TPU name, a grpc:// address, or '' for the "
        "local one): the config's `strategy: tpu` and `tpu`. Always compiled with XLA.",
    ),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a config key: --set lr=0.02 (repeatable)."
    ),
) -> None:
    """Train Mask R-CNN; with no data named, on the synthetic shapes set."""
    from maskspine.checkpoints import CONFIG_FILE
    from maskspine.config import ConfigError, load_config, read_yaml_mapping

    if resume is None:
        if config is None:
            raise ConfigError("give a CONFIG file (e.g. configs/shapes_demo.yaml), or --resume RUN")
        loaded = load_config(config, overrides)
    else:
        saved = resume / CONFIG_FILE
        if not resume.is_dir():
            raise FileNotFoundError(
                f"run directory not found: {resume} (--resume takes a run directory written "
                "by maskspine train, such as runs/<date>_MaskRCNN_<brief>_<size>)"
            )
        if not saved.is_file():
            raise ConfigError(
                f"{resume} is not a run directory: it has no {CONFIG_FILE} (--resume takes a "
                "folder written by maskspine train)"
            )
        # CONFIG, when given, replaces only the keys it sets in the run's saved config.
        loaded = (
            load_config(saved, overrides)
            if config is None
            else load_config(config, overrides, base=read_yaml_mapping(saved))
        )
    if tpu is not None:
        loaded.strategy, loaded.tpu = "tpu", tpu
    from maskspine.training.trainer import train

    result = train(
        loaded,
        train_data=train_data,
        val_data=val_data,
        out=out,
        brief=brief,
        pretrained=pretrained,
        resume=resume,
        cpu_replicas=cpu_replicas,
    )
    typer.echo(f"Run directory: {result.run_dir}")
    if result.last_evaluation:
        final = result.last_evaluation
        typer.echo(
            f"Final evaluation (epoch {final['epoch']}): bbox mAP {final['bbox_mAP']:.4f}, "
            f"segm mAP {final['seg_mAP']:.4f}"
        )
