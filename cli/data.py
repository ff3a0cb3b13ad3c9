"""`maskspine data`: prepare, inspect and look at data sets.

    maskspine data prepare shapes
    maskspine data prepare /data/coco-2017/train --out /scratch/maskspine
    maskspine data inspect --images val2017 --annotations instances_val2017.json
    maskspine data show shapes --output samples/ --count 8 --augmented

SOURCE is `shapes` (the synthetic set), a COCO-format folder (`data/` + `labels.json`),
or, with `--images DIR --annotations FILE`, plain COCO.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from maskspine.cli.common import DATA_DIR_HELP, user_errors
from maskspine.data import SHAPES, CocoSource

app = typer.Typer(
    name="data",
    help="Prepare, inspect and look at data sets (COCO-format folders or the shapes set).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

SOURCE_HELP = "'shapes', or a COCO-format folder holding data/ and labels.json."
IMAGES_HELP = "Plain COCO: the images folder (with --annotations)."
ANNOTATIONS_HELP = "Plain COCO: the annotations JSON (with --images)."


def _sources(
    source: str | None, images: Path | None, annotations: Path | None, *, seed: int, data_dir
) -> list[tuple[str, CocoSource]]:
    """(label, CocoSource) pairs named on the command line; shapes gives both splits."""
    from maskspine.data import TRAIN_SPLIT, VALIDATION_SPLIT, ensure_shapes

    if images is not None or annotations is not None:
        if images is None or annotations is None:
            raise typer.BadParameter("--images and --annotations go together")
        if source:
            raise typer.BadParameter("give either SOURCE or --images/--annotations, not both")
        plain = CocoSource(images, annotations)
        plain.check_exists()
        return [(plain.name, plain)]
    if not source:
        raise typer.BadParameter("name a SOURCE (or --images and --annotations)")
    if source == SHAPES:
        root = ensure_shapes(seed, data_dir=data_dir)
        return [
            (f"shapes/{split}", CocoSource.from_split_folder(root / split))
            for split in (TRAIN_SPLIT, VALIDATION_SPLIT)
        ]
    folder = CocoSource.from_split_folder(source)
    return [(folder.name, folder)]


@app.command()
@user_errors
def prepare(
    source: Annotated[str | None, typer.Argument(help=SOURCE_HELP, show_default=False)] = None,
    images: Annotated[Path | None, typer.Option("--images", help=IMAGES_HELP)] = None,
    annotations: Annotated[
        Path | None, typer.Option("--annotations", help=ANNOTATIONS_HELP)
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help=DATA_DIR_HELP)] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Prepare again even if already prepared.")
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the shapes set.")] = 0,
) -> None:
    """Prepare a data set once into TFDS shards (training and evaluation read those)."""
    from maskspine.data.tfds import prepare as prepare_split
    from maskspine.data.tfds import summary_line

    for label, split in _sources(source, images, annotations, seed=seed, data_dir=out):
        prepared = prepare_split(split, data_dir=out, force=force)
        typer.echo(f"{label}: {summary_line(prepared).split(': ', 1)[1]}")
        typer.echo(f"  prepared in {prepared.directory}")
    if out is not None:
        typer.echo(
            f"Training and evaluation find it with MASKSPINE_DATA_DIR={out}, or name the "
            "prepared directory above as the data."
        )


@app.command()
@user_errors
def inspect(
    source: Annotated[str | None, typer.Argument(help=SOURCE_HELP, show_default=False)] = None,
    images: Annotated[Path | None, typer.Option("--images", help=IMAGES_HELP)] = None,
    annotations: Annotated[
        Path | None, typer.Option("--annotations", help=ANNOTATIONS_HELP)
    ] = None,
    decode: Annotated[
        bool,
        typer.Option(
            "--decode/--no-decode", help="Read every image file (slower, finds damaged files)."
        ),
    ] = True,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help=DATA_DIR_HELP)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the shapes set.")] = 0,
) -> None:
    """Print images, instances per class, crowd counts, sizes and every problem found.

    Exits 0 when the data set is usable, 1 when it is not.
    """
    from maskspine.data.coco import inspect_source

    usable = True
    for index, (_, split) in enumerate(
        _sources(source, images, annotations, seed=seed, data_dir=data_dir)
    ):
        if index:
            typer.echo("")
        report = inspect_source(split, decode_images=decode)
        typer.echo(report.format())
        usable = usable and report.usable
    if not usable:
        raise typer.Exit(1)


@app.command()
@user_errors
def show(
    output: Annotated[Path, typer.Option("--output", help="Folder for the PNG drawings.")],
    source: Annotated[str | None, typer.Argument(help=SOURCE_HELP, show_default=False)] = None,
    count: Annotated[int, typer.Option("--count", min=1, help="How many samples to draw.")] = 8,
    augmented: Annotated[
        bool,
        typer.Option(
            "--augmented", help="Draw the training pipeline's output (augmentation included)."
        ),
    ] = False,
    images: Annotated[Path | None, typer.Option("--images", help=IMAGES_HELP)] = None,
    annotations: Annotated[
        Path | None, typer.Option("--annotations", help=ANNOTATIONS_HELP)
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="Config for --augmented (sizes, augmentation).")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Config override KEY=VALUE for --augmented (repeatable)."),
    ] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help=DATA_DIR_HELP)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the shapes set.")] = 0,
) -> None:
    """Draw samples with their ground-truth boxes, masks and class names (PNG files).

    The PNGs are written under temporary names and renamed into --output when all are
    drawn; --output may not be (or hold) the data set's image folder."""
    from maskspine.files import StagedOutputs, check_outputs

    splits = _sources(source, images, annotations, seed=seed, data_dir=data_dir)
    label, split = splits[0]  # shapes: the train split
    check_outputs({}, [split.images_dir, split.annotations_file], folders={"--output": output})
    with StagedOutputs() as staged:
        if augmented:
            written = _show_augmented(
                split, output, count, config, overrides or [], data_dir, staged
            )
        else:
            written = _show_files(split, output, count, staged)
    typer.echo(f"{label}: drew {len(written)} sample(s) into {output}")


def _show_files(split: CocoSource, output: Path, count: int, staged) -> list[Path]:
    import numpy as np

    from maskspine.data.coco import CocoLabels, ReadSummary, iter_examples
    from maskspine.data.images import decode_image_bytes
    from maskspine.visualize import draw_instances

    labels = CocoLabels(split.annotations_file)
    names = dict(labels.categories)
    label_of = {category_id: i + 1 for i, (category_id, _) in enumerate(labels.categories)}
    written = []
    summary = ReadSummary()
    for example in iter_examples(split, summary, labels=labels):
        pixels = decode_image_bytes(example.encoded, split.images_dir / example.file_name)
        instances = example.instances
        ax = draw_instances(
            pixels,
            np.array([i.box for i in instances]).reshape(-1, 4),
            np.array([i.mask for i in instances]).reshape(-1, *pixels.shape[:2]),
            [names[i.category_id] + (" (crowd)" if i.is_crowd else "") for i in instances],
            labels=[label_of[i.category_id] for i in instances],
            title=example.file_name,
        )
        path = output / f"{Path(example.file_name).stem}.png"
        ax.figure.savefig(staged.stage(path), format="png")
        written.append(path)
        if len(written) >= count:
            break
    return written


def _show_augmented(
    split: CocoSource,
    output: Path,
    count: int,
    config_path: Path | None,
    overrides: list[str],
    data_dir: Path | None,
    staged,
) -> list[Path]:
    import dataclasses

    from maskspine.config import load_config
    from maskspine.data import build_dataset, load_categories
    from maskspine.visualize import draw_batch_element

    config = load_config(config_path, overrides)
    categories = load_categories(split)
    if not config.classes_from_data:
        config = dataclasses.replace(config, coco_classes="from_data")
    dataset = build_dataset(config, split, training=True, batch_size=1, data_dir=data_dir)
    names = [name for _, name in categories]
    written = []
    for index, batch in enumerate(dataset.take(count)):
        info = batch["image_info"][0].numpy()
        title = (
            f"sample {index}: scale {info[2][0]:.2f}, offset ({info[3][0]:.0f}, {info[3][1]:.0f})"
        )
        ax = draw_batch_element(batch, 0, config, names, title=title)
        path = output / f"augmented_{index:03d}.png"
        ax.figure.savefig(staged.stage(path), format="png")
        written.append(path)
    return written
