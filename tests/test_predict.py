"""The batched model runner and image files -> the reference's JSON entries: image modes,
masks pasted where they belong, batching, unreadable files, and the evaluation runner's COCO
results (an oracle scores 1.0; eval and infer share the post-processing)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf
from fake_models import FixedDetections
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskspine.data.shapes import ShapesSpec, write_shapes_split
from maskspine.predict import pixel_batches, predict_images, read_images, run_detections

SMALL_SHAPES = ShapesSpec(min_image_size=64, max_image_size=96, min_shape_size=16, max_shapes=3)


def _pixels(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture
def config(inference_config):
    return inference_config


# --------------------------------------------------------------------------- image files


def test_every_image_mode_gives_the_pixels_of_its_rgb_version(tmp_path, config):
    """Grayscale, RGBA (alpha dropped), palette and JPEG files give the network input of the
    same picture converted to RGB by PIL (the independent reference), the JPEG decoded as PIL
    decodes it."""
    rgb = Image.fromarray(_pixels(40, 60))
    variants = {
        "gray.png": rgb.convert("L"),
        "rgba.png": rgb.convert("RGBA"),
        "palette.png": rgb.convert("P"),
    }
    for name, image in variants.items():
        image.save(tmp_path / name)
        image.convert("RGB").save(tmp_path / f"reference_{name}")
    rgb.save(tmp_path / "photo.jpg", quality=95)
    paths = [tmp_path / name for name in variants] + [tmp_path / "photo.jpg"]
    references = [tmp_path / f"reference_{name}" for name in variants]
    decoded_jpeg = Image.open(tmp_path / "photo.jpg").convert("RGB")
    decoded_jpeg.save(tmp_path / "reference_photo.png")
    references.append(tmp_path / "reference_photo.png")

    failures: list = []
    pixels = [
        (np.int64(i), image)
        for i, (_, image) in enumerate(read_images(paths + references, failures))
    ]
    batches = list(pixel_batches(lambda: iter(pixels), config, len(paths) * 2))
    assert not failures and len(batches) == 1
    images = batches[0]["images"].numpy()
    for index in range(len(paths)):
        ours, reference = images[index], images[index + len(paths)]
        np.testing.assert_array_equal(ours, reference)  # JPEG too: PIL's decoder is ours
    info = batches[0]["image_info"].numpy()
    np.testing.assert_allclose(info[:, 0], [[40, 60]] * len(info))


def test_masks_and_boxes_land_at_the_right_place_in_the_original_image(tmp_path, config):
    """A 64 x 32 image in a 128 x 128 input is scaled by exactly 2: a box at input pixels
    (y 20..60, x 10..50) with a constant mask is the original rectangle y 10..30, x 5..25."""
    Image.fromarray(_pixels(64, 32)).save(tmp_path / "tall.png")
    mask_size = 28
    model = FixedDetections(
        boxes=[[20, 10, 60, 50], [0, 0, 8, 8], [40, 40, 80, 60], [1, 1, 2, 2]],
        scores=[0.6, 0.9, 0.3, 0.99],
        classes=[3, 1, 2, 0],  # the last is padding (class 0)
        masks=np.ones((4, mask_size, mask_size)),
        num_detections=3,
    )
    entries, failures = predict_images(model, config, [tmp_path / "tall.png"])
    assert failures == []
    entry = entries[str(tmp_path / "tall.png")]
    assert (entry["height"], entry["width"]) == (64, 32)
    scores = [p["score"] for p in entry["predictions"]]
    assert scores == pytest.approx([0.9, 0.6, 0.3])  # sorted, padding left out

    best, box = entry["predictions"][0], entry["predictions"][1]
    assert best["class"] == {"label": 0, "category_id": 11, "name": config.class_names[0]}
    assert box["class"] == {"label": 2, "category_id": 33, "name": config.class_names[2]}
    assert box["bbox"] == pytest.approx(
        {"x_min": 5.0, "y_min": 10.0, "width": 20.0, "height": 20.0}
    )
    expected = np.zeros((64, 32), np.uint8)
    expected[10:30, 5:25] = 1
    rle = dict(box["mask"], counts=box["mask"]["counts"].encode())
    np.testing.assert_array_equal(mask_utils.decode(rle), expected)
    # The third box reaches past the image's right edge (x 40..60 -> 20..30 of 32): clipped.
    third = entry["predictions"][2]["bbox"]
    assert third == pytest.approx({"x_min": 20.0, "y_min": 20.0, "width": 10.0, "height": 20.0})


def test_a_config_without_category_ids_numbers_its_classes_and_score_threshold(tmp_path, config):
    config.category_ids = []
    Image.fromarray(_pixels(50, 50)).save(tmp_path / "a.png")
    model = FixedDetections(
        boxes=[[10, 10, 40, 40], [20, 20, 30, 30]],
        scores=[0.8, 0.2],
        classes=[1, 2],
        masks=np.ones((2, 28, 28)),
    )
    entries, _ = predict_images(model, config, [tmp_path / "a.png"], score_threshold=0.5)
    (entry,) = entries.values()
    # the one rule (as export and eval): classes numbered 1..K in coco_classes order
    assert [p["class"]["category_id"] for p in entry["predictions"]] == [1]


def test_unreadable_files_are_reported_and_skipped(tmp_path, config):
    Image.fromarray(_pixels(30, 40)).save(tmp_path / "good.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    Image.fromarray(_pixels(30, 40, 1)).save(tmp_path / "z.jpg")
    full = tmp_path / "truncated.png"
    Image.fromarray(_pixels(80, 80, 2)).save(full)
    full.write_bytes(full.read_bytes()[:200])
    model = FixedDetections([[0, 0, 10, 10]], [0.9], [1], np.ones((1, 28, 28)))
    entries, failures = predict_images(model, config, sorted(tmp_path.iterdir()))
    assert sorted(entries) == [str(tmp_path / "good.png"), str(tmp_path / "z.jpg")]
    assert sorted(path for path, _ in failures) == [
        str(tmp_path / "broken.jpg"),
        str(tmp_path / "truncated.png"),
    ]
    assert all("BytesIO" not in reason for _, reason in failures)


def test_batches_keep_one_shape_and_the_order(tmp_path, config):
    paths = []
    for index in range(5):
        path = tmp_path / f"{index}.png"
        Image.fromarray(_pixels(20 + 10 * index, 40, index)).save(path)
        paths.append(path)
    model = FixedDetections([[0, 0, 10, 10]], [0.9], [1], np.ones((1, 28, 28)))
    entries, _ = predict_images(model, config, paths, batch_size=2)
    assert list(entries) == [str(p) for p in paths]
    assert [e["height"] for e in entries.values()] == [20, 30, 40, 50, 60]
    assert model.traces == 1 and model.batch_sizes == [2]  # the last batch of 1 padded to 2


def test_run_detections_yields_per_image_values_without_ground_truth(config):
    batch = {
        "images": tf.zeros([3, 128, 128, 3]),
        "image_info": tf.tile(
            tf.constant([[[10, 10], [10, 10], [1, 1], [0, 0]]], tf.float32), [3, 1, 1]
        ),
        "image_id": tf.constant([7, 8, 9], tf.int64),
        "gt_boxes": tf.zeros([3, 2, 4]),
    }
    model = FixedDetections([[0, 0, 5, 5]], [0.5], [1], np.ones((1, 28, 28)))
    yielded = list(run_detections(model, [batch]))
    assert [int(values["image_id"]) for values, _ in yielded] == [7, 8, 9]
    assert all("gt_boxes" not in values for values, _ in yielded)
    assert yielded[0][1]["detection_boxes"].shape == (1, 4)


# --------------------------------------------------------------------------- eval runner


class OracleModel:
    """Returns, batch after batch, the ground truth of an evaluation dataset as detections
    (score 1), read from a queue through `tf.py_function`."""

    def __init__(self, batches: list[dict[str, np.ndarray]]):
        self.queue = list(batches)

    def _next(self):
        batch = self.queue.pop(0)
        classes = np.maximum(batch["gt_classes"], 0).astype(np.int32)
        valid = classes > 0
        return (
            batch["gt_boxes"].astype(np.float32),
            valid.astype(np.float32),
            classes,
            valid.sum(axis=1).astype(np.int32),
            batch["gt_masks"].astype(np.float32),
        )

    def __call__(self, inputs, training=False):
        outputs = tf.py_function(
            self._next, [], [tf.float32, tf.float32, tf.int32, tf.int32, tf.float32]
        )
        names = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
        result = dict(zip(names, outputs[:4]))
        result["detection_masks"] = outputs[4]
        return result


def test_ground_truth_as_predictions_scores_ap_1_with_pycocotools(tmp_path, tiny_config):
    from maskspine.data import build_dataset
    from maskspine.evaluation import evaluate_coco
    from maskspine.evaluation.runner import predict_coco_results

    labels = write_shapes_split(tmp_path / "val", 5, seed=3, split_index=1, spec=SMALL_SHAPES)
    config = dataclasses.replace(tiny_config, mask_crop_size=112, num_gts=8)
    config.coco_classes = "from_data"
    dataset = build_dataset(
        config, tmp_path / "val", training=False, batch_size=2, data_dir=tmp_path / "cache"
    )
    batches = []
    for batch in dataset:
        arrays = {key: value.numpy() for key, value in batch.items()}
        missing = 2 - len(arrays["images"])  # the runner pads the last batch to 2 images
        batches.append({k: np.concatenate([v] + [v[:1]] * missing) for k, v in arrays.items()})
    results = predict_coco_results(
        OracleModel(batches), dataset, [1, 2, 3], progress=False, mask_threshold=0.5
    )
    coco = COCO(str(labels))
    assert len(results) == len(coco.getAnnIds())
    assert {r["image_id"] for r in results} == set(coco.getImgIds())
    stats = evaluate_coco(coco, results, print_summary=False)
    assert stats["bbox"]["AP"] == pytest.approx(1.0)
    # Masks cropped at 112 x 112 per box and pasted back match at IoU >= .95.
    assert stats["segm"]["AP"] == pytest.approx(1.0)

    # Independent check of the masks: each pasted mask's IoU with its ground truth.
    for record in results:
        best = 0.0
        for annotation in coco.loadAnns(coco.getAnnIds(imgIds=record["image_id"])):
            rle = coco.annToRLE(annotation)
            iou = mask_utils.iou([record["segmentation"]], [rle], [0])[0, 0]
            best = max(best, float(iou))
        assert best >= 0.95


def test_eval_and_infer_share_post_processing(tmp_path, tiny_config):
    """The same images through `predict_images` (files) and `predict_coco_results` (the
    prepared data set) give the same boxes, scores and RLE masks."""
    from maskspine.data import build_dataset
    from maskspine.evaluation.runner import predict_coco_results
    from maskspine.modeling.factory import build_mask_rcnn

    labels = write_shapes_split(tmp_path / "val", 3, seed=4, split_index=1, spec=SMALL_SHAPES)
    config = dataclasses.replace(
        tiny_config, coco_classes=["background", "circle", "square", "triangle"]
    )
    config.category_ids = [1, 2, 3]
    config.test_batch_size = 3
    model = build_mask_rcnn(config)
    dataset = build_dataset(config, tmp_path / "val", training=False, data_dir=tmp_path / "c")
    coco_results = predict_coco_results(model, dataset, config.category_ids, progress=False)
    images = {i["file_name"]: i["id"] for i in json.loads(labels.read_text())["images"]}
    entries, failures = predict_images(
        model, config, [tmp_path / "val" / "data" / name for name in images]
    )
    assert not failures
    from_json = []
    for path, entry in entries.items():
        image_id = images[path.rsplit("/", 1)[-1]]
        for p in entry["predictions"]:
            box = p["bbox"]
            from_json.append(
                (
                    image_id,
                    p["class"]["category_id"],
                    round(p["score"], 6),
                    tuple(round(box[k], 3) for k in ("x_min", "y_min", "width", "height")),
                    p["mask"]["counts"],
                )
            )
    from_eval = [
        (
            r["image_id"],
            r["category_id"],
            round(r["score"], 6),
            tuple(round(v, 3) for v in r["bbox"]),
            r["segmentation"]["counts"],
        )
        for r in coco_results
    ]
    assert len(from_eval) > 0
    assert sorted(from_json) == sorted(from_eval)


def test_per_class_ap_from_the_runner_matches_pycocotools_per_category(tmp_path):
    """`evaluate_results` writes per-class AP equal to COCOeval restricted to each category."""
    from maskspine.evaluation.runner import evaluate_results

    labels = write_shapes_split(tmp_path / "val", 4, seed=5, split_index=1, spec=SMALL_SHAPES)
    coco = COCO(str(labels))
    rng = np.random.default_rng(0)
    results = []
    for annotation in coco.loadAnns(coco.getAnnIds()):
        x, y, w, h = annotation["bbox"]
        shift = rng.uniform(-3, 3, 2)
        results.append(
            {
                "image_id": annotation["image_id"],
                "category_id": annotation["category_id"],
                "bbox": [x + shift[0], y + shift[1], w, h],
                "score": float(rng.uniform(0.1, 1)),
                "segmentation": annotation["segmentation"],
            }
        )
    report = evaluate_results(results, labels, output_dir=tmp_path / "out", print_summary=False)
    rows = {row.category_id: row for row in report.per_class["bbox"]}
    for category_id in coco.getCatIds():
        evaluator = COCOeval(
            coco,
            coco.loadRes([{k: v for k, v in r.items() if k != "segmentation"} for r in results]),
            "bbox",
        )
        evaluator.params.catIds = [category_id]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        assert rows[category_id].AP == pytest.approx(evaluator.stats[0], abs=1e-9)
        assert rows[category_id].AP50 == pytest.approx(evaluator.stats[1], abs=1e-9)
    csv_lines = (tmp_path / "out" / "per_class_ap.csv").read_text().splitlines()
    assert csv_lines[0].startswith("category_id,name,bbox_AP")
    assert len(csv_lines) == 1 + len(coco.getCatIds())
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["bbox"]["AP"] == pytest.approx(report.stats["bbox"]["AP"])


def test_eval_data_whose_ids_are_not_the_configs_is_one_clear_error(tmp_path, tiny_config):
    # The one category-id rule: a config without category_ids numbers its classes 1..K;
    # data with other ids cannot be scored against them.
    from maskspine.errors import EvaluationError
    from maskspine.evaluation.runner import evaluation_data

    labels = write_shapes_split(tmp_path / "val", 2, seed=6, split_index=1, spec=SMALL_SHAPES)
    data = json.loads(labels.read_text())
    for record in data["categories"]:
        record["id"] += 10
    for record in data["annotations"]:
        record["category_id"] += 10
    labels.write_text(json.dumps(data))
    config = dataclasses.replace(
        tiny_config, coco_classes=["background", "circle", "square", "triangle"], category_ids=[]
    )
    with pytest.raises(EvaluationError, match=r"category ids \[1, 2, 3\].*\[11, 12, 13\]"):
        evaluation_data(config, tmp_path / "val", data_dir=tmp_path / "cache")
    config.category_ids = [11, 12, 13]
    assert evaluation_data(config, tmp_path / "val", data_dir=tmp_path / "cache").category_ids == [
        11,
        12,
        13,
    ]
