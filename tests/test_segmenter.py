"""The Python entry point (`maskspine.load`, `Segmenter`): paths, arrays and folders in;
per image class names, scores, boxes in the image's own pixels and full-size masks out
(checked against a fake model whose detections are known), RLE on request, drawing, and the
same predictions as the JSON that `maskspine infer` writes."""

from __future__ import annotations

import gc
import os
import weakref

import numpy as np
import pytest
from fake_models import FixedDetections
from model_fixtures import REPO, TINY_OVERRIDES, write_run
from PIL import Image
from pycocotools import mask as mask_utils

import maskspine
from maskspine.errors import DataError
from maskspine.predict import predict_function, predict_images
from maskspine.segmenter import ImagePrediction, Segmenter


@pytest.fixture
def config(inference_config):
    return inference_config


def _fake():
    """In input pixels (128 x 128): box (y 20..60, x 10..50) class 3 score 0.6 and box
    (y 0..8, x 0..8) class 1 score 0.9, both with full masks; then a padding row."""
    return FixedDetections(
        boxes=[[20, 10, 60, 50], [0, 0, 8, 8], [1, 1, 2, 2]],
        scores=[0.6, 0.9, 0.99],
        classes=[3, 1, 0],
        masks=np.ones((3, 28, 28)),
    )


def _tall(seed=0):
    """64 x 32 pixels: in the 128 x 128 input, scaled by exactly 2."""
    return np.random.default_rng(seed).integers(0, 256, (64, 32, 3), np.uint8)


def test_boxes_and_masks_are_in_each_images_own_pixels(config, tmp_path):
    pixels = _tall()
    Image.fromarray(pixels).save(tmp_path / "tall.png")
    segmenter = Segmenter(_fake(), config)
    from_file, from_array = segmenter.predict([tmp_path / "tall.png", pixels])
    for result in (from_file, from_array):
        assert isinstance(result, ImagePrediction) and (result.height, result.width) == (64, 32)
        assert result.class_names == [config.class_names[0], config.class_names[2]]
        assert list(result.labels) == [0, 2] and result.category_ids == [11, 33]
        np.testing.assert_allclose(result.scores, [0.9, 0.6])
        np.testing.assert_allclose(result.boxes, [[0, 0, 4, 4], [5, 10, 25, 30]])  # xyxy
        expected = np.zeros((64, 32), bool)
        expected[10:30, 5:25] = True
        assert result.masks.shape == (2, 64, 32) and result.masks.dtype == bool
        np.testing.assert_array_equal(result.masks[1], expected)
        assert result.instances()[1]["class_name"] == config.class_names[2]
    assert from_file.source == str(tmp_path / "tall.png") and from_array.source == "array[1]"
    (coco,) = segmenter.predict(pixels, box_format="xywh", score_threshold=0.7)
    assert coco.class_names == [config.class_names[0]]
    np.testing.assert_allclose(coco.boxes, [[0, 0, 4, 4]])
    (rle,) = segmenter.predict(pixels, rle=True)
    assert rle.masks is None
    decoded = mask_utils.decode(dict(rle.rles[1], counts=rle.rles[1]["counts"].encode()))
    np.testing.assert_array_equal(decoded.astype(bool), expected)


def test_folders_batches_gray_and_bad_arrays(config, tmp_path):
    for index in range(3):
        Image.fromarray(_tall(index)).save(tmp_path / f"{index}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    segmenter = Segmenter(_fake(), config)
    results = segmenter.predict(tmp_path)
    assert [r.source for r in results] == [str(tmp_path / f"{i}.png") for i in range(3)]
    batch = segmenter.predict(np.stack([_tall(0), _tall(1)]))
    assert [r.source for r in batch] == ["array[0]", "array[1]"]
    (gray,) = segmenter.predict(_tall()[..., 0])
    assert (gray.height, gray.width) == (64, 32)
    with pytest.raises(DataError, match=r"\[0, 255\].*by 255"):
        segmenter.predict(_tall() / 255.0 - 0.5)
    with pytest.raises(DataError, match="height, width, 3"):
        segmenter.predict(np.zeros((4, 5, 6, 7, 8), np.uint8))
    with pytest.raises(FileNotFoundError):
        segmenter.predict(tmp_path / "absent.png")


def test_draw_gives_the_picture_with_the_masks_tinted(config):
    pixels = np.zeros((64, 32, 3), np.uint8)
    segmenter = Segmenter(_fake(), config)
    (result,) = segmenter.predict(pixels)
    drawn = segmenter.draw(pixels, result, score_threshold=0.5)
    assert drawn.shape == (64, 32, 3) and drawn.dtype == np.uint8
    assert drawn[15:25, 8:22].mean() > 40  # inside the class-3 mask: coloured
    assert drawn[50:, :].mean() < 5  # outside every mask and box: the black image
    assert np.array_equal(
        segmenter.draw(pixels, result.to_json(segmenter.class_names, segmenter.category_ids)), drawn
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from maskspine.config import load_config

    root = tmp_path_factory.mktemp("segmenter")
    config = load_config(
        os.path.join(REPO, "configs", "shapes_demo.yaml"),
        [*TINY_OVERRIDES, "test_cfg.rcnn.max_per_img=10", "test_cfg.rcnn.score_thr=0.0"],
    )
    write_run(root / "run", config)
    Image.fromarray(_tall()).save(root / "tall.png")
    return root


def test_load_a_run_gives_the_predictions_infer_writes(tiny_run):
    segmenter = maskspine.load(tiny_run / "run")
    (result,) = segmenter.predict(tiny_run / "tall.png", rle=True)
    entries, _ = predict_images(segmenter.model, segmenter.config, [tiny_run / "tall.png"])
    entry = entries[str(tiny_run / "tall.png")]
    assert len(entry["predictions"]) == len(result) > 0
    ours = result.to_json(segmenter.class_names, segmenter.category_ids)
    for mine, theirs in zip(ours["predictions"], entry["predictions"], strict=True):
        assert mine["class"] == theirs["class"] and mine["mask"] == theirs["mask"]
        assert mine["score"] == pytest.approx(theirs["score"])
        assert mine["bbox"] == pytest.approx(theirs["bbox"], abs=1e-4)
    few = maskspine.load(tiny_run / "run", test_cfg__rcnn__max_per_img=3, precision="bfloat16")
    assert few.model.precision == "bfloat16" and few.config.test_cfg.rcnn.max_per_img == 3
    assert 0 < len(few.predict(tiny_run / "tall.png")[0]) <= 3


def test_the_predict_cache_lets_models_go(config):
    # Before: the cache's values closed over their keys, so every model ever run stayed.
    model = _fake()
    Segmenter(model, config).predict(_tall())
    assert predict_function(model) is predict_function(model)  # cached while alive
    reference = weakref.ref(model)
    del model
    gc.collect()
    assert reference() is None
