"""Post-processing: boxes back to the original image, mask pasting, RLE, the reference's JSON.

References: a whole-image bilinear sampler written here (gather on a zero-padded mask, not
the separable code under test), pycocotools for RLE decoding, hand-computed boxes.
"""

import json

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from maskspine import postprocess

# --------------------------------------------------------------------------- helpers


def reference_paste(mask: np.ndarray, box_yxyx, height: int, width: int) -> np.ndarray:
    """grid_sample(align_corners=False, zero padding) of `mask` over the box, at every pixel.

    Returns the [height, width] float probabilities (not thresholded).
    """
    y1, x1, y2, x2 = (float(v) for v in box_yxyx)
    mask_h, mask_w = mask.shape
    padded = np.pad(mask.astype(np.float64), 1)  # index 0 and M+1 are the zero outside
    ys = (np.arange(height) + 0.5 - y1) / (y2 - y1) * mask_h - 0.5
    xs = (np.arange(width) + 0.5 - x1) / (x2 - x1) * mask_w - 0.5
    v, u = np.meshgrid(ys, xs, indexing="ij")
    v0, u0 = np.floor(v), np.floor(u)
    fv, fu = v - v0, u - u0

    def at(rows, cols):
        rows = np.clip(rows, -1, mask_h).astype(int) + 1
        cols = np.clip(cols, -1, mask_w).astype(int) + 1
        return padded[rows, cols]

    return (
        (1 - fv) * (1 - fu) * at(v0, u0)
        + (1 - fv) * fu * at(v0, u0 + 1)
        + fv * (1 - fu) * at(v0 + 1, u0)
        + fv * fu * at(v0 + 1, u0 + 1)
    )


def make_image_info(original_hw, scale_yx, offset_yx=(0.0, 0.0)):
    original = np.asarray(original_hw, np.float32)
    scale = np.asarray(scale_yx, np.float32)
    return np.stack([original, original * scale, scale, np.asarray(offset_yx, np.float32)])


# --------------------------------------------------------------------------- boxes


def test_boxes_to_original_inverts_scale_and_offset():
    rng = np.random.default_rng(0)
    original = np.stack(
        [
            rng.uniform(0, 50, 20),
            rng.uniform(0, 70, 20),
            rng.uniform(50, 100, 20),
            rng.uniform(70, 140, 20),
        ],
        axis=-1,
    ).astype(np.float32)
    info = make_image_info((100, 140), (1.6, 1.25), (7.0, 3.0))
    scale = np.array([1.6, 1.25, 1.6, 1.25], np.float32)
    offset = np.array([7.0, 3.0, 7.0, 3.0], np.float32)
    network = original * scale - offset  # the data pipeline's (Model Garden's) convention
    got = postprocess.boxes_to_original(network, info)
    np.testing.assert_allclose(got, original, rtol=1e-5, atol=1e-4)
    assert got.dtype == np.float32


def test_boxes_to_original_clips_to_the_image():
    info = make_image_info((50, 80), (2.0, 2.0))
    got = postprocess.boxes_to_original(np.array([[-10.0, -4.0, 120.0, 200.0]]), info)
    np.testing.assert_allclose(got, [[0.0, 0.0, 50.0, 80.0]])


def test_boxes_to_original_rejects_bad_image_info():
    with pytest.raises(ValueError, match="image_info"):
        postprocess.boxes_to_original(np.zeros((1, 4)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="scale"):
        postprocess.boxes_to_original(np.zeros((1, 4)), np.zeros((4, 2)))


# --------------------------------------------------------------------------- paste


@pytest.mark.parametrize("box", [(3, 10, 8, 20), (0, 0, 12, 25), (5, 1, 6, 2), (2, 7, 11, 9)])
def test_constant_mask_fills_exactly_the_box(box):
    height, width = 12, 25
    pasted = postprocess.paste_masks(
        np.ones((1, 28, 28), np.float32), np.array([box], float), (height, width)
    )
    expected = np.zeros((height, width), np.uint8)
    y1, x1, y2, x2 = box
    expected[y1:y2, x1:x2] = 1
    assert pasted.shape == (1, height, width)
    assert pasted.dtype == np.uint8
    np.testing.assert_array_equal(pasted[0], expected)


def test_half_mask_fills_the_left_half_of_the_box():
    left = np.zeros((1, 28, 28), np.float32)
    left[:, :, :14] = 1.0
    top = np.zeros((1, 28, 28), np.float32)
    top[:, :14, :] = 1.0
    boxes = np.array([[4.0, 10.0, 16.0, 30.0]])
    expected_left = np.zeros((20, 40), np.uint8)
    expected_left[4:16, 10:20] = 1
    expected_top = np.zeros((20, 40), np.uint8)
    expected_top[4:10, 10:30] = 1
    np.testing.assert_array_equal(postprocess.paste_masks(left, boxes, (20, 40))[0], expected_left)
    np.testing.assert_array_equal(postprocess.paste_masks(top, boxes, (20, 40))[0], expected_top)


def test_paste_matches_whole_image_bilinear_reference():
    rng = np.random.default_rng(1)
    height, width, count = 45, 60, 12
    y1 = rng.uniform(-10, 40, count)
    x1 = rng.uniform(-10, 55, count)
    boxes = np.stack(
        [y1, x1, y1 + rng.uniform(0.7, 30, count), x1 + rng.uniform(0.7, 30, count)], -1
    )
    masks = rng.uniform(0, 1, (count, 28, 28)).astype(np.float32)
    masks[::3] = (masks[::3] > 0.5).astype(np.float32)  # hard edges too
    for threshold in (0.5, 0.3):
        pasted = postprocess.paste_masks(masks, boxes, (height, width), threshold=threshold)
        for index in range(count):
            probabilities = reference_paste(masks[index], boxes[index], height, width)
            decided = np.abs(probabilities - threshold) > 1e-5  # float32 vs float64 ties
            np.testing.assert_array_equal(
                pasted[index][decided], (probabilities >= threshold)[decided].astype(np.uint8)
            )


def test_paste_non_square_mask_and_rectangular_image():
    rng = np.random.default_rng(2)
    masks = rng.uniform(0, 1, (2, 14, 28)).astype(np.float32)
    boxes = np.array([[2.3, 4.1, 19.7, 31.2], [10.0, 0.0, 30.0, 12.5]])
    pasted = postprocess.paste_masks(masks, boxes, (30, 17))
    for index in range(2):
        probabilities = reference_paste(masks[index], boxes[index], 30, 17)
        decided = np.abs(probabilities - 0.5) > 1e-5
        np.testing.assert_array_equal(pasted[index][decided], (probabilities >= 0.5)[decided])


def test_degenerate_and_outside_boxes_give_empty_masks():
    boxes = np.array(
        [
            [5.0, 5.0, 5.0, 9.0],  # zero height
            [5.0, 9.0, 8.0, 2.0],  # negative width
            [np.nan, 0.0, 4.0, 4.0],
            [30.0, 30.0, 40.0, 40.0],  # outside a 20 x 20 image
        ]
    )
    pasted = postprocess.paste_masks(np.ones((4, 28, 28), np.float32), boxes, (20, 20))
    assert pasted.shape == (4, 20, 20)
    assert pasted.sum() == 0


def test_paste_rejects_bad_arguments():
    with pytest.raises(ValueError, match="threshold"):
        postprocess.paste_masks(
            np.ones((1, 28, 28)), np.array([[0, 0, 4, 4.0]]), (8, 8), threshold=0.0
        )
    with pytest.raises(ValueError, match="boxes"):
        postprocess.paste_masks(np.ones((2, 28, 28)), np.array([[0, 0, 4, 4.0]]), (8, 8))


def test_paste_no_detections():
    pasted = postprocess.paste_masks(np.zeros((0, 28, 28)), np.zeros((0, 4)), (7, 9))
    assert pasted.shape == (0, 7, 9)
    assert postprocess.encode_rle(pasted) == []


# --------------------------------------------------------------------------- RLE


def test_encode_rle_decodes_back_to_the_masks():
    rng = np.random.default_rng(3)
    masks = (rng.uniform(size=(5, 31, 47)) > 0.6).astype(np.uint8)
    rles = postprocess.encode_rle(masks)
    assert len(rles) == 5
    json.dumps(rles)  # JSON-able as it is
    for mask, rle in zip(masks, rles, strict=True):
        assert rle["size"] == [31, 47]
        assert isinstance(rle["counts"], str)
        np.testing.assert_array_equal(mask_utils.decode(rle), mask)
    # Pasted masks (a transposed view) and boolean masks encode the same way.
    np.testing.assert_array_equal(
        mask_utils.decode(postprocess.encode_rle(masks.astype(bool))[2]), masks[2]
    )
    pasted = postprocess.paste_masks(
        np.ones((2, 28, 28), np.float32), np.array([[1, 2, 20, 30.0], [0, 0, 5, 5.0]]), (31, 47)
    )
    for mask, rle in zip(pasted, postprocess.encode_rle(pasted), strict=True):
        np.testing.assert_array_equal(mask_utils.decode(rle), mask)


# --------------------------------------------------------------------------- instances


def model_outputs_for_one_image():
    """Five detection slots, three real (scores out of order), two padding."""
    boxes = np.array(
        [
            [10.0, 20.0, 50.0, 60.0],
            [0.0, 0.0, 30.0, 30.0],
            [40.0, 40.0, 80.0, 100.0],
            [0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
        ],
        np.float32,
    )
    return {
        "detection_boxes": boxes,
        "detection_scores": np.array([0.6, 0.9, 0.3, 0.0, 0.0], np.float32),
        "detection_classes": np.array([2, 1, 2, 0, 0], np.int32),
        "num_detections": np.array(3, np.int32),
        "detection_masks": np.ones((5, 28, 28), np.float32),
    }


def test_detections_to_instances():
    # Network input = original * 2 + (4, 0): original image 60 x 70.
    info = make_image_info((60, 70), (2.0, 2.0), (-4.0, 0.0))
    instances = postprocess.detections_to_instances(model_outputs_for_one_image(), info)
    assert [item["score"] for item in instances] == pytest.approx([0.9, 0.6, 0.3])
    assert [item["label"] for item in instances] == [1, 2, 2]
    expected_boxes = [[0.0, 0.0, 13.0, 15.0], [3.0, 10.0, 23.0, 30.0], [18.0, 20.0, 38.0, 50.0]]
    for item, box in zip(instances, expected_boxes, strict=True):
        np.testing.assert_allclose(item["box_yxyx"], box, atol=1e-5)
        mask = mask_utils.decode(item["rle"])
        assert mask.shape == (60, 70)
        expected = np.zeros((60, 70), np.uint8)
        y1, x1, y2, x2 = (int(v) for v in box)
        expected[y1:y2, x1:x2] = 1
        np.testing.assert_array_equal(mask, expected)

    kept = postprocess.detections_to_instances(
        model_outputs_for_one_image(), info, score_threshold=0.5
    )
    assert [item["score"] for item in kept] == pytest.approx([0.9, 0.6])


def test_detections_to_instances_ignores_slots_after_num_detections():
    outputs = model_outputs_for_one_image()
    outputs["num_detections"] = np.array(1, np.int32)
    info = make_image_info((60, 70), (1.0, 1.0))
    instances = postprocess.detections_to_instances(outputs, info)
    assert [item["score"] for item in instances] == pytest.approx([0.6])


def test_chunked_pasting_gives_the_same_instances(monkeypatch):
    rng = np.random.default_rng(4)
    count = 7
    y1 = rng.uniform(0, 40, count)
    x1 = rng.uniform(0, 50, count)
    outputs = {
        "detection_boxes": np.stack([y1, x1, y1 + 15, x1 + 20], -1).astype(np.float32),
        "detection_scores": rng.uniform(0.1, 1, count).astype(np.float32),
        "detection_classes": rng.integers(1, 3, count).astype(np.int32),
        "num_detections": np.array(count),
        "detection_masks": rng.uniform(0, 1, (count, 28, 28)).astype(np.float32),
    }
    info = make_image_info((60, 70), (1.0, 1.0))
    whole = postprocess.detections_to_instances(outputs, info)
    monkeypatch.setattr(postprocess, "_MAX_PASTE_BYTES", 2 * 60 * 70)  # two masks at a time
    chunked = postprocess.detections_to_instances(outputs, info)
    assert chunked == whole
