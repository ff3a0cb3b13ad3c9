"""The synthetic shapes set: deterministic for a seed, exact masks, the reference layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from maskspine.data.shapes import (
    SHAPE_CLASSES,
    ShapesSpec,
    ensure_shapes,
    render_shapes_image,
    write_shapes_split,
)

SMALL = ShapesSpec(num_train=5, num_validation=2)


def _files(folder):
    return {path.name: path.read_bytes() for path in sorted((folder / "data").iterdir())}


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    write_shapes_split(tmp_path / "a", 4, seed=3, spec=SMALL)
    write_shapes_split(tmp_path / "b", 4, seed=3, spec=SMALL)
    write_shapes_split(tmp_path / "c", 4, seed=4, spec=SMALL)
    assert (tmp_path / "a/labels.json").read_bytes() == (tmp_path / "b/labels.json").read_bytes()
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert _files(tmp_path / "a") != _files(tmp_path / "c")


def test_a_longer_split_starts_with_the_same_images(tmp_path):
    write_shapes_split(tmp_path / "short", 2, seed=0, spec=SMALL)
    write_shapes_split(tmp_path / "long", 4, seed=0, spec=SMALL)
    short, long = _files(tmp_path / "short"), _files(tmp_path / "long")
    assert all(long[name] == data for name, data in short.items())


def test_masks_are_exact_and_occlusion_cuts_earlier_shapes():
    spec = ShapesSpec()
    for index in range(20):
        rng = np.random.default_rng([7, 0, index])
        pixels, instances = render_shapes_image(rng, spec)
        height, width = pixels.shape[:2]
        assert spec.min_image_size <= height <= spec.max_image_size
        assert spec.min_image_size <= width <= spec.max_image_size
        assert 1 <= len(instances) <= spec.max_shapes
        masks = np.array([mask for _, mask in instances])
        assert masks.any(axis=(1, 2)).all()
        # Visible masks never overlap: a later shape removed its pixels from earlier ones.
        assert masks.sum(axis=0).max() <= 1
        for class_index, _ in instances:
            assert 0 <= class_index < len(SHAPE_CLASSES)


def test_labels_json_matches_the_masks(tmp_path):
    labels_path = write_shapes_split(tmp_path / "split", 3, seed=1, spec=SMALL)
    coco = COCO(str(labels_path))
    labels = json.loads(labels_path.read_text())
    assert [c["name"] for c in sorted(labels["categories"], key=lambda c: c["id"])] == list(
        SHAPE_CLASSES
    )
    for image in labels["images"]:
        pixels = np.asarray(Image.open(tmp_path / "split" / "data" / image["file_name"]))
        assert pixels.shape == (image["height"], image["width"], 3)
        for annotation in coco.imgToAnns[image["id"]]:
            mask = coco.annToMask(annotation)
            rows, cols = np.nonzero(mask)
            x, y, w, h = annotation["bbox"]
            # The box is the tight box of the mask (continuous pixel edges).
            assert (x, y, x + w, y + h) == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
            assert annotation["area"] == mask.sum()
            assert annotation["iscrowd"] == 0


def test_ensure_shapes_writes_both_splits_once(tmp_path):
    root = ensure_shapes(5, SMALL, data_dir=tmp_path)
    for split, count in (("train", 5), ("validation", 2)):
        labels = json.loads((root / split / "labels.json").read_text())
        assert len(labels["images"]) == count
        assert len(list((root / split / "data").glob("*.png"))) == count
    stamp = (root / "train" / "labels.json").stat().st_mtime_ns
    assert ensure_shapes(5, SMALL, data_dir=tmp_path) == root
    assert (root / "train" / "labels.json").stat().st_mtime_ns == stamp
    # The validation split is not a copy of the train split.
    assert _files(root / "train")["000001.png"] != _files(root / "validation")["000001.png"]


def test_drawing_in_worker_processes_writes_the_same_files(tmp_path):
    # 120 images: chunks of 50, 50 and 20, drawn by two spawned processes, against one
    # process drawing them in order.
    from maskspine.data.shapes import _worker_pool

    spec = ShapesSpec(
        num_train=120, num_validation=2, min_image_size=48, max_image_size=64, min_shape_size=8
    )
    write_shapes_split(tmp_path / "serial", 120, seed=9, split_index=0, spec=spec)
    pool = _worker_pool(2)
    try:
        write_shapes_split(tmp_path / "pool", 120, seed=9, split_index=0, spec=spec, executor=pool)
    finally:
        pool.shutdown()
    serial = (tmp_path / "serial/labels.json").read_bytes()
    assert (tmp_path / "pool/labels.json").read_bytes() == serial
    assert _files(tmp_path / "pool") == _files(tmp_path / "serial")
    annotations = json.loads(serial)["annotations"]
    assert [a["id"] for a in annotations] == list(range(1, len(annotations) + 1))
    assert len({a["image_id"] for a in annotations}) == 120


@pytest.mark.parametrize(("cores", "expected"), [(1, None), (3, 3), (16, 4)])
def test_the_drawing_processes_are_the_cpus_the_process_may_use(
    tmp_path, monkeypatch, cores, expected
):
    """As many drawing processes as CPUs the process may use (a container's quota counts)
    and chunks of 50 images to draw (212 images: 4), one process drawing alone on one CPU."""
    from concurrent.futures import ThreadPoolExecutor

    import maskspine.data.shapes as shapes

    asked = []

    def pool(workers):
        asked.append(workers)
        return ThreadPoolExecutor(workers)

    monkeypatch.setattr(shapes, "host_cores", lambda: cores)
    monkeypatch.setattr(shapes, "_worker_pool", pool)
    spec = ShapesSpec(
        num_train=200, num_validation=12, min_image_size=48, max_image_size=64, min_shape_size=8
    )
    ensure_shapes(1, spec, data_dir=tmp_path)
    assert asked == ([] if expected is None else [expected])
