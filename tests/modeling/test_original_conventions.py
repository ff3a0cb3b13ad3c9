"""The model options that reproduce tensorflow/tpu and Model Garden (configs/pretrained),
each against a numpy reference written here from the rule the option's docstring states."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from maskspine.boxes import box_overlaps
from maskspine.modeling import box_ops
from maskspine.modeling.anchors import generate_anchors
from maskspine.modeling.detection import detect_boxes
from maskspine.modeling.heads import BoxHead, MaskHead
from maskspine.modeling.layers import conv_bn
from maskspine.modeling.nms import padded_nms
from maskspine.modeling.roi_align import assign_box_levels, multilevel_roi_align
from maskspine.modeling.rpn import RPNHead, generate_proposals
from maskspine.modeling.spinenet import SPINENET_BLOCK_SPECS, build_spinenet

# --------------------------------------------------------------------------- numpy references


def np_conv2d(x, kernel, stride=1, pad=(0, 0), bias=None):
    """x [H, W, C], kernel [k, k, C, O]; zero padding (before, after) on both axes."""
    x = np.pad(x, [pad, pad, (0, 0)])
    k = kernel.shape[0]
    rows = (x.shape[0] - k) // stride + 1
    cols = (x.shape[1] - k) // stride + 1
    out = np.zeros((rows, cols, kernel.shape[3]))
    for i in range(rows):
        for j in range(cols):
            patch = x[i * stride : i * stride + k, j * stride : j * stride + k]
            out[i, j] = np.tensordot(patch, kernel, axes=([0, 1, 2], [0, 1, 2]))
    return out if bias is None else out + bias


def np_batch_norm(x, gamma, beta, mean, variance, eps):
    return gamma * (x - mean) / np.sqrt(variance + eps) + beta


def np_padded_nms(boxes, scores, max_out, threshold):
    """Greedy NMS: stable descending order, suppressed at IoU >= threshold, boxes whose four
    coordinates are all <= 0 never kept. Returns kept indices."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    kept = []
    for i in order:
        if len(kept) == max_out:
            break
        if np.all(boxes[i] <= 0):
            continue
        if all(box_overlaps(boxes[i], boxes[j])[0][0, 0] < threshold for j in kept):
            kept.append(i)
    return kept


def np_decode_legacy(deltas, anchors, stds=(1, 1, 1, 1)):
    """tensorflow/tpu's decoding (+1 sizes, dh/dw clipped from above at log(1000/16))."""
    d = deltas * np.asarray(stds)
    ah = anchors[:, 2] - anchors[:, 0] + 1
    aw = anchors[:, 3] - anchors[:, 1] + 1
    cy, cx = anchors[:, 0] + 0.5 * ah, anchors[:, 1] + 0.5 * aw
    dh = np.minimum(d[:, 2], math.log(1000 / 16))
    dw = np.minimum(d[:, 3], math.log(1000 / 16))
    h, w = ah * np.exp(dh), aw * np.exp(dw)
    y1, x1 = d[:, 0] * ah + cy - 0.5 * h, d[:, 1] * aw + cx - 0.5 * w
    return np.stack([y1, x1, y1 + h - 1, x1 + w - 1], axis=-1)


def np_bilinear_clamped(feature, y, x):
    """feature [H, W, C] at (y, x) >= 0: corners floor and floor + 1, both clamped to the last
    row / column (tensorflow/tpu `compute_grid_positions`)."""
    height, width = feature.shape[:2]
    y0, x0 = min(math.floor(y), height - 1), min(math.floor(x), width - 1)
    y1, x1 = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
    ly, lx = y - y0, x - x0
    return (
        (1 - ly) * (1 - lx) * feature[y0, x0]
        + (1 - ly) * lx * feature[y0, x1]
        + ly * (1 - lx) * feature[y1, x0]
        + ly * lx * feature[y1, x1]
    )


# --------------------------------------------------------------------------- backbone


@pytest.mark.parametrize("kernel_size", [3, 7])
def test_symmetric_padding_pads_a_strided_conv_equally_on_both_sides(kernel_size):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 8, 8, 2)).astype(np.float32)
    inputs = keras.Input((8, 8, 2))
    outputs = {
        padding: conv_bn(inputs, 3, kernel_size, strides=2, padding=padding, name=padding)
        for padding in ("symmetric", "same")
    }
    model = keras.Model(inputs, outputs)
    kernel = rng.normal(size=(kernel_size, kernel_size, 2, 3)).astype(np.float32)
    for padding in ("symmetric", "same"):
        model.get_layer(f"{padding}_conv").set_weights([kernel])
    conv = {
        padding: keras.Model(inputs, model.get_layer(f"{padding}_conv").output)(x).numpy()[0]
        for padding in ("symmetric", "same")
    }
    before = (kernel_size - 1) // 2
    expected = np_conv2d(x[0], kernel, 2, (before, kernel_size - 1 - before))
    np.testing.assert_allclose(conv["symmetric"], expected, atol=1e-4)
    # Keras 'same' puts the extra zero after: the windows are shifted by one pixel.
    assert not np.allclose(conv["same"], expected, atol=1e-3)


def test_single_pooling_goes_down_by_the_whole_ratio_in_one_max_pool():
    backbone = build_spinenet(
        "49",
        (128, 128, 3),
        filter_size_scale=0.125,
        endpoints_num_filters=8,
        downsample_pooling="single",
        conv_padding="symmetric",
    )
    names = {layer.name: layer for layer in backbone.layers}
    levels = [2, 2] + [spec.level for spec in SPINENET_BLOCK_SPECS]
    checked = 0
    for i, spec in enumerate(SPINENET_BLOCK_SPECS[:15]):  # the 16th (level 2) is not built
        for k, offset in enumerate(spec.input_offsets):
            ratio = 2 ** (spec.level - levels[offset])
            pool = names.get(f"block{i + 1}_in{k}_pool")
            if ratio <= 2:
                assert pool is None
                continue
            # after the stride-2 conv: size 3 (4x) or 5 (8x and more), stride ratio / 2
            assert pool.pool_size == ((3, 3) if ratio == 4 else (5, 5))
            assert pool.strides == (ratio // 2, ratio // 2)
            assert pool.output.shape[1] == 128 // 2**spec.level
            checked += 1
    assert checked >= 5
    assert not [name for name in names if name.endswith("_pool2")]


# --------------------------------------------------------------------------- anchors, boxes


def test_width_over_height_anchors_in_config_order():
    ratios = [1.0, 2.0, 0.5]
    anchors = generate_anchors((32, 32), [16], [3.0], ratios, "width_over_height")[4].numpy()
    expected = []
    for cy in (8.0, 24.0):
        for cx in (8.0, 24.0):
            for r in ratios:
                w, h = 48 * math.sqrt(r), 48 / math.sqrt(r)
                expected.append([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2])
    np.testing.assert_allclose(anchors, np.array(expected), rtol=1e-6)


def test_legacy_plus_one_encode_decode_and_clip():
    rng = np.random.default_rng(1)
    anchors = np.sort(rng.uniform(0, 100, (20, 2, 2)), axis=1).reshape(20, 4)  # y1 x1 y2 x2
    deltas = rng.normal(0, 1, (20, 4))
    deltas[0, 2], deltas[1, 3] = -9.0, 9.0  # far below / above the dh, dw bound
    stds = (0.1, 0.1, 0.2, 0.2)
    decoded = box_ops.decode_boxes(
        deltas / np.asarray(stds), anchors, stds=stds, legacy_plus_one=True, dhdw_clip="upper"
    ).numpy()
    np.testing.assert_allclose(decoded, np_decode_legacy(deltas / np.asarray(stds), anchors, stds),
                               rtol=1e-5, atol=1e-3)  # fmt: skip
    # encode inverts decode (sizes +1)
    encoded = box_ops.encode_boxes(decoded[2:], anchors[2:], legacy_plus_one=True).numpy()
    np.testing.assert_allclose(encoded, deltas[2:], atol=1e-4)
    clipped = box_ops.clip_boxes(
        np.array([[-5.0, 3.0, 70.0, 90.0]], np.float32), (64, 80), legacy_plus_one=True
    ).numpy()
    np.testing.assert_array_equal(clipped, [[0.0, 3.0, 63.0, 79.0]])


def test_upper_dhdw_clip_lets_boxes_shrink_below_the_bound():
    anchor = np.array([[0.0, 0.0, 100.0, 100.0]])
    deltas = np.array([[0.0, 0.0, -6.0, 6.0]])
    both = box_ops.decode_boxes(deltas, anchor).numpy()[0]
    upper = box_ops.decode_boxes(deltas, anchor, dhdw_clip="upper").numpy()[0]
    bound = math.log(1000 / 16)
    assert both[2] - both[0] == pytest.approx(100 * math.exp(-bound), rel=1e-5)
    assert upper[2] - upper[0] == pytest.approx(100 * math.exp(-6.0), rel=1e-4)
    assert upper[3] - upper[1] == pytest.approx(100 * math.exp(bound), rel=1e-5)


# --------------------------------------------------------------------------- RPN


def test_rpn_head_with_a_batch_norm_per_level_matches_numpy():
    rng = np.random.default_rng(2)
    head = RPNHead(
        3, feat_channels=4, num_convs=2, norm_per_level=True, levels=[3, 4], norm_epsilon=1e-3
    )
    head.build((None, None, None, 5))
    for weight in head.weights:
        low = 0.5 if weight.path.endswith(("gamma", "moving_variance")) else -0.5
        weight.assign(rng.uniform(low, low + 1.0, weight.shape).astype(np.float32))
    features = {f"P{level}": rng.normal(size=(1, 6 // (level - 2), 6 // (level - 2), 5))
                for level in (3, 4)}  # fmt: skip
    objectness, deltas = head({k: tf.constant(v, tf.float32) for k, v in features.items()})
    values = {w.path: w.numpy() for w in head.weights}
    for level in (3, 4):
        x = features[f"P{level}"][0]
        for i, conv in enumerate(("rpn_conv", "rpn_conv2")):
            x = np_conv2d(x, values[f"rpn_head/{conv}/kernel"], 1, (1, 1),
                          values[f"rpn_head/{conv}/bias"])  # fmt: skip
            bn = f"rpn_head/rpn_bn{'' if i == 0 else 2}_p{level}/"
            x = np_batch_norm(x, *(values[bn + n] for n in ("gamma", "beta", "moving_mean",
                                                              "moving_variance")), 1e-3)  # fmt: skip
            x = np.maximum(x, 0)
        scores = (
            x @ values["rpn_head/rpn_objectness/kernel"][0, 0]
            + values["rpn_head/rpn_objectness/bias"]
        )
        boxes = (
            x @ values["rpn_head/rpn_box_deltas/kernel"][0, 0]
            + values["rpn_head/rpn_box_deltas/bias"]
        )
        np.testing.assert_allclose(objectness[level].numpy()[0], scores.reshape(-1), atol=1e-4)
        np.testing.assert_allclose(deltas[level].numpy()[0], boxes.reshape(-1, 4), atol=1e-4)


def test_padded_nms_suppresses_at_equal_iou_and_never_keeps_zero_boxes():
    boxes = np.array(
        [
            [0, 0, 0, 0],  # best score, all zero: never selected
            [0, 0, 10, 10],
            [0, 0, 10, 5],  # IoU 0.5 exactly with the previous: suppressed at >= 0.5
            [20, 20, 30, 30],
            [20, 20, 30, 30],  # a tie in score with the previous: the lower index wins
            [40, 0, 50, 10],
        ],
        np.float32,
    )
    scores = np.array([0.99, 0.9, 0.8, 0.7, 0.7, 0.6], np.float32)
    indices, num_valid = padded_nms(boxes[None], scores[None], 4, 0.5)
    assert indices.numpy()[0, : num_valid.numpy()[0]].tolist() == [1, 3, 5]
    assert np_padded_nms(boxes, scores, 4, 0.5) == [1, 3, 5]
    # combined NMS suppresses at IoU > 0.5 only: box 2 survives there
    _, _, _, count = tf.image.combined_non_max_suppression(
        boxes[None, :, None], scores[None, :, None], 6, 6, 0.5, 0.0
    )
    assert int(count[0]) == 5


def test_random_boxes_padded_nms_equals_greedy_reference():
    rng = np.random.default_rng(3)
    top_left = rng.uniform(0, 80, (300, 2))
    boxes = np.concatenate([top_left, top_left + rng.uniform(5, 40, (300, 2))], 1)
    boxes = boxes.astype(np.float32)
    scores = rng.uniform(size=300).astype(np.float32)
    order = np.argsort(-scores, kind="stable")
    indices, num_valid = padded_nms(boxes[order][None], scores[order][None], 50, 0.6)
    ours = order[indices.numpy()[0, : num_valid.numpy()[0]]].tolist()
    assert ours == np_padded_nms(boxes, scores, 50, 0.6)


def test_padded_proposals_match_a_numpy_reference():
    rng = np.random.default_rng(4)
    size = (48, 64)
    strides = {3: 8, 4: 16}
    anchors = generate_anchors(size, [8, 16], [3.0], [1.0, 2.0, 0.5], "width_over_height")
    logits, deltas = {}, {}
    for level, level_anchors in anchors.items():
        n = level_anchors.shape[0]
        logits[level] = rng.normal(0, 2, (1, n)).astype(np.float32)
        deltas[level] = rng.normal(0, 0.3, (1, n, 4)).astype(np.float32)
    kwargs = dict(nms_pre=40, max_per_img=30, iou_threshold=0.7, min_bbox_size=0,
                  means=[0.0] * 4, stds=[1.0] * 4)  # fmt: skip
    boxes, scores, valid = generate_proposals(
        logits, deltas, anchors, tf.constant([size], tf.float32), legacy_plus_one=True,
        dhdw_clip="upper", size_filter=False, nms_rule="padded", **kwargs,
    )  # fmt: skip
    all_boxes, all_scores = [], []
    for level in sorted(strides):
        probability = 1 / (1 + np.exp(-logits[level][0].astype(np.float64)))
        order = np.argsort(-probability, kind="stable")[:40]
        decoded = np_decode_legacy(deltas[level][0][order], anchors[level].numpy()[order])
        decoded = np.clip(decoded, 0, [size[0] - 1, size[1] - 1] * 2)
        kept = np_padded_nms(decoded, probability[order], 30, 0.7)
        all_boxes += [decoded[k] for k in kept] + [np.zeros(4)] * (min(30, len(order)) - len(kept))
        all_scores += [probability[order][k] for k in kept] + [-1.0] * (
            min(30, len(order)) - len(kept)
        )
    best = np.argsort(-np.array(all_scores), kind="stable")[:30]
    np.testing.assert_allclose(boxes.numpy()[0], np.array(all_boxes)[best], atol=2e-3)
    np.testing.assert_allclose(scores.numpy()[0], np.array(all_scores)[best], atol=1e-6)
    assert valid.numpy().all()  # the originals pass every slot on


def test_padded_detections_match_a_numpy_reference():
    rng = np.random.default_rng(5)
    n, classes = 60, 4  # classes with background
    proposals = np.sort(rng.uniform(0, 100, (n, 2, 2)), axis=1).reshape(n, 4).astype(np.float32)
    logits = rng.normal(0, 2, (n, classes)).astype(np.float32)
    logits[:, 0] += 1.0
    deltas = rng.normal(0, 0.5, (n, classes, 4)).astype(np.float32)
    out = detect_boxes(
        logits[None], deltas[None], proposals[None], np.ones((1, n), bool),
        tf.constant([[96.0, 96.0]]), means=[0.0] * 4, stds=[0.1, 0.1, 0.2, 0.2], score_thr=0.05,
        iou_threshold=0.5, max_per_img=10, legacy_plus_one=True, dhdw_clip="upper",
        nms_rule="padded",
    )  # fmt: skip
    probability = np.exp(logits - logits.max(1, keepdims=True))
    probability /= probability.sum(1, keepdims=True)
    candidates = []  # (score, class, box) in class order, each class's kept in score order
    for c in range(1, classes):
        boxes = np_decode_legacy(deltas[:, c], proposals, [0.1, 0.1, 0.2, 0.2])
        boxes = np.clip(boxes, 0, 95.0)
        scores = np.where(probability[:, c] > 0.05, probability[:, c], 0.0)
        boxes = np.where((probability[:, c] > 0.05)[:, None], boxes, 0.0)
        kept = np_padded_nms(boxes, scores, 10, 0.5)
        candidates += [(scores[k], c, boxes[k]) for k in kept]
    order = sorted(range(len(candidates)), key=lambda i: -candidates[i][0])[:10]
    count = int(out["num_detections"][0])
    assert count == len(order)
    np.testing.assert_allclose(
        out["detection_scores"][0, :count], [candidates[i][0] for i in order], rtol=1e-5
    )
    assert out["detection_classes"].numpy()[0, :count].tolist() == [candidates[i][1] for i in order]
    np.testing.assert_allclose(out["detection_boxes"][0, :count],
                               np.array([candidates[i][2] for i in order]), atol=2e-3)  # fmt: skip


# --------------------------------------------------------------------------- RoIs


def test_canonical_level_assignment():
    sides = np.array([10, 111.9, 112, 223.9, 224, 447.9, 448, 900, 1791, 1792, 5000], np.float32)
    boxes = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], -1)
    boxes = np.concatenate([boxes, [[5, 5, 5, 9], [9, 9, 5, 5]]])  # empty and inverted boxes
    levels = assign_box_levels(boxes, num_levels=5, rule="canonical", first_level=3).numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        raw = (
            np.floor(
                np.log2(np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])) / 224)
            )
            + 4
        )
    expected = np.clip(np.nan_to_num(raw, nan=-1e9, neginf=-1e9), 3, 7) - 3
    np.testing.assert_array_equal(levels, expected.astype(int))
    assert levels[:11].tolist() == [0, 0, 0, 0, 1, 1, 2, 3, 3, 4, 4]


def test_unaligned_single_sample_roi_align_matches_numpy():
    rng = np.random.default_rng(6)
    features = {"P3": rng.normal(size=(1, 8, 8, 3)), "P4": rng.normal(size=(1, 4, 4, 3))}
    features = {k: tf.constant(v, tf.float32) for k, v in features.items()}
    boxes = np.array([[3.0, 5.0, 40.0, 50.0], [0.0, 0.0, 63.0, 63.0], [10.0, 20.0, 30.0, 60.0]],
                     np.float32)  # fmt: skip
    pooled = multilevel_roi_align(
        features, boxes[None], output_size=2, featmap_strides=[8, 16], sampling_ratio=1,
        aligned=False, level_assignment="canonical",
    ).numpy()[0]  # fmt: skip
    for b, box in enumerate(boxes):
        side = math.sqrt((box[2] - box[0]) * (box[3] - box[1]))
        level = int(min(max(math.floor(math.log2(side / 224)) + 4, 3), 4))
        stride = 2**level
        feature = features[f"P{level}"].numpy()[0]
        y1, x1, y2, x2 = box / stride
        for i in range(2):
            for j in range(2):
                y = y1 + (i + 0.5) * (y2 - y1) / 2
                x = x1 + (j + 0.5) * (x2 - x1) / 2
                np.testing.assert_allclose(pooled[b, i, j], np_bilinear_clamped(feature, y, x),
                                           atol=1e-5)  # fmt: skip


# --------------------------------------------------------------------------- heads


def _randomize(layer, rng):
    for weight in layer.weights:
        low = 0.5 if weight.path.endswith(("gamma", "moving_variance")) else -0.3
        weight.assign(rng.uniform(low, low + 0.6, weight.shape).astype(np.float32))
    return {w.path.split("/", 1)[1]: w.numpy() for w in layer.weights}


def test_box_head_with_conv_bias_and_batch_norm_after_the_fc_matches_numpy():
    rng = np.random.default_rng(7)
    head = BoxHead(3, num_shared_convs=1, conv_out_channels=4, num_shared_fcs=1,
                   fc_out_channels=5, conv_bias=True, fc_norm=True, activation="swish")  # fmt: skip
    head.build((None, None, 3, 3, 2))
    w = _randomize(head, rng)
    x = rng.normal(size=(1, 1, 3, 3, 2)).astype(np.float32)
    logits, deltas = head(x)

    def swish(v):
        return v / (1 + np.exp(-v))

    def bn(v, n):
        stats = (w[f"{n}/{k}"] for k in ("gamma", "beta", "moving_mean", "moving_variance"))
        return np_batch_norm(v, *stats, 1e-3)

    y = swish(
        bn(
            np_conv2d(x[0, 0], w["box_head_conv1/kernel"], 1, (1, 1), w["box_head_conv1/bias"]),
            "box_head_bn1",
        )
    )
    y = y.reshape(-1) @ w["box_head_fc1/kernel"] + w["box_head_fc1/bias"]
    y = swish(bn(y, "box_head_fc1_bn"))
    np.testing.assert_allclose(
        logits.numpy()[0, 0],
        y @ w["box_head_class_logits/kernel"] + w["box_head_class_logits/bias"],
        atol=1e-4,
    )
    np.testing.assert_allclose(
        deltas.numpy()[0, 0],
        (y @ w["box_head_box_deltas/kernel"] + w["box_head_box_deltas/bias"]).reshape(3, 4),
        atol=1e-4,
    )


def test_mask_head_with_batch_norm_after_the_deconv_matches_numpy():
    rng = np.random.default_rng(8)
    head = MaskHead(2, num_convs=1, conv_out_channels=3, conv_bias=True, deconv_norm=True)
    head.build((None, None, 2, 2, 2))
    w = _randomize(head, rng)
    x = rng.normal(size=(1, 1, 2, 2, 2)).astype(np.float32)
    logits = head(x, np.array([[1]])).numpy()[0, 0]  # the channel of class 1

    def bn(v, n):
        stats = (w[f"{n}/{k}"] for k in ("gamma", "beta", "moving_mean", "moving_variance"))
        return np_batch_norm(v, *stats, 1e-3)

    y = np.maximum(
        bn(
            np_conv2d(x[0, 0], w["mask_head_conv1/kernel"], 1, (1, 1), w["mask_head_conv1/bias"]),
            "mask_head_bn1",
        ),
        0,
    )
    kernel = w["mask_head_deconv/kernel"]  # [2, 2, out, in]
    up = np.zeros((4, 4, 3))
    for i in range(2):
        for j in range(2):
            for a in range(2):
                for b in range(2):
                    up[2 * i + a, 2 * j + b] = kernel[a, b] @ y[i, j]
    up = np.maximum(bn(up + w["mask_head_deconv/bias"], "mask_head_deconv_bn"), 0)
    expected = up @ w["mask_head_logits/kernel"][0, 0, :, 1] + w["mask_head_logits/bias"][1]
    np.testing.assert_allclose(logits, expected, atol=1e-4)


# --------------------------------------------------------------------------- input


def test_legacy_bilinear_resize_samples_without_half_pixel_centres():
    from maskspine.config import load_config
    from maskspine.data.pipeline import resize_image

    config = load_config(None, ["resize_method=bilinear_legacy"])
    rng = np.random.default_rng(9)
    image = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    out = resize_image(tf.constant(image), [8, 4], config).numpy()
    expected = np.zeros((8, 4, 3))
    for i in range(8):
        for j in range(4):
            expected[i, j] = np_bilinear_clamped(image.astype(np.float64), i * 5 / 8, j * 7 / 4)
    np.testing.assert_allclose(out, expected, atol=1e-3)
