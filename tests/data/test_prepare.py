"""TFDS preparation: stored once, reused, masks intact, metadata kept."""

from __future__ import annotations

import json

import numpy as np
import tensorflow as tf
from coco_fixtures import make_config
from pycocotools.coco import COCO

from maskspine.data import CocoSource, build_dataset, load_categories
from maskspine.data.tfds import load_prepared, prepare, prepared_root


def test_prepared_examples_hold_the_decoded_masks_and_boxes(messy_folder, tmp_path):
    prepared = prepare(CocoSource.from_split_folder(messy_folder), data_dir=tmp_path)
    assert prepared.num_examples == 6
    assert prepared.categories == [(3, "cat"), (7, "dog"), (20, "zebra")]
    assert {name for name, _ in prepared.skipped_images} == {
        "broken.jpg",
        "missing.png",
        "garbage.png",
    }
    assert prepared.instance_counts == [4, 1, 1, 1, 1, 0]
    assert prepared.non_crowd_counts == [3, 1, 1, 1, 1, 0]
    coco = COCO(str(messy_folder / "labels.json"))
    first = next(iter(prepared.as_dataset()))
    assert int(first["image_id"]) == 101 and first["file_name"].numpy() == b"a.png"
    objects = first["objects"]
    assert objects["id"].numpy().tolist() == [1, 2, 3, 4]
    assert objects["category_id"].numpy().tolist() == [3, 7, 20, 3]
    assert objects["is_crowd"].numpy().tolist() == [False, False, False, True]
    for annotation_id, png in zip(objects["id"].numpy(), objects["mask"], strict=True):
        mask = tf.io.decode_png(png).numpy()[..., 0]
        np.testing.assert_array_equal(mask, coco.annToMask(coco.anns[int(annotation_id)]))
    x, y, w, h = coco.anns[2]["bbox"]
    np.testing.assert_allclose(objects["box"].numpy()[1], [y, x, y + h, x + w])


def test_prepare_runs_once_and_again_when_labels_change(messy_folder, tmp_path):
    source = CocoSource.from_split_folder(messy_folder)
    first = prepare(source, data_dir=tmp_path)
    stamp = (first.directory / "dataset_info.json").stat().st_mtime_ns
    again = prepare(source, data_dir=tmp_path)
    assert again.directory == first.directory
    assert (again.directory / "dataset_info.json").stat().st_mtime_ns == stamp
    labels = json.loads((messy_folder / "labels.json").read_text())
    labels["images"] = labels["images"][:2]
    (messy_folder / "labels.json").write_text(json.dumps(labels))
    changed = prepare(source, data_dir=tmp_path)
    assert changed.directory != first.directory
    assert changed.num_examples == 2
    assert prepared_root(source, tmp_path) == changed.directory.parent.parent


def test_a_prepared_directory_is_a_source(messy_folder, colour_folder, tmp_path):
    prepared = prepare(CocoSource.from_split_folder(colour_folder), data_dir=tmp_path / "cache")
    root = prepared.directory.parent.parent  # any folder above the TFDS directory works
    assert load_prepared(root).directory == prepared.directory
    assert load_categories(root) == [(1, "red"), (2, "green"), (3, "blue")]
    dataset = build_dataset(make_config(), root, training=False, data_dir=tmp_path / "other")
    assert sum(int(batch["images"].shape[0]) for batch in dataset) == 4
