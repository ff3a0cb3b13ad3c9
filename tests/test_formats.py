"""The inference JSON file: round trip in the reference's layout, format errors, reading an
entry back as arrays."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from test_postprocess import make_image_info, model_outputs_for_one_image

from maskspine.errors import InferenceError
from maskspine.formats import (
    entry_instances,
    load_inference_json,
    save_inference_json,
    to_coco_results,
    to_reference_json,
)
from maskspine.postprocess import detections_to_instances


def test_json_round_trip_and_format_errors(tmp_path):
    entries = {
        "a.jpg": {
            "height": 2,
            "width": 3,
            "predictions": [
                {
                    "bbox": {"x_min": 0.0, "y_min": 0.0, "width": 1.0, "height": 1.0},
                    "class": {"label": 0, "category_id": 1, "name": "x"},
                    "mask": {"size": [2, 3], "counts": "0"},
                    "score": 0.5,
                }
            ],
        }
    }
    path = save_inference_json(tmp_path / "p.json", entries)
    assert load_inference_json(path) == entries
    assert path.read_text().startswith('{\n "a.jpg": {\n  "height"')  # the reference's indent
    (tmp_path / "coco.json").write_text(json.dumps([{"image_id": 1}]))
    with pytest.raises(InferenceError, match="maskspine infer"):
        load_inference_json(tmp_path / "coco.json")
    (tmp_path / "bad.json").write_text(json.dumps({"a.jpg": {"height": 1}}))
    with pytest.raises(InferenceError, match="a.jpg"):
        load_inference_json(tmp_path / "bad.json")


def test_an_entry_reads_back_as_yxyx_boxes_and_full_masks():
    mask = np.zeros((20, 30), np.uint8)
    mask[5:15, 4:24] = 1
    counts = mask_utils.encode(np.asfortranarray(mask))["counts"].decode()
    entry = {
        "height": 20,
        "width": 30,
        "predictions": [
            {
                "bbox": {"x_min": 4.0, "y_min": 5.0, "width": 20.0, "height": 10.0},
                "class": {"label": 2, "category_id": 7, "name": "bar"},
                "mask": {"size": [20, 30], "counts": counts},
                "score": 0.8,
            },
            {
                "bbox": {"x_min": 0.0, "y_min": 0.0, "width": 1.0, "height": 1.0},
                "class": {"label": 0, "category_id": 1, "name": "dot"},
                "mask": {"size": [20, 30], "counts": counts},
                "score": 0.1,
            },
        ],
    }
    found = entry_instances(entry, score_threshold=0.5)
    np.testing.assert_allclose(found["boxes"], [[5, 4, 15, 24]])  # y1, x1, y2, x2 by hand
    np.testing.assert_array_equal(found["masks"][0], mask)
    assert found["names"] == ["bar"] and found["labels"] == [3]
    small = mask_utils.encode(np.asfortranarray(mask[:10]))
    entry["predictions"][0]["mask"] = {"size": [10, 30], "counts": small["counts"].decode()}
    with pytest.raises(InferenceError, match="size"):
        entry_instances(entry)
    entry["predictions"][0]["mask"] = {"size": [10, 30], "counts": counts}  # runs too long
    with pytest.raises(InferenceError, match="not a COCO RLE"):
        entry_instances(entry)


def test_to_reference_json_schema():
    info = make_image_info((60, 70), (1.0, 1.0))
    instances = detections_to_instances(model_outputs_for_one_image(), info)
    entry = to_reference_json(
        instances[::-1], (60, 70), class_names=["cat", "car"], category_ids=[3, 7]
    )
    entry = json.loads(json.dumps(entry))  # survives JSON unchanged
    assert set(entry) == {"height", "width", "predictions"}
    assert (entry["height"], entry["width"]) == (60, 70)
    scores = [prediction["score"] for prediction in entry["predictions"]]
    assert scores == sorted(scores, reverse=True)
    first = entry["predictions"][0]
    assert set(first) == {"bbox", "class", "mask", "score"}
    assert set(first["bbox"]) == {"x_min", "y_min", "width", "height"}
    assert set(first["class"]) == {"label", "category_id", "name"}
    assert set(first["mask"]) == {"size", "counts"}
    assert all(isinstance(value, float) for value in first["bbox"].values())
    assert isinstance(first["class"]["label"], int) and isinstance(first["score"], float)
    assert isinstance(first["mask"]["counts"], str)
    # The 0.9 detection: class 1 -> label 0, "cat", id 3; box yxyx (0, 0, 30, 30).
    assert first["class"] == {"label": 0, "category_id": 3, "name": "cat"}
    assert first["bbox"] == {"x_min": 0.0, "y_min": 0.0, "width": 30.0, "height": 30.0}
    second = entry["predictions"][1]
    assert second["class"] == {"label": 1, "category_id": 7, "name": "car"}
    assert second["bbox"] == {"x_min": 20.0, "y_min": 10.0, "width": 40.0, "height": 40.0}
    for prediction in entry["predictions"]:
        assert prediction["mask"]["size"] == [60, 70]
        assert mask_utils.decode(prediction["mask"]).shape == (60, 70)


def test_class_out_of_range_is_an_error_naming_the_class():
    info = make_image_info((60, 70), (1.0, 1.0))
    instances = detections_to_instances(model_outputs_for_one_image(), info)
    with pytest.raises(ValueError, match="class 2"):
        to_reference_json(instances, (60, 70), ["cat"], [3])
    with pytest.raises(ValueError, match="aligned"):
        to_reference_json(instances, (60, 70), ["cat", "car"], [3])


def test_to_coco_results():
    info = make_image_info((60, 70), (1.0, 1.0))
    instances = detections_to_instances(model_outputs_for_one_image(), info)
    results = to_coco_results(instances, image_id=42, category_ids=[3, 7])
    json.dumps(results)
    assert [r["category_id"] for r in results] == [3, 7, 7]
    assert all(r["image_id"] == 42 for r in results)
    assert results[1]["bbox"] == [20.0, 10.0, 40.0, 40.0]
    assert results[1]["score"] == pytest.approx(0.6)
    assert mask_utils.area(results[1]["segmentation"]) == 40 * 40
    with pytest.raises(ValueError, match="class 2"):
        to_coco_results(instances, 42, [3])
