"""COCO evaluation against hand-computed APs on a tiny ground truth (pycocotools inside).

AP by hand: COCO AP averages, over the 10 IoU thresholds .50:.05:.95 and the 101 recall
points 0:.01:1, the interpolated precision (the best precision at any recall >= the point).
"""

import copy
import json
import math

import numpy as np
import pytest
from evaluation_fixtures import (
    CATEGORIES,
    IMAGES,
    OBJECTS,
    perfect_results,
    result,
    write_ground_truth,
)

from maskspine import formats, postprocess
from maskspine.evaluation import (
    STAT_NAMES,
    evaluate_coco,
    format_per_class_table,
    load_predictions,
    per_class_ap,
    per_class_tables,
    save_per_class_csv,
    save_predictions,
)


@pytest.fixture
def gt_path(tmp_path):
    return write_ground_truth(tmp_path)


def with_replaced(results, annotation_id, rect, score=None):
    """`results` (perfect, in OBJECTS order) with one prediction moved to `rect`."""
    results = copy.deepcopy(results)
    index = list(OBJECTS).index(annotation_id)
    image_id, category_id, _, _ = OBJECTS[annotation_id]
    results[index] = result(image_id, category_id, rect, score or results[index]["score"])
    return results


def test_perfect_predictions_give_ap_one(gt_path):
    stats = evaluate_coco(gt_path, perfect_results(), print_summary=False)
    for iou_type in ("bbox", "segm"):
        assert set(stats[iou_type]) == set(STAT_NAMES)
        for name in ("AP", "AP50", "AP75", "APs", "AR1", "AR10", "AR100", "ARs"):
            assert stats[iou_type][name] == pytest.approx(1.0), (iou_type, name)
        # No medium / large objects in this ground truth: pycocotools reports -1.
        for name in ("APm", "APl", "ARm", "ARl"):
            assert stats[iou_type][name] == -1.0


def test_box_at_iou_06_counts_for_three_of_ten_thresholds(gt_path):
    # The only dog: its box (5..25, 5..45) is 20 x 40; a 20 x 24 box inside it has
    # IoU 480 / 800 = 0.6 exactly, a match at IoU .50, .55, .60 only: dog AP = 3 / 10, and
    # the same for its rectangle mask. Cat and car stay perfect.
    results = with_replaced(perfect_results(), 3, (5, 25, 5, 29))
    stats = evaluate_coco(gt_path, results, print_summary=False)
    for iou_type in ("bbox", "segm"):
        assert stats[iou_type]["AP"] == pytest.approx((1.0 + 0.3 + 1.0) / 3)
        assert stats[iou_type]["AP50"] == pytest.approx(1.0)
        assert stats[iou_type]["AP75"] == pytest.approx(2.0 / 3)
        assert stats[iou_type]["AR100"] == pytest.approx((1.0 + 0.3 + 1.0) / 3)


def test_one_of_two_objects_shifted(gt_path):
    # Car has two objects. The one in image 3 (20 x 40) is predicted 20 x 24 (IoU 0.6) with a
    # lower score than the perfect other. At IoU <= .60 both match (AP 1); above, the
    # ranking is TP then FP: precision 1 up to recall 1/2, so 51 of the 101 recall points
    # have precision 1 and the rest 0.
    results = with_replaced(perfect_results(), 4, (10, 30, 20, 44), score=0.1)
    car_ap = (3 * 1.0 + 7 * 51 / 101) / 10
    stats = evaluate_coco(gt_path, results, iou_types=("bbox",), print_summary=False)
    assert set(stats) == {"bbox"}
    assert stats["bbox"]["AP"] == pytest.approx((1.0 + 1.0 + car_ap) / 3)
    assert stats["bbox"]["AP75"] == pytest.approx((1.0 + 1.0 + 51 / 101) / 3)
    rows = {row.category_id: row for row in per_class_ap(stats.evaluators["bbox"])}
    assert rows[7].AP == pytest.approx(car_ap)
    assert rows[7].AP50 == pytest.approx(1.0)
    assert rows[7].AP75 == pytest.approx(51 / 101)


def test_model_outputs_through_postprocess_give_ap_one(gt_path):
    """The whole path eval takes: network-input boxes and box masks -> instances -> results."""
    category_ids = [c["id"] for c in CATEGORIES]  # contiguous label k -> category_ids[k - 1]
    scale = 1.5
    results = []
    for image_id, (height, width) in IMAGES.items():
        objects = [(c, rect) for (i, c, rect, _) in OBJECTS.values() if i == image_id]
        detections = 4  # padded slots, as the model returns them
        boxes = np.zeros((detections, 4), np.float32)
        classes = np.zeros(detections, np.int32)
        scores = np.zeros(detections, np.float32)
        for slot, (category_id, (y0, y1, x0, x1)) in enumerate(objects):
            boxes[slot] = np.array([y0, x0, y1, x1], np.float32) * scale
            classes[slot] = category_ids.index(category_id) + 1
            scores[slot] = 0.8
        outputs = {
            "detection_boxes": boxes,
            "detection_scores": scores,
            "detection_classes": classes,
            "num_detections": np.array(len(objects)),
            "detection_masks": np.ones((detections, 28, 28), np.float32),
        }
        image_info = np.array(
            [[height, width], [height * scale, width * scale], [scale, scale], [0, 0]], np.float32
        )
        instances = postprocess.detections_to_instances(outputs, image_info)
        results += formats.to_coco_results(instances, image_id, category_ids)
    stats = evaluate_coco(gt_path, results, print_summary=False)
    assert stats["bbox"]["AP"] == pytest.approx(1.0)
    assert stats["segm"]["AP"] == pytest.approx(1.0)


def test_prints_pycocotools_summary_and_reference_lines(gt_path, capsys):
    results = with_replaced(perfect_results(), 3, (5, 25, 5, 29))
    stats = evaluate_coco(gt_path, results)
    out = capsys.readouterr().out
    assert out.count("Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]") == 2
    assert f"Bbox eval result: {stats['bbox']['AP']}\n" in out
    assert f"Segmentation eval result: {stats['segm']['AP']}\n" in out
    assert out.index("Evaluate annotation type *bbox*") < out.index("Bbox eval result")
    assert out.index("Bbox eval result") < out.index("Evaluate annotation type *segm*")


def test_quiet_evaluation_prints_nothing(gt_path, capsys):
    evaluate_coco(gt_path, perfect_results(), print_summary=False)
    assert capsys.readouterr().out == ""


def test_results_are_not_modified(gt_path):
    results = perfect_results()
    before = copy.deepcopy(results)
    evaluate_coco(gt_path, results, print_summary=False)
    assert results == before


def test_saved_then_loaded_predictions_give_identical_stats(gt_path, tmp_path):
    results = with_replaced(perfect_results(), 4, (10, 30, 20, 44), score=0.1)
    results[0]["score"] = np.float32(0.75)  # numpy scalars are written as numbers
    path = save_predictions(tmp_path / "out" / "predictions.json", results)
    assert sorted(p.name for p in path.parent.iterdir()) == ["predictions.json"]  # no temp left
    loaded = load_predictions(path)
    assert len(loaded) == len(results)
    assert loaded[0]["score"] == pytest.approx(0.75)
    direct = evaluate_coco(gt_path, results, print_summary=False)
    from_list = evaluate_coco(gt_path, loaded, print_summary=False)
    from_file = evaluate_coco(gt_path, path, print_summary=False)
    assert dict(from_list) == dict(direct)
    assert dict(from_file) == dict(direct)


def test_load_predictions_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_predictions(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    with pytest.raises(ValueError, match="broken.json"):
        load_predictions(broken)
    not_list = tmp_path / "dict.json"
    not_list.write_text(json.dumps({"image_id": 1}))
    with pytest.raises(ValueError, match="dict.json"):
        load_predictions(not_list)


def test_empty_results_give_zeros(gt_path, capsys):
    stats = evaluate_coco(gt_path, [])
    out = capsys.readouterr().out
    assert "No detections" in out
    for iou_type in ("bbox", "segm"):
        assert stats[iou_type]["AP"] == 0.0
        assert stats[iou_type]["AR100"] == 0.0
        assert stats[iou_type]["APl"] == -1.0  # no large ground truth
    assert stats.num_results == 0


def test_unknown_image_ids_are_named(gt_path):
    stray = result(1, 3, (0, 5, 0, 5), 0.5)
    stray["image_id"] = 99
    results = perfect_results() + [stray]
    with pytest.raises(ValueError, match="99"):
        evaluate_coco(gt_path, results, print_summary=False)


def test_unknown_category_ids_are_named(gt_path):
    results = perfect_results()
    results[0]["category_id"] = 1  # a contiguous label instead of the data set's id
    with pytest.raises(ValueError, match=r"\[1\]"):
        evaluate_coco(gt_path, results, print_summary=False)


def test_segm_needs_segmentation(gt_path):
    results = [{k: v for k, v in r.items() if k != "segmentation"} for r in perfect_results()]
    with pytest.raises(ValueError, match="segmentation"):
        evaluate_coco(gt_path, results, print_summary=False)
    stats = evaluate_coco(gt_path, results, iou_types=("bbox",), print_summary=False)
    assert stats["bbox"]["AP"] == pytest.approx(1.0)


def test_per_class_table_and_csv(gt_path, tmp_path):
    results = with_replaced(perfect_results(), 3, (5, 25, 5, 29))
    stats = evaluate_coco(gt_path, results, print_summary=False)
    tables = per_class_tables(stats)
    assert set(tables) == {"bbox", "segm"}
    for rows in tables.values():
        assert [(r.category_id, r.name) for r in rows] == [(3, "cat"), (5, "dog"), (7, "car")]
        dog = rows[1]
        assert (dog.AP, dog.AP50, dog.AP75) == pytest.approx((0.3, 1.0, 0.0))
        assert rows[0].AP == pytest.approx(1.0)
    text = format_per_class_table(tables)
    assert "dog" in text and "segm AP50" in text and "30.0" in text
    path = save_per_class_csv(tmp_path / "per_class.csv", tables)
    lines = path.read_text().splitlines()
    assert lines[0].split(",") == [
        "category_id",
        "name",
        "bbox_AP",
        "bbox_AP50",
        "bbox_AP75",
        "segm_AP",
        "segm_AP50",
        "segm_AP75",
    ]
    dog_row = lines[2].split(",")
    assert dog_row[:2] == ["5", "dog"]
    assert [float(v) for v in dog_row[2:]] == pytest.approx([0.3, 1.0, 0.0] * 2)


def test_per_class_ap_is_nan_without_ground_truth(tmp_path):
    data = json.loads(write_ground_truth(tmp_path).read_text())
    data["categories"].append({"id": 9, "name": "bus", "supercategory": "vehicle"})
    path = tmp_path / "with_bus.json"
    path.write_text(json.dumps(data))
    stats = evaluate_coco(path, perfect_results(), iou_types=("bbox",), print_summary=False)
    rows = {row.category_id: row for row in per_class_ap(stats.evaluators["bbox"])}
    assert math.isnan(rows[9].AP) and rows[9].name == "bus"
    assert "nan" in format_per_class_table({"bbox": list(rows.values())})
