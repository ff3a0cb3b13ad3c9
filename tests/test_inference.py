"""Inference over image files and the evaluation runner: folders, image modes, the JSON,
masks pasted where they belong, batching, drawing, and COCO results an oracle scores 1.0 on."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskspine.data.shapes import ShapesSpec, write_shapes_split
from maskspine.inference import (
    InferenceError,
    draw_predictions,
    find_images,
    image_batches,
    load_inference_json,
    predict_images,
    run_detections,
    save_inference_json,
)

SMALL_SHAPES = ShapesSpec(min_image_size=64, max_image_size=96, min_shape_size=16, max_shapes=3)


def _pixels(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


class FakeModel:
    """Returns the same detections for every image: boxes [D, 4] yxyx input pixels, scores,
    classes (0 = padding), masks [D, M, M]. Counts its traces and the batch sizes it saw."""

    def __init__(self, boxes, scores, classes, masks, num_detections=None):
        self.boxes = np.asarray(boxes, np.float32)
        self.scores = np.asarray(scores, np.float32)
        self.classes = np.asarray(classes, np.int32)
        self.masks = np.asarray(masks, np.float32)
        self.num = len(self.boxes) if num_detections is None else num_detections
        self.traces = 0
        self.batch_sizes = []

    def __call__(self, inputs, training=False):
        self.traces += 1
        images = inputs["images"]
        self.batch_sizes.append(images.shape[0])
        batch = tf.shape(images)[0]

        def tiled(array):
            tensor = tf.constant(array)
            return tf.tile(tensor[None], [batch] + [1] * array.ndim)

        return {
            "detection_boxes": tiled(self.boxes),
            "detection_scores": tiled(self.scores),
            "detection_classes": tiled(self.classes),
            "num_detections": tf.fill([batch], tf.constant(self.num, tf.int32)),
            "detection_masks": tiled(self.masks),
        }


@pytest.fixture
def config(tiny_config):
    config = dataclasses.replace(tiny_config)
    config.category_ids = [11, 22, 33]
    config.test_batch_size = 2
    return config


# --------------------------------------------------------------------------- folders


def test_find_images_takes_jpeg_and_png_in_the_folder_root_only(tmp_path):
    for name in ("b.jpg", "a.PNG", "c.jpeg", "d.JPG", "notes.txt", "e.gif", ".hidden.png"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f.png").write_bytes(b"x")
    (tmp_path / "dir.png").mkdir()  # a folder with an image's name
    found = [path.name for path in find_images(tmp_path)]
    assert found == ["a.PNG", "b.jpg", "c.jpeg", "d.JPG"]
    assert find_images(tmp_path / "b.jpg") == [tmp_path / "b.jpg"]
    with pytest.raises(FileNotFoundError, match="absent"):
        find_images(tmp_path / "absent")


def test_a_folder_without_images_is_an_error_naming_it(tmp_path):
    (tmp_path / "readme.txt").write_text("no images")
    with pytest.raises(InferenceError, match="no JPEG or PNG"):
        find_images(tmp_path)


def test_every_image_mode_gives_the_pixels_of_its_rgb_version(tmp_path, config):
    """Grayscale, RGBA (alpha dropped), palette and JPEG files give the network input of the
    same picture converted to RGB by PIL (the independent reference)."""
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
    batches = list(image_batches(paths + references, config, len(paths) * 2, failures))
    assert not failures and len(batches) == 1
    images = batches[0]["images"].numpy()
    for index in range(len(paths)):
        ours, reference = images[index], images[index + len(paths)]
        if paths[index].suffix == ".jpg":
            # TF's and PIL's JPEG decoders differ by about one level (1 / 57 here) on noise.
            assert np.mean(np.abs(ours - reference)) < 0.05
        else:
            np.testing.assert_array_equal(ours, reference)
    info = batches[0]["image_info"].numpy()
    np.testing.assert_allclose(info[:, 0], [[40, 60]] * len(info))


# --------------------------------------------------------------------------- the JSON


def test_masks_and_boxes_land_at_the_right_place_in_the_original_image(tmp_path, config):
    """A 64 x 32 image in a 128 x 128 input is scaled by exactly 2: a box at input pixels
    (y 20..60, x 10..50) with a constant mask is the original rectangle y 10..30, x 5..25."""
    Image.fromarray(_pixels(64, 32)).save(tmp_path / "tall.png")
    mask_size = 28
    model = FakeModel(
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


def test_unknown_category_ids_and_score_threshold(tmp_path, config):
    config.category_ids = []
    Image.fromarray(_pixels(50, 50)).save(tmp_path / "a.png")
    model = FakeModel(
        boxes=[[10, 10, 40, 40], [20, 20, 30, 30]],
        scores=[0.8, 0.2],
        classes=[1, 2],
        masks=np.ones((2, 28, 28)),
    )
    entries, _ = predict_images(model, config, [tmp_path / "a.png"], score_threshold=0.5)
    (entry,) = entries.values()
    assert [p["class"]["category_id"] for p in entry["predictions"]] == ["unknown"]


def test_unreadable_files_are_reported_and_skipped(tmp_path, config):
    Image.fromarray(_pixels(30, 40)).save(tmp_path / "good.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    Image.fromarray(_pixels(30, 40, 1)).save(tmp_path / "z.jpg")
    full = tmp_path / "truncated.png"
    Image.fromarray(_pixels(80, 80, 2)).save(full)
    full.write_bytes(full.read_bytes()[:200])
    model = FakeModel([[0, 0, 10, 10]], [0.9], [1], np.ones((1, 28, 28)))
    entries, failures = predict_images(model, config, find_images(tmp_path))
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
    model = FakeModel([[0, 0, 10, 10]], [0.9], [1], np.ones((1, 28, 28)))
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
    model = FakeModel([[0, 0, 5, 5]], [0.5], [1], np.ones((1, 28, 28)))
    yielded = list(run_detections(model, [batch]))
    assert [int(values["image_id"]) for values, _ in yielded] == [7, 8, 9]
    assert all("gt_boxes" not in values for values, _ in yielded)
    assert yielded[0][1]["detection_boxes"].shape == (1, 4)


def test_json_round_trip_and_format_errors(tmp_path):
    entries = {
        "a.jpg": {
            "height": 2,
            "width": 3,
            "predictions": [
                {
                    "bbox": {"x_min": 0.0, "y_min": 0.0, "width": 1.0, "height": 1.0},
                    "class": {"label": 0, "category_id": "unknown", "name": "x"},
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


# --------------------------------------------------------------------------- drawing


def _entry(height: int, width: int) -> dict:
    mask = np.zeros((height, width), np.uint8)
    mask[5:15, 5:20] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {
        "height": height,
        "width": width,
        "predictions": [
            {
                "bbox": {"x_min": 5.0, "y_min": 5.0, "width": 15.0, "height": 10.0},
                "class": {"label": 1, "category_id": 2, "name": "square"},
                "mask": {"size": [height, width], "counts": rle["counts"].decode()},
                "score": 0.9,
            }
        ],
    }


def test_draw_predictions_writes_images_of_the_right_size(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    sizes = {"small.png": (60, 90), "large.jpg": (600, 500)}
    for name, (height, width) in sizes.items():
        Image.fromarray(_pixels(height, width)).save(images / name)
    entries = {str(images / name): _entry(*size) for name, size in sizes.items()}
    entries["elsewhere/missing.png"] = _entry(60, 90)
    entries[str(images / "small_again.png")] = _entry(70, 90)  # file absent
    written, failures = draw_predictions(entries, tmp_path / "out", score_threshold=0.5)
    assert sorted(p.name for p in written) == ["large.png", "small.png"]
    for name, (height, width) in sizes.items():
        # Small images are scaled by a whole factor to >= 480 px on the longer side.
        factor = max(1, math.ceil(480 / max(height, width)))
        with Image.open(tmp_path / "out" / (name.split(".")[0] + ".png")) as drawn:
            assert drawn.format == "PNG"
            assert drawn.size == (width * factor, height * factor)
    assert {key for key, _ in failures} == {
        "elsewhere/missing.png",
        str(images / "small_again.png"),
    }


def test_draw_finds_moved_images_by_name_and_checks_their_size(tmp_path):
    Image.fromarray(_pixels(60, 90)).save(tmp_path / "a.png")
    Image.fromarray(_pixels(61, 90)).save(tmp_path / "b.png")
    entries = {"/gone/a.png": _entry(60, 90), "/gone/b.png": _entry(60, 90)}
    written, failures = draw_predictions(entries, tmp_path / "out", images_dir=tmp_path)
    assert [p.name for p in written] == ["a.png"]
    assert failures[0][0] == "/gone/b.png" and "61x90" in failures[0][1]


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
    from maskspine.modeling.mask_rcnn import build_mask_rcnn

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
