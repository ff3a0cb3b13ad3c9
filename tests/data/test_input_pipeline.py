"""tf.data pipelines: the batch contract, geometry by hand, augmentation consistency."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import tensorflow as tf
from coco_fixtures import SHAPE_COLOURS, make_config, write_labels
from PIL import Image, ImageDraw

from maskspine.data import DataError, build_dataset
from maskspine.data.pipeline import (
    _place,
    crop_masks_to_boxes,
    decode_image,
    denormalize_images,
    preprocess_image,
)

MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)


def batches(dataset) -> list[dict[str, np.ndarray]]:
    return [{key: value.numpy() for key, value in batch.items()} for batch in dataset]


def test_training_batch_obeys_the_contract(colour_folder, tmp_path):
    config = make_config(batch_size=2, num_gts=8, aug_scale_min=0.8, aug_scale_max=1.2)
    dataset = build_dataset(config, colour_folder, training=True, data_dir=tmp_path)
    spec = dataset.element_spec
    expected = {
        "images": ([2, 128, 128, 3], tf.float32),
        "image_info": ([2, 4, 2], tf.float32),
        "gt_boxes": ([2, 8, 4], tf.float32),
        "gt_classes": ([2, 8], tf.int32),
        "gt_is_crowd": ([2, 8], tf.bool),
        "gt_masks": ([2, 8, 28, 28], tf.uint8),
    }
    assert set(spec) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert spec[key].shape.as_list() == shape, key  # static shapes
        assert spec[key].dtype == dtype, key
    all_batches = batches(dataset)
    assert len(all_batches) == 2  # 4 images, batches of 2, last partial batch dropped
    for batch in all_batches:
        valid = batch["gt_classes"] > 0
        assert valid.sum(axis=1).tolist() == [3, 3]
        assert set(batch["gt_classes"][valid].tolist()) <= {1, 2, 3}
        assert (batch["gt_classes"][~valid] == -1).all()
        assert (batch["gt_boxes"][~valid] == -1).all()
        assert not batch["gt_is_crowd"][~valid].any()
        assert (batch["gt_masks"][~valid] == 0).all()
        assert set(np.unique(batch["gt_masks"]).tolist()) <= {0, 1}
        boxes = batch["gt_boxes"][valid]
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert boxes.min() >= 0 and boxes.max() <= 128


def test_evaluation_geometry_by_hand(messy_folder, tmp_path):
    config = make_config()
    dataset = build_dataset(config, messy_folder, training=False, data_dir=tmp_path)
    assert "image_id" in dataset.element_spec
    results = batches(dataset)
    # Every readable image, in labels.json order, with the data set's ids.
    assert [int(b["image_id"][0]) for b in results] == [101, 102, 103, 104, 105, 109]
    first = results[0]
    # a.png is 48 x 64: scale min(128/48, 128/64) = 2 -> 96 x 128, no offset.
    np.testing.assert_allclose(first["image_info"][0], [[48, 64], [96, 128], [2, 2], [0, 0]])
    # Annotation 2 has bbox (x, y, w, h) = (30, 5, 30, 15): yxyx (5, 30, 20, 60), times 2.
    np.testing.assert_allclose(first["gt_boxes"][0, 1], [10, 60, 40, 120])
    # Category ids 3, 7, 20 (with gaps) are labels 1, 2, 3; annotation 4 is a crowd cat.
    assert first["gt_classes"][0, :5].tolist() == [1, 2, 3, 1, -1]
    assert first["gt_is_crowd"][0, :5].tolist() == [False, False, False, True, False]
    # empty.png is black, 20 x 30 -> scale 128/30: 85 x 128, the rest padding (zeros).
    last = results[-1]
    np.testing.assert_allclose(last["image_info"][0, 1], [85, 128])
    np.testing.assert_allclose(last["images"][0, 10, 10], -MEAN / STD, rtol=1e-5)
    np.testing.assert_array_equal(last["images"][0, 100:, :], 0.0)
    assert (last["gt_classes"][0] == -1).all()


def test_stretching_without_keep_ratio_and_the_inference_preprocessing(messy_folder, tmp_path):
    config = make_config(keep_ratio=0, test_batch_size=1)
    first = batches(build_dataset(config, messy_folder, training=False, data_dir=tmp_path))[0]
    # a.png (48 x 64) stretched to 128 x 128: scales 128/48 and 128/64.
    np.testing.assert_allclose(
        first["image_info"][0], [[48, 64], [128, 128], [128 / 48, 2], [0, 0]], rtol=1e-6
    )
    np.testing.assert_allclose(first["gt_boxes"][0, 1], [5 * 128 / 48, 60, 20 * 128 / 48, 120])
    # The function inference uses gives the evaluation pipeline's images and image_info.
    encoded = tf.io.read_file(str(messy_folder / "data" / "a.png"))
    for keep_ratio in (0, 1):
        config = make_config(keep_ratio=keep_ratio)
        images, info = preprocess_image(decode_image(encoded), config)
        batch = batches(build_dataset(config, messy_folder, training=False, data_dir=tmp_path))[0]
        np.testing.assert_array_equal(images.numpy(), batch["images"][0])
        np.testing.assert_array_equal(info.numpy(), batch["image_info"][0])


def _flip_folder(folder):
    """60 x 60 black image: a red 5 x 5 block at rows 10-14, cols 5-9 and a green L."""
    canvas = np.zeros((60, 60, 3), np.uint8)
    canvas[10:15, 5:10] = (255, 0, 0)
    image = Image.fromarray(canvas)
    # L: the square x 30..50, y 30..50 without its top-right quarter (x 40..50, y 30..40).
    l_shape = [30.0, 30.0, 40.0, 30.0, 40.0, 40.0, 50.0, 40.0, 50.0, 50.0, 30.0, 50.0]
    ImageDraw.Draw(image).polygon(
        list(zip(l_shape[0::2], l_shape[1::2], strict=True)), fill=(0, 255, 0)
    )
    (folder / "data").mkdir(parents=True)
    image.save(folder / "data" / "flip.png")
    block = [5.0, 10.0, 10.0, 10.0, 10.0, 15.0, 5.0, 15.0]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [block],
         "bbox": [5, 10, 5, 5], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 2, "segmentation": [l_shape],
         "bbox": [30, 30, 20, 20], "iscrowd": 0},
    ]  # fmt: skip
    write_labels(
        folder,
        [{"id": 1, "file_name": "flip.png", "height": 60, "width": 60}],
        annotations,
        [{"id": 1, "name": "block"}, {"id": 2, "name": "ell"}],
    )


def test_flip_moves_boxes_masks_and_pixels_together(tmp_path):
    _flip_folder(tmp_path / "flip")
    config = make_config(img_height=120, img_width=120, divider=8, flip_ratio=1.0, batch_size=1)
    (batch,) = batches(build_dataset(config, tmp_path / "flip", training=True, data_dir=tmp_path))
    # Scale 2; the block's columns 5..10 flip to 50..55, i.e. 100..110 in the input.
    np.testing.assert_allclose(batch["gt_boxes"][0, 0], [20, 100, 30, 110])
    np.testing.assert_allclose(batch["gt_boxes"][0, 1], [60, 20, 100, 60])
    pixels = denormalize_images(batch["images"][0], config)
    np.testing.assert_array_equal(pixels[25, 105], [255, 0, 0])
    np.testing.assert_array_equal(pixels[25, 15], [0, 0, 0])
    # The block fills its box (bilinear sampling rounds the outermost corner cells).
    assert batch["gt_masks"][0, 0][1:-1, 1:-1].all()
    ell = batch["gt_masks"][0, 1]
    # Flipped, the L misses its top-left quarter instead of its top-right one.
    assert ell[3, 3] == 0 and ell[3, 24] == 1 and ell[24, 3] == 1 and ell[24, 24] == 1


@pytest.mark.parametrize("position", [(-300, 5), (5, -300), (500, 0), (-10, -20), (100, 100)])
def test_placing_keeps_what_falls_in_the_window(position):
    image = tf.reshape(tf.range(1, 1 + 200 * 150 * 1, dtype=tf.float32), [200, 150, 1])
    placed = _place(image, tf.constant(position, tf.int32), tf.constant([128, 96]), (128, 128))
    # Reference: paste into a large canvas with numpy, then cut the window and pad.
    canvas = np.zeros((1200, 1200, 1), np.float32)
    oy, ox = 500 + position[0], 500 + position[1]
    canvas[oy : oy + 200, ox : ox + 150] = image.numpy()
    expected = np.zeros((128, 128, 1), np.float32)
    expected[:, :96] = canvas[500 : 500 + 128, 500 : 500 + 96]
    np.testing.assert_array_equal(placed.numpy(), expected)


def _paste(mask: np.ndarray, box: np.ndarray, height: int, width: int) -> np.ndarray:
    """Reference paster: each pixel centre inside the box reads the mask cell under it."""
    y1, x1, y2, x2 = box
    size = mask.shape[0]
    ys, xs = np.arange(height) + 0.5, np.arange(width) + 0.5
    rows = np.floor((ys - y1) / (y2 - y1) * size).astype(int)
    cols = np.floor((xs - x1) / (x2 - x1) * size).astype(int)
    inside = ((rows >= 0) & (rows < size))[:, None] & ((cols >= 0) & (cols < size))[None, :]
    pasted = np.zeros((height, width), bool)
    rr, cc = np.nonzero(inside)
    pasted[rr, cc] = mask[rows[rr], cols[cc]] > 0
    return pasted


def test_flip_expand_and_jitter_keep_boxes_and_masks_on_their_pixels(colour_folder, tmp_path):
    config = make_config(
        batch_size=4, flip_ratio=0.5, expand_ratio=0.5, aug_scale_min=0.5, aug_scale_max=2.0
    )
    dataset = build_dataset(config, colour_folder, training=True, data_dir=tmp_path)
    checked = 0
    for _ in range(2):  # two passes: new augmentations
        for batch in batches(dataset):
            for b in range(4):
                pixels = denormalize_images(batch["images"][b], config).astype(int)
                for g in np.nonzero(batch["gt_classes"][b] > 0)[0]:
                    colour = np.array(SHAPE_COLOURS[int(batch["gt_classes"][b, g])])
                    # Pixels clearly of this instance's colour (resizing blurs the edges).
                    own = np.abs(pixels - colour).max(axis=-1) < 60
                    box = batch["gt_boxes"][b, g]
                    pasted = _paste(batch["gt_masks"][b, g], box, 128, 128)
                    if own.sum() < 30:
                        continue
                    y1, x1, y2, x2 = box
                    rows, cols = np.nonzero(own)
                    inside = (rows + 0.5 >= y1 - 1) & (rows + 0.5 <= y2 + 1)
                    inside &= (cols + 0.5 >= x1 - 1) & (cols + 0.5 <= x2 + 1)
                    assert inside.mean() > 0.99
                    iou = (own & pasted).sum() / (own | pasted).sum()
                    assert iou > 0.8, (b, g, iou)
                    checked += 1
    assert checked >= 12


def test_extreme_augmentation_never_fails_and_stays_in_the_window(colour_folder, tmp_path):
    config = make_config(
        batch_size=4, flip_ratio=0.5, expand_ratio=1.0, aug_scale_min=0.25, aug_scale_max=3.0
    )
    dataset = build_dataset(config, colour_folder, training=True, data_dir=tmp_path)
    for batch in batches(dataset.repeat(6)):
        valid = batch["gt_classes"] > 0
        boxes = batch["gt_boxes"][valid]
        assert (boxes >= 0).all() and (boxes <= 128).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


def _bilinear_reference(mask: np.ndarray, box, size: int) -> np.ndarray:
    """Cell (i, j) samples (y1 + (i + .5) h / M, x1 + (j + .5) w / M) bilinearly between
    pixel centres (pixel r's centre at r + .5), the mask extended with zeros."""
    height, width = mask.shape
    y1, x1, y2, x2 = box
    ys = y1 + (np.arange(size) + 0.5) * (y2 - y1) / size - 0.5
    xs = x1 + (np.arange(size) + 0.5) * (x2 - x1) / size - 0.5

    def pixel(r, c):
        ok = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        return np.where(ok, mask[np.clip(r, 0, height - 1), np.clip(c, 0, width - 1)], 0.0)

    out = np.zeros((size, size))
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            r0, c0 = int(np.floor(y)), int(np.floor(x))
            dy, dx = y - r0, x - c0
            out[i, j] = (
                pixel(r0, c0) * (1 - dy) * (1 - dx)
                + pixel(r0, c0 + 1) * (1 - dy) * dx
                + pixel(r0 + 1, c0) * dy * (1 - dx)
                + pixel(r0 + 1, c0 + 1) * dy * dx
            )
    return out


def test_mask_crops_match_a_numpy_bilinear_reference():
    rng = np.random.default_rng(0)
    coarse = rng.random((6, 8))
    mask = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((40, 30))) > 127
    boxes = np.array(
        [[0, 0, 30, 40], [3.3, 5.7, 20.2, 31.9], [10, 10, 12, 11], [-5, 20, 12, 45]], np.float32
    )
    size = 14
    crops = crop_masks_to_boxes(
        tf.constant(mask[None, ..., None].repeat(4, 0).astype(np.uint8)), tf.constant(boxes), size
    ).numpy()
    flipped = crop_masks_to_boxes(
        tf.constant(mask[None, ..., None].repeat(4, 0).astype(np.uint8)),
        tf.constant(boxes),
        size,
        flip=True,
    ).numpy()
    for crop, mirror, box in zip(crops, flipped, boxes, strict=True):
        reference = _bilinear_reference(mask.astype(float), box, size)
        decided = np.abs(reference - 0.5) > 1e-3
        np.testing.assert_array_equal(crop[decided], (reference >= 0.5)[decided])
        np.testing.assert_array_equal(mirror, crop[:, ::-1])


def _many_boxes_folder(folder):
    (folder / "data").mkdir(parents=True)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(folder / "data" / "many.png")
    sides = [6, 20, 10, 16, 12]  # squares along the diagonal, areas in this order
    annotations, start = [], 1.0
    for index, side in enumerate(sides):
        polygon = [
            start,
            start,
            start + side,
            start,
            start + side,
            start + side,
            start,
            start + side,
        ]
        annotations.append(
            {"id": index + 1, "image_id": 1, "category_id": 1, "segmentation": [polygon],
             "bbox": [start, start, side, side], "iscrowd": 0}
        )  # fmt: skip
        start += 2
    write_labels(
        folder,
        [{"id": 1, "file_name": "many.png", "height": 64, "width": 64}],
        annotations,
        [{"id": 1, "name": "square"}],
    )
    return sides


def test_more_instances_than_num_gts_keeps_the_largest_and_says_so(tmp_path, caplog):
    sides = _many_boxes_folder(tmp_path / "many")
    config = make_config(img_height=64, img_width=64, num_gts=3)
    with caplog.at_level(logging.WARNING):
        (batch,) = batches(
            build_dataset(config, tmp_path / "many", training=False, data_dir=tmp_path)
        )
    heights = batch["gt_boxes"][0, :, 2] - batch["gt_boxes"][0, :, 0]
    # The three largest (20, 16, 12), in file order.
    assert heights.tolist() == [20, 16, 12]
    assert sorted(sides, reverse=True)[:3] == [20, 16, 12]
    assert "more than num_gts=3" in caplog.text


def test_same_seed_same_batches_and_each_pass_new_augmentations(colour_folder, tmp_path):
    config = make_config(
        batch_size=2, flip_ratio=0.5, aug_scale_min=0.5, aug_scale_max=2.0, expand_ratio=0.3
    )
    # four images, batches of two: two batches per pass
    stream = build_dataset(config, colour_folder, training=True, data_dir=tmp_path, start_batch=0)
    pass_one, pass_two = batches(stream.take(2)), batches(stream.skip(2).take(2))
    again = batches(build_dataset(config, colour_folder, training=True, data_dir=tmp_path))
    for a, b in zip(pass_one, again, strict=True):  # one pass = the stream's first pass
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert any(
        not np.array_equal(a["images"], b["images"])
        for a, b in zip(pass_one, pass_two, strict=True)
    )
    other_seed = build_dataset(
        dataclasses.replace(config, seed=1), colour_folder, training=True, data_dir=tmp_path
    )
    assert not np.array_equal(batches(other_seed)[0]["images"], pass_one[0]["images"])


def test_a_stream_started_at_batch_k_continues_the_uninterrupted_one(colour_folder, tmp_path):
    # A resumed run (start_batch = its global step) reads exactly the batches the
    # uninterrupted run reads from there on, across pass boundaries (2 batches per pass).
    config = make_config(
        batch_size=2, flip_ratio=0.5, aug_scale_min=0.5, aug_scale_max=2.0, expand_ratio=0.3
    )

    def stream(start):
        return build_dataset(
            config, colour_folder, training=True, data_dir=tmp_path, start_batch=start
        )

    whole = batches(stream(0).take(7))
    for start in (1, 2, 3):
        resumed = batches(stream(start).take(7 - start))
        for a, b in zip(whole[start:], resumed, strict=True):
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])
    # and the passes differ from each other: no epoch replays an earlier one
    images = [batch["images"] for batch in whole]
    assert not np.array_equal(images[0], images[2]) and not np.array_equal(images[2], images[4])


def test_input_context_shards_images_and_batches_per_replica(messy_folder, tmp_path):
    ids = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=pipeline, num_replicas_in_sync=2
        )
        dataset = build_dataset(
            make_config(), messy_folder, training=False, input_context=context, data_dir=tmp_path
        )
        ids.append({int(i) for b in batches(dataset) for i in b["image_id"]})
    assert ids[0].isdisjoint(ids[1])
    assert ids[0] | ids[1] == {101, 102, 103, 104, 105, 109}
    context = tf.distribute.InputContext(
        num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=2
    )
    dataset = build_dataset(
        make_config(batch_size=2),
        messy_folder,
        training=True,
        input_context=context,
        data_dir=tmp_path,
    )
    assert dataset.element_spec["images"].shape[0] == 2  # per replica


def test_training_skips_bad_images_and_images_without_instances(messy_folder, tmp_path, caplog):
    config = make_config(batch_size=1)
    with caplog.at_level(logging.WARNING):
        dataset = build_dataset(config, messy_folder, training=True, data_dir=tmp_path)
    # a, b, gray, rgba, palette have instances; empty.png has none; three are unreadable.
    assert len(batches(dataset)) == 5
    for name in ("broken.jpg", "missing.png", "garbage.png"):
        assert name in caplog.text
    assert "3 skipped" in caplog.text
    limited = build_dataset(
        dataclasses.replace(config, train_dataset_num=2),
        messy_folder,
        training=True,
        data_dir=tmp_path,
    )
    assert len(batches(limited)) == 2


def test_classes_follow_config_category_ids_and_must_fit(messy_folder, tmp_path):
    config = make_config(
        coco_classes=["background", "zebra", "cat", "dog"], num_classes=4, category_ids=[20, 3, 7]
    )
    first = batches(build_dataset(config, messy_folder, training=False, data_dir=tmp_path))[0]
    # Annotations 1 (cat, 3), 2 (dog, 7), 3 (zebra, 20), 4 (crowd cat) in the config's order.
    assert first["gt_classes"][0, :4].tolist() == [2, 3, 1, 2]
    too_few = make_config(coco_classes=["background", "cat"], num_classes=2)
    with pytest.raises(DataError, match="coco_classes=from_data"):
        build_dataset(too_few, messy_folder, training=False, data_dir=tmp_path)
    missing = dataclasses.replace(config, category_ids=[20, 3, 99])
    with pytest.raises(DataError, match=r"7 \(dog\)"):
        build_dataset(missing, messy_folder, training=False, data_dir=tmp_path)


def test_bgr_order_and_normalisation(colour_folder, tmp_path):
    config = make_config(to_rgb=0)
    batch = batches(build_dataset(config, colour_folder, training=False, data_dir=tmp_path))[0]
    # 120 x 160 -> scale 0.8; the blue rectangle (rows 80-109, cols 60-139) covers (75, 80).
    bgr = np.array([255.0, 0.0, 0.0])
    np.testing.assert_allclose(batch["images"][0, 75, 80], (bgr - MEAN) / STD, rtol=1e-5)
    np.testing.assert_array_equal(
        denormalize_images(batch["images"][0], config)[75, 80], [0, 0, 255]
    )


def test_missing_or_wrong_sources_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_dataset(make_config(), tmp_path / "nowhere", training=True, data_dir=tmp_path)
    (tmp_path / "plain").mkdir()
    with pytest.raises(FileNotFoundError, match="labels.json"):
        build_dataset(make_config(), tmp_path / "plain", training=True, data_dir=tmp_path)
    (tmp_path / "nolabels" / "data").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="labels.json"):
        build_dataset(make_config(), tmp_path / "nolabels", training=True, data_dir=tmp_path)


def test_fewer_images_than_a_batch_is_an_error(colour_folder, tmp_path):
    with pytest.raises(DataError, match="less than one batch of 8"):
        build_dataset(make_config(batch_size=8), colour_folder, training=True, data_dir=tmp_path)


def test_mirrored_strategy_reads_per_replica_batches(colour_folder, tmp_path):
    devices = tf.config.list_logical_devices("CPU")
    if len(devices) < 2:
        pytest.skip("needs two logical CPU devices (tests/conftest.py makes them)")
    strategy = tf.distribute.MirroredStrategy([device.name for device in devices[:2]])
    config = make_config(batch_size=1)

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        return build_dataset(
            config, colour_folder, training=True, input_context=context, data_dir=tmp_path
        )

    distributed = strategy.distribute_datasets_from_function(dataset_fn)
    batch = next(iter(distributed))
    parts = strategy.experimental_local_results(batch["images"])
    assert len(parts) == 2 and all(part.shape == (1, 128, 128, 3) for part in parts)
