"""The COCO error breakdown on hand-built mistakes, each kind in one category.

Ground truth (evaluation_fixtures): cat (3, animal) in image 1, car (7, vehicle) in images 1
and 3, dog (5, animal) in image 2. Predictions, with the area under each curve worked out by
hand (interpolated precision, 101 recall points; one TP ranked after one FP gives 1/2 at
every recall point, as does any curve reaching recall 1 at precision 1/2):

- cat: the perfect box (0.9) and a background box in image 2 that touches nothing (0.99):
  [FP, TP] everywhere -> C75..Oth = 1/2; BG (FPs removed) = 1; FN = 1.
- dog: a box at IoU 0.3 with its object (0.9), and a box exactly on the cat (0.95).
  C75 = C50 = 0 (no match at .5); Loc (IoU .1): [FP, TP] = 1/2; Sim: the cat is in dog's
  supercategory, so the cat box is ignored -> 1; Oth, BG, FN = 1.
- car: both perfect boxes (0.9, 0.8) and a box on the cat (0.95): [FP, TP, TP] -> precision
  2/3 at every recall point for C75..Sim (the cat is another supercategory); Oth = 1.
"""

import csv
import json

import numpy as np
import pytest
from evaluation_fixtures import OBJECTS, perfect_results, result, write_ground_truth
from PIL import Image

from maskspine.evaluation.analysis import ERROR_ROWS, analyze

CAT_RECT = OBJECTS[1][2]


def mistaken_results():
    return [
        result(1, 3, CAT_RECT, 0.9),
        result(2, 3, (30, 48, 5, 25), 0.99),  # background
        result(2, 5, (5, 25, 5, 17), 0.9),  # 20 x 12 inside the 20 x 40 dog: IoU 0.3
        result(1, 5, CAT_RECT, 0.95),  # dog on the cat: same supercategory
        result(1, 7, OBJECTS[2][2], 0.9),
        result(3, 7, OBJECTS[4][2], 0.8),
        result(1, 7, CAT_RECT, 0.95),  # car on the cat: other supercategory
    ]


EXPECTED = {
    3: [1 / 2, 1 / 2, 1 / 2, 1 / 2, 1 / 2, 1, 1],
    5: [0, 0, 1 / 2, 1, 1, 1, 1],
    7: [2 / 3, 2 / 3, 2 / 3, 2 / 3, 1, 1, 1],
}


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_error_breakdown_by_hand(tmp_path, iou_type):
    gt_path = write_ground_truth(tmp_path)
    summary = analyze(gt_path, mistaken_results(), tmp_path / "analysis", iou_type=iou_type)
    for category_id, expected in EXPECTED.items():
        got = [summary["per_class"][category_id][row] for row in ERROR_ROWS]
        assert got == pytest.approx(expected), category_id
    overall = [summary["overall"][row] for row in ERROR_ROWS]
    assert overall == pytest.approx(np.mean(list(EXPECTED.values()), axis=0))
    assert summary["per_class"][5]["name"] == "dog"


def test_files_and_csv_agree_with_the_numbers(tmp_path):
    gt_path = write_ground_truth(tmp_path)
    summary = analyze(gt_path, mistaken_results(), tmp_path / "analysis")
    folder = tmp_path / "analysis" / "bbox"
    names = {p.relative_to(folder).as_posix() for p in summary["files"]}
    assert {
        "pr_curves.csv",
        "pr_curves_overall.png",
        "pr_curves/0003_cat.png",
        "pr_curves/0005_dog.png",
        "pr_curves/0007_car.png",
        "error_breakdown.csv",
        "errors_overall_all.png",
        "errors/0003_cat.png",
        "errors/0005_dog.png",
        "errors/0007_car.png",
    } <= names
    for path in summary["files"]:
        assert path.is_file() and path.stat().st_size > 0
        if path.suffix == ".png":
            with Image.open(path) as image:
                image.verify()

    with open(summary["error_breakdown_csv"], newline="") as file:
        rows = list(csv.DictReader(file))
    dog_all = next(r for r in rows if r["category_id"] == "5" and r["area"] == "all")
    assert [float(dog_all[row]) for row in ERROR_ROWS] == pytest.approx(EXPECTED[5], abs=1e-6)
    overall = next(r for r in rows if r["scope"] == "overall" and r["area"] == "all")
    assert float(overall["Oth"]) == pytest.approx(summary["overall"]["Oth"], abs=1e-6)
    animal = next(r for r in rows if r["scope"] == "supercategory" and r["name"] == "animal")
    assert float(animal["Sim"]) == pytest.approx((1 / 2 + 1) / 2, abs=1e-6)

    # PR curve of the car at IoU .5: precision 2/3 at every recall point (see module doc).
    with open(summary["pr_curves_csv"], newline="") as file:
        pr_rows = list(csv.DictReader(file))
    car = [float(r["precision"]) for r in pr_rows if r["category_id"] == "7" and r["iou"] == "0.50"]
    assert len(car) == 101
    assert car == pytest.approx([2 / 3] * 101, abs=1e-6)


def test_curves_are_ordered_for_imperfect_predictions(tmp_path):
    gt_path = write_ground_truth(tmp_path)
    rng = np.random.default_rng(0)
    results = mistaken_results()
    for record in results:  # jitter the boxes a little
        record["bbox"] = [v + float(rng.uniform(-1.5, 1.5)) for v in record["bbox"]]
    summary = analyze(gt_path, results, tmp_path / "analysis")
    for values in [summary["overall"], *summary["per_class"].values()]:
        curve = [values[row] for row in ERROR_ROWS]
        assert all(a <= b + 1e-12 for a, b in zip(curve, curve[1:], strict=False)), curve
        assert curve[-1] == 1.0


def test_without_supercategories_sim_equals_oth(tmp_path):
    gt_path = write_ground_truth(tmp_path, supercategories=False)
    summary = analyze(gt_path, mistaken_results(), tmp_path / "analysis")
    for values in summary["per_class"].values():
        assert values["Sim"] == pytest.approx(values["Oth"])
    assert summary["per_class"][7]["Sim"] == pytest.approx(1.0)  # the car-on-cat is forgiven


def test_perfect_predictions_and_predictions_file(tmp_path):
    gt_path = write_ground_truth(tmp_path)
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps(perfect_results()))
    summary = analyze(gt_path, predictions, tmp_path / "analysis", iou_type="segm")
    assert [summary["overall"][row] for row in ERROR_ROWS] == pytest.approx([1.0] * 7)
    # No medium objects: that area has no curves and no plot, and NaN in the summary.
    assert np.isnan(summary["overall_by_area"]["medium"]["C50"])
    assert not (tmp_path / "analysis" / "segm" / "errors_overall_medium.png").exists()
