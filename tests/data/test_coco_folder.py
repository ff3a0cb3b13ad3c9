"""COCO-format folders: masks against pycocotools' annToMask, categories, bad input."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from pycocotools.coco import COCO

from maskspine.data import CocoSource, DataError, load_categories
from maskspine.data.coco import (
    CocoLabels,
    ReadSummary,
    decode_annotation,
    inspect_source,
    iter_examples,
)


def _read_all(folder):
    summary = ReadSummary()
    examples = list(iter_examples(CocoSource.from_split_folder(folder), summary))
    return {example.file_name: example for example in examples}, summary


def test_polygons_and_both_rle_forms_decode_like_ann_to_mask(messy_folder):
    coco = COCO(str(messy_folder / "labels.json"))
    examples, _ = _read_all(messy_folder)
    instances = {i.annotation_id: i for i in examples["a.png"].instances}
    # 1: polygon with two parts, 2: uncompressed RLE, 3: compressed RLE, 4: crowd RLE.
    for annotation_id in (1, 2, 3, 4):
        expected = coco.annToMask(coco.anns[annotation_id])
        assert expected.sum() > 0
        np.testing.assert_array_equal(instances[annotation_id].mask, expected)
    assert instances[4].is_crowd and not instances[1].is_crowd
    # The two polygon parts are both in the mask.
    assert instances[1].mask[5, 10] == 1 and instances[1].mask[35, 50] == 1


def test_boxes_are_yxyx_pixels_from_the_coco_xywh(messy_folder):
    examples, _ = _read_all(messy_folder)
    instances = {i.annotation_id: i for i in examples["a.png"].instances}
    np.testing.assert_allclose(instances[2].box, [5.0, 30.0, 20.0, 60.0])
    assert instances[2].box.dtype == np.float32


def test_bad_annotations_are_dropped_with_a_warning_naming_them(messy_folder, caplog):
    with caplog.at_level(logging.WARNING):
        examples, summary = _read_all(messy_folder)
        from maskspine.data.coco import log_problems

        log_problems(summary.problems, "messy")
    ids = {i.annotation_id for i in examples["a.png"].instances}
    assert ids == {1, 2, 3, 4}
    assert "annotation 5: box has zero width or height" in caplog.text
    assert "annotation 6: polygon with fewer than 3 points" in caplog.text


def test_missing_corrupt_and_truncated_images_are_skipped_and_named(messy_folder):
    examples, summary = _read_all(messy_folder)
    skipped = dict(summary.skipped_images)
    assert set(skipped) == {"broken.jpg", "missing.png", "garbage.png"}
    assert "not found" in skipped["missing.png"]
    assert "cannot read" in skipped["broken.jpg"]
    assert set(examples) == {"a.png", "b.jpg", "gray.png", "rgba.png", "palette.png", "empty.png"}
    assert examples["empty.png"].instances == []
    # The annotations of skipped images count as dropped, besides 5 and 6.
    assert summary.dropped_annotations == 2 + 2


def test_unknown_category_raises(messy_folder):
    labels = json.loads((messy_folder / "labels.json").read_text())
    labels["annotations"][1]["category_id"] = 99
    (messy_folder / "labels.json").write_text(json.dumps(labels))
    with pytest.raises(DataError, match=r"annotation 2 \(category_id 99\)"):
        list(iter_examples(CocoSource.from_split_folder(messy_folder)))


def test_missing_labels_or_images_folder_names_the_path(tmp_path, messy_folder):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        CocoSource.from_split_folder(tmp_path / "nowhere")
    (messy_folder / "labels.json").rename(tmp_path / "elsewhere.json")
    with pytest.raises(FileNotFoundError, match=str(messy_folder / "labels.json")):
        CocoSource.from_split_folder(messy_folder)
    source = CocoSource(tmp_path / "no_images", tmp_path / "elsewhere.json")
    with pytest.raises(FileNotFoundError, match="no_images"):
        list(iter_examples(source))


def test_not_json_is_a_data_error(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        CocoLabels(path)


def test_categories_with_gaps_are_sorted_by_id(messy_folder):
    expected = [(3, "cat"), (7, "dog"), (20, "zebra")]
    assert load_categories(messy_folder) == expected
    assert load_categories(CocoSource.from_split_folder(messy_folder)) == expected
    assert load_categories("shapes") == [(1, "circle"), (2, "square"), (3, "triangle")]


def test_zero_size_and_outside_boxes(tmp_path):
    square = [[2.0, 2.0, 12.0, 2.0, 12.0, 12.0, 2.0, 12.0]]
    base = {"id": 1, "category_id": 1, "segmentation": square}
    instance, problems = decode_annotation({**base, "bbox": [2, 2, 10, 0]}, 20, 20)
    assert instance is None and problems[0].kind == "zero_size_box"
    instance, problems = decode_annotation({**base, "bbox": [30, 30, 5, 5]}, 20, 20)
    assert instance is None and problems[0].kind == "box_outside"
    # No bbox: the mask's box.
    instance, problems = decode_annotation({**base}, 20, 20)
    assert problems == [] and instance.box.tolist() == [2.0, 2.0, 12.0, 12.0]


def test_polygon_with_one_degenerate_part_keeps_the_rest():
    good = [2.0, 2.0, 12.0, 2.0, 12.0, 12.0]
    annotation = {"id": 9, "category_id": 1, "segmentation": [good, [1.0, 1.0, 3.0, 3.0]]}
    instance, problems = decode_annotation({**annotation, "bbox": [2, 2, 10, 10]}, 20, 20)
    assert instance is not None and instance.mask.sum() > 0
    assert problems and problems[0].kind == "degenerate_polygon"


def test_rle_of_another_size_is_dropped():
    annotation = {
        "id": 4,
        "category_id": 1,
        "segmentation": {"size": [10, 10], "counts": [100]},
        "bbox": [0, 0, 5, 5],
    }
    instance, problems = decode_annotation(annotation, 20, 20)
    assert instance is None and "not the image's 20x20" in problems[0].message


def test_inspect_lists_statistics_and_problems(messy_folder):
    report = inspect_source(CocoSource.from_split_folder(messy_folder))
    assert report.usable
    assert report.num_images_listed == 9 and report.num_images_usable == 6
    # a.png: cat (1), dog (2), zebra (3) + crowd cat (4); b: dog; gray: zebra; rgba: cat;
    # palette: dog.
    assert report.instances_per_class == {3: 2, 7: 3, 20: 2}
    assert report.crowd_per_class == {3: 1}
    text = report.format()
    for expected in ("broken.jpg", "missing.png", "garbage.png", "annotation 5", "annotation 6"):
        assert expected in text
    assert "usable: yes" in text


def test_inspect_marks_unknown_categories_unusable(messy_folder):
    labels = json.loads((messy_folder / "labels.json").read_text())
    labels["annotations"][0]["category_id"] = 42
    (messy_folder / "labels.json").write_text(json.dumps(labels))
    report = inspect_source(CocoSource.from_split_folder(messy_folder))
    assert not report.usable
    assert "annotation 1: category_id 42 is not in 'categories'" in report.format()
