"""Data: COCO-format folders, the synthetic shapes set, TFDS preparation, tf.data pipelines.

    dataset = build_dataset(config, "shapes", training=True)         # the default data
    dataset = build_dataset(config, "/data/coco-2017/train", training=True)
    categories = load_categories("shapes")     # [(1, 'circle'), (2, 'square'), (3, 'triangle')]

A source is one of:

- `"shapes"` (or `""` / None): the synthetic shapes set, generated from `config.seed` into
  `$MASKSPINE_DATA_DIR` (default `~/.cache/maskspine`) the first time; training reads its
  `train` split, evaluation its `validation` split;
- a split folder in the reference's layout (`<dir>/data/*.jpg|png` + `<dir>/labels.json`);
- a `CocoSource(images_dir, annotations_file)` for plain COCO;
- a prepared data set directory (written by `maskspine data prepare`).

Sources are prepared into TFDS shards once (`maskspine.data.tfds.prepare`) and read from
there afterwards.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from maskspine.data.coco import (
    CocoLabels,
    CocoSource,
    InspectReport,
    inspect_source,
    load_coco_categories,
)
from maskspine.data.images import IMAGE_SUFFIXES, read_image
from maskspine.data.shapes import (
    SHAPE_CLASSES,
    TRAIN_SPLIT,
    VALIDATION_SPLIT,
    ShapesSpec,
    default_data_root,
    ensure_shapes,
    shapes_categories,
)
from maskspine.errors import DataError

if TYPE_CHECKING:
    import tensorflow as tf

    from maskspine.config import Config
    from maskspine.data.tfds import PreparedData

logger = logging.getLogger(__name__)

SHAPES = "shapes"

Source = str | Path | CocoSource

__all__ = [
    "SHAPES",
    "SHAPE_CLASSES",
    "CocoLabels",
    "CocoSource",
    "DataError",
    "IMAGE_SUFFIXES",
    "InspectReport",
    "ShapesSpec",
    "build_dataset",
    "category_ids_for_labels",
    "default_data_root",
    "ensure_shapes",
    "inspect_source",
    "load_categories",
    "prepare_source",
    "read_image",
    "resolve_source",
]


def _is_shapes(source: Source | None) -> bool:
    return source is None or (isinstance(source, str) and source in ("", SHAPES))


def resolve_source(
    source: Source | None,
    *,
    training: bool,
    seed: int = 0,
    data_dir: str | Path | None = None,
    shapes_spec: ShapesSpec | None = None,
) -> CocoSource | Path:
    """The `CocoSource` (or prepared data set directory) a source names.

    `"shapes"` is generated first if needed; its train split for training, its validation
    split otherwise.

    Raises:
        FileNotFoundError: the path does not exist or is not a COCO-format folder; the
            message says what was expected.
    """
    from maskspine.data.tfds import is_prepared_directory

    if isinstance(source, CocoSource):
        source.check_exists()
        return source
    if _is_shapes(source):
        root = ensure_shapes(seed, shapes_spec, data_dir=data_dir)
        return CocoSource.from_split_folder(root / (TRAIN_SPLIT if training else VALIDATION_SPLIT))
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"data not found: {path} (give a COCO-format folder with data/ and labels.json, "
            f"a prepared data set, or '{SHAPES}')"
        )
    if (path / "labels.json").is_file() or (path / "data").is_dir():
        return CocoSource.from_split_folder(path)
    if is_prepared_directory(path):
        return path
    raise FileNotFoundError(
        f"{path} is not a COCO-format folder: expected {path / 'labels.json'} and "
        f"{path / 'data'}/ (or a prepared data set from `maskspine data prepare`)"
    )


def prepare_source(
    source: Source | None,
    *,
    training: bool,
    seed: int = 0,
    data_dir: str | Path | None = None,
    force: bool = False,
) -> PreparedData:
    """Resolves a source and prepares it (once); see `maskspine.data.tfds.prepare`."""
    from maskspine.data.tfds import load_prepared, prepare

    resolved = resolve_source(source, training=training, seed=seed, data_dir=data_dir)
    if isinstance(resolved, Path):
        return load_prepared(resolved)
    return prepare(resolved, data_dir=data_dir, force=force)


def load_categories(
    source: Source | None, *, data_dir: str | Path | None = None
) -> list[tuple[int, str]]:
    """The data set's categories as (category_id, name), sorted by id.

    Contiguous label k + 1 (0 is background) is the k-th entry. Nothing is generated or
    prepared: shapes' categories are fixed, a folder's come from its labels.json, a
    prepared data set's from its metadata.
    """
    if _is_shapes(source):
        return shapes_categories()
    if isinstance(source, CocoSource):
        return load_coco_categories(source.annotations_file)
    path = Path(source).expanduser()
    if (path / "labels.json").is_file():
        return load_coco_categories(path / "labels.json")
    if path.is_file():
        return load_coco_categories(path)
    from maskspine.data.tfds import is_prepared_directory, load_prepared

    if is_prepared_directory(path):
        return load_prepared(path).categories
    raise FileNotFoundError(f"no labels.json or prepared data set at {path}")


def category_ids_for_labels(config: Config, categories: list[tuple[int, str]]) -> list[int]:
    """The data set category id of each contiguous label (label k + 1 <- entry k).

    `config.category_ids` when given (the mapping a model was trained with), else the data
    set's categories in id order.

    Raises:
        DataError: the data has categories the config's classes cannot hold; the message
            shows both lists and the fix.
    """
    data_ids = [category_id for category_id, _ in categories]
    if config.classes_from_data:
        return data_ids
    if config.category_ids:
        missing = sorted(set(data_ids) - set(config.category_ids))
        if missing:
            names = dict(categories)
            raise DataError(
                "the data has categories the config does not list in category_ids: "
                + ", ".join(f"{cid} ({names[cid]})" for cid in missing)
                + f"; config category_ids: {config.category_ids}. Use the data's classes "
                "with --set coco_classes=from_data, or add them to the config."
            )
        return list(config.category_ids)
    if len(data_ids) > config.num_classes - 1:
        config_names = list(config.coco_classes[1:])
        raise DataError(
            f"the data has {len(data_ids)} categories but the config has "
            f"{config.num_classes - 1} classes besides background.\n"
            f"  data:   {[name for _, name in categories]}\n"
            f"  config: {config_names}\n"
            "Use the data's classes with --set coco_classes=from_data."
        )
    return data_ids


def build_dataset(
    config: Config,
    source: Source | None = None,
    *,
    training: bool,
    batch_size: int | None = None,
    input_context: tf.distribute.InputContext | None = None,
    data_dir: str | Path | None = None,
    start_batch: int | None = None,
) -> tf.data.Dataset:
    """Batches of the docs/architecture.md dict from a source (see `maskspine.data.pipeline`).

    Args:
        config: sizes, normalisation, augmentation, `seed`, `num_gts`, `mask_crop_size`,
            `num_parallel_workers`, `train_dataset_num`, classes.
        source: see the module docstring; None takes `config.train_dataset` (training) or
            `config.val_dataset`, and the shapes set when that is empty too.
        training: shuffled, augmented batches with ground truth, last partial batch of
            a pass dropped: one pass over the data (pass 0), or with `start_batch` the
            endless stream of passes; else the images in order with `image_id`, every
            image, no augmentation.
        batch_size: images per batch per replica (default `config.batch_size` for
            training, `config.test_batch_size` for evaluation).
        input_context: from `strategy.distribute_datasets_from_function`: shards the data
            and batches `input_context.get_per_replica_batch_size(global batch)`, the
            global batch being `batch_size` x replicas.
        data_dir: where generated and prepared data live (default `$MASKSPINE_DATA_DIR` or
            `~/.cache/maskspine`).
        start_batch: training: the endless stream of passes from batch `start_batch` on
            (a resumed run's global step); each pass is shuffled and augmented from
            (`config.seed`, pass), so batch k is the same whether or not a run was resumed.

    Raises:
        FileNotFoundError: the source does not exist (the message names the path).
        DataError: unusable data (no images, unknown categories, classes that do not
            match the config, fewer images than one training batch).
    """
    from maskspine.data.pipeline import make_dataset
    from maskspine.data.tfds import summary_line

    if source is None:
        source = config.train_dataset if training else config.val_dataset
    prepared = prepare_source(source, training=training, seed=config.seed, data_dir=data_dir)
    category_ids = category_ids_for_labels(config, prepared.categories)

    if batch_size is None:
        batch_size = config.batch_size if training else config.test_batch_size
    if input_context is not None:
        global_batch = batch_size * input_context.num_replicas_in_sync
        batch_size = input_context.get_per_replica_batch_size(global_batch)

    take = int(config.train_dataset_num) if training else 0
    counts = prepared.instance_counts[:take] if take > 0 else prepared.instance_counts
    non_crowd = prepared.non_crowd_counts[: len(counts)]
    over = sum(count > config.num_gts for count in counts)
    if over:
        logger.warning(
            "%s: %d image(s) have more than num_gts=%d instances (at most %d); each keeps "
            "its %d largest",
            prepared.name,
            over,
            config.num_gts,
            max(counts),
            config.num_gts,
        )
    message = summary_line(prepared)
    if prepared.skipped_images:
        logger.warning("%s", message)
    else:
        logger.info("%s", message)
    examples_per_pass = None
    if training:
        usable = sum(count > 0 for count in non_crowd)
        pipelines = input_context.num_input_pipelines if input_context is not None else 1
        pipeline = input_context.input_pipeline_id if input_context is not None else 0
        examples_per_pass = len(range(pipeline, usable, pipelines))
        if usable // pipelines < batch_size:
            raise DataError(
                f"{prepared.name}: {usable} training image(s) with instances "
                f"for {pipelines} input pipeline(s) is less than one batch of {batch_size}; "
                "lower batch_size or add images"
            )
    return make_dataset(
        prepared.as_dataset(),
        config,
        category_ids,
        training=training,
        batch_size=batch_size,
        input_context=input_context,
        take=take,
        examples_per_pass=examples_per_pass,
        start_batch=start_batch,
    )
