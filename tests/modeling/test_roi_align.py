"""RoIAlign against a numpy transcription of torchvision's `roi_align(aligned=True)`; the
gather method (XLA-compilable) against the crop_and_resize method."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from maskspine.modeling.roi_align import assign_box_levels, multilevel_roi_align, roi_align

STRIDES = [8, 16, 32, 64]


# --- independent reference -------------------------------------------------------------------


def _bilinear(features: np.ndarray, y: float, x: float) -> np.ndarray:
    """torchvision's `bilinear_interpolate` (roi_align_kernel.cpp) on [H, W, C]."""
    height, width = features.shape[:2]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(features.shape[2])
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (
        hy * hx * features[y_low, x_low]
        + hy * lx * features[y_low, x_high]
        + ly * hx * features[y_high, x_low]
        + ly * lx * features[y_high, x_high]
    )


def _reference_roi_align(
    features: np.ndarray, box: np.ndarray, stride: int, size: int, ratio: int
) -> np.ndarray:
    """One box (yxyx input pixels) on [H, W, C], aligned=True, in float64 -> [S, S, C]."""
    features = features.astype(np.float64)
    y1, x1, y2, x2 = (float(c) / stride - 0.5 for c in box)
    bin_h, bin_w = (y2 - y1) / size, (x2 - x1) / size
    out = np.zeros((size, size, features.shape[2]))
    for ph in range(size):
        for pw in range(size):
            total = np.zeros(features.shape[2])
            for iy in range(ratio):
                y = y1 + ph * bin_h + (iy + 0.5) * bin_h / ratio
                for ix in range(ratio):
                    x = x1 + pw * bin_w + (ix + 0.5) * bin_w / ratio
                    total += _bilinear(features, y, x)
            out[ph, pw] = total / (ratio * ratio)
    return out


def _random_boxes(rng: np.random.Generator, count: int, extent: float, min_size: float):
    """Boxes [count, 4] yxyx of log-uniform sizes, partly crossing the image border."""
    size = np.exp(rng.uniform(math.log(min_size), math.log(extent), size=(count, 2)))
    start = rng.uniform(-0.1 * extent, extent, size=(count, 2)) - 0.5 * size
    return np.concatenate([start, start + size], axis=1).astype(np.float32)


# --- single level ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["crop_and_resize", "gather"])
@pytest.mark.parametrize(("output_size", "sampling_ratio"), [(7, 2), (7, 1), (14, 2), (14, 1)])
def test_roi_align_matches_torchvision_definition(output_size, sampling_ratio, method):
    rng = np.random.default_rng(output_size * 10 + sampling_ratio)
    stride = 8
    features = rng.normal(size=(2, 9, 12, 3)).astype(np.float32)
    image_h, image_w = 9 * stride, 12 * stride
    boxes = np.stack(
        [
            np.concatenate(
                [
                    _random_boxes(rng, 6, image_w, min_size=2.0),
                    # Hand-placed: whole map, a box inside one pixel, boxes on each border
                    # and boxes sticking out past [-1, H] in feature pixels.
                    [[0, 0, image_h, image_w], [13, 21, 15, 22]],
                    [[-12, -20, 30, 18], [40, 60, image_h + 14, image_w + 30]],
                    [[-30, 10, 5, 50], [image_h - 3, -8, image_h + 40, 4]],
                ]
            )
            for _ in range(2)
        ]
    ).astype(np.float32)

    out = roi_align(
        tf.constant(features),
        tf.constant(boxes),
        stride=stride,
        output_size=output_size,
        sampling_ratio=sampling_ratio,
        method=method,
    ).numpy()

    assert out.shape == (2, boxes.shape[1], output_size, output_size, 3)
    expected = np.stack(
        [
            [
                _reference_roi_align(features[b], box, stride, output_size, sampling_ratio)
                for box in boxes[b]
            ]
            for b in range(2)
        ]
    )
    np.testing.assert_allclose(out, expected, atol=1e-4)


@pytest.mark.parametrize("method", ["crop_and_resize", "gather"])
def test_border_rule_clamps_within_one_pixel_and_zeroes_beyond(method):
    # Ones everywhere, stride 1 (feature coordinate = input pixel - 0.5), one bin, 2x2 samples.
    features = tf.ones([1, 4, 4, 1])
    boxes = tf.constant(
        [
            [
                [-0.5, 1.5, 0.5, 2.5],  # y samples at -0.75, -0.25: clamped to row 0 -> 1
                [-1.5, 1.5, 0.5, 2.5],  # y samples at -1.5 (zero), -0.5 (row 0) -> 0.5
                [3.5, 1.5, 5.5, 2.5],  # y samples at 3.5 (row 3), 4.5 (> H = 4, zero) -> 0.5
                [-3.5, -3.5, -1.5, -1.5],  # all samples below -1 -> 0
                [1.5, 4.0, 2.5, 5.0],  # x samples at 3.75, 4.25: clamp, zero -> 0.5
            ]
        ]
    )
    out = roi_align(features, boxes, stride=1, output_size=1, sampling_ratio=2, method=method)
    np.testing.assert_allclose(out.numpy().ravel(), [1.0, 0.5, 0.5, 0.0, 0.5], atol=1e-6)


def test_gradient_reaches_features_and_is_the_adjoint():
    # RoIAlign is linear in the features, so <d sum(w * A f) / df, v> = sum(w * A v).
    rng = np.random.default_rng(3)
    features = tf.constant(rng.normal(size=(2, 8, 8, 2)).astype(np.float32))
    probe = tf.constant(rng.normal(size=(2, 8, 8, 2)).astype(np.float32))
    boxes = tf.constant(np.stack([_random_boxes(rng, 5, 64.0, 4.0) for _ in range(2)]))
    weights = tf.constant(rng.normal(size=(2, 5, 7, 7, 2)).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch([features, boxes])
        loss = tf.reduce_sum(weights * roi_align(features, boxes, stride=8, output_size=7))
    grad_features, grad_boxes = tape.gradient(loss, [features, boxes])
    assert grad_boxes is None  # as torchvision: no gradient to the boxes
    expected = tf.reduce_sum(weights * roi_align(probe, boxes, stride=8, output_size=7))
    np.testing.assert_allclose(
        tf.reduce_sum(grad_features * probe).numpy(), expected.numpy(), rtol=1e-4
    )


def test_padding_and_degenerate_boxes_give_finite_values():
    features = tf.random.normal([2, 5, 5, 3])
    boxes = tf.constant(
        [
            [[-1, -1, -1, -1], [0, 0, 0, 0], [10, 10, 10, 30]],
            [[-1, -1, -1, -1], [20, 20, 5, 5], [0, 0, 40, 40]],
        ],
        tf.float32,
    )
    out = roi_align(features, boxes, stride=8, output_size=7)
    assert out.shape == (2, 3, 7, 7, 3)
    assert np.isfinite(out.numpy()).all()


# --- level assignment ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("side", "level"),
    [(1, 0), (56, 0), (111, 0), (112, 1), (223, 1), (224, 2), (447, 2), (448, 3), (5000, 3)],
)
def test_level_of_square_box(side, level):
    boxes = tf.constant([[[10.0, 20.0, 10.0 + side, 20.0 + side]]])
    assert assign_box_levels(boxes, num_levels=4, finest_scale=56).numpy()[0, 0] == level


def test_level_assignment_follows_mmdetection_formula():
    rng = np.random.default_rng(5)
    boxes = _random_boxes(rng, 500, 800.0, min_size=1.0)
    scale = np.sqrt((boxes[:, 2] - boxes[:, 0]).astype(np.float64) * (boxes[:, 3] - boxes[:, 1]))
    expected = np.clip(np.floor(np.log2(scale / 56 + 1e-6)), 0, 3)
    got = assign_box_levels(tf.constant(boxes), num_levels=4).numpy()
    np.testing.assert_array_equal(got, expected)
    padding = tf.constant([[-1.0, -1.0, -1.0, -1.0], [5.0, 5.0, 2.0, 9.0]])
    np.testing.assert_array_equal(assign_box_levels(padding, num_levels=4).numpy(), [0, 0])


# --- multilevel ------------------------------------------------------------------------------


def _pyramid(rng: np.random.Generator, image_size: int, channels: int = 3, batch: int = 2):
    return {
        f"P{level}": rng.normal(
            size=(batch, image_size // 2**level, image_size // 2**level, channels)
        ).astype(np.float32)
        for level in range(3, 8)
    }


def _multilevel_boxes(rng: np.random.Generator, image_size: int, count: int) -> np.ndarray:
    boxes = _random_boxes(rng, count, 1.2 * image_size, min_size=8.0)
    boxes[:4] = [[0, 0, 60, 60], [10, 10, 150, 150], [0, 0, 300, 300], [-5, -5, 600, 600]]
    boxes[4:6] = [[-1, -1, -1, -1], [7, 7, 7, 7]]  # padding and zero-area boxes
    return boxes


def test_multilevel_matches_reference_on_assigned_level():
    rng = np.random.default_rng(7)
    image_size = 512
    pyramid = _pyramid(rng, image_size, batch=1)
    boxes = _multilevel_boxes(rng, image_size, 24)[None]
    out = multilevel_roi_align(
        {k: tf.constant(v) for k, v in pyramid.items()},
        tf.constant(boxes),
        output_size=7,
        featmap_strides=STRIDES,
    ).numpy()

    scale = np.sqrt(
        np.maximum(boxes[0, :, 2] - boxes[0, :, 0], 0) * (boxes[0, :, 3] - boxes[0, :, 1])
    )
    levels = np.clip(np.floor(np.log2(scale / 56 + 1e-6)), 0, 3).astype(int)
    assert set(levels) == {0, 1, 2, 3}
    for n, level in enumerate(levels):
        stride = STRIDES[level]
        expected = _reference_roi_align(pyramid[f"P{level + 3}"][0], boxes[0, n], stride, 7, 2)
        np.testing.assert_allclose(out[0, n], expected, atol=1e-4, err_msg=f"box {n}")


@pytest.mark.parametrize("int_keys", [False, True])
def test_multilevel_equals_single_level_on_chosen_level(int_keys):
    rng = np.random.default_rng(11)
    image_size = 256
    pyramid = {k: tf.constant(v) for k, v in _pyramid(rng, image_size).items()}
    if int_keys:
        pyramid = {int(k[1:]): v for k, v in pyramid.items()}
    boxes = tf.constant(np.stack([_multilevel_boxes(rng, image_size, 20) for _ in range(2)]))

    out = multilevel_roi_align(
        pyramid, boxes, output_size=14, featmap_strides=STRIDES, sampling_ratio=1
    )
    assert out.shape == (2, 20, 14, 14, 3)
    levels = assign_box_levels(boxes, num_levels=4).numpy()
    per_level = [
        roi_align(
            pyramid[3 + i if int_keys else f"P{3 + i}"],
            boxes,
            stride=stride,
            output_size=14,
            sampling_ratio=1,
        ).numpy()
        for i, stride in enumerate(STRIDES)
    ]
    expected = np.take_along_axis(
        np.stack(per_level, axis=2), levels[:, :, None, None, None, None], axis=2
    )[:, :, 0]
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-4)


@pytest.mark.parametrize("method", ["crop_and_resize", "gather"])
def test_multilevel_in_tf_function_keeps_static_shape_dtype_and_gradients(method):
    rng = np.random.default_rng(13)
    pyramid = {k: tf.constant(v, tf.float16) for k, v in _pyramid(rng, 128, channels=4).items()}
    boxes = tf.constant(np.stack([_multilevel_boxes(rng, 128, 8) for _ in range(2)]))

    @tf.function
    def pooled_and_gradients(features, boxes):
        with tf.GradientTape() as tape:
            tape.watch(features)
            out = multilevel_roi_align(
                features, boxes, output_size=7, featmap_strides=STRIDES, method=method
            )
            loss = tf.reduce_sum(tf.cast(out, tf.float32))
        assert out.shape == (2, 8, 7, 7, 4)
        return out, tape.gradient(loss, features)

    out, grads = pooled_and_gradients(pyramid, boxes)
    assert out.dtype == tf.float16
    assert np.isfinite(out.numpy()).all()
    assert grads["P7"] is None  # stride 128 is not among the pooled levels
    for key in ("P3", "P4", "P5", "P6"):
        assert np.isfinite(grads[key].numpy()).all()
    assert float(tf.reduce_sum(tf.abs(tf.cast(grads["P3"], tf.float32)))) > 0


def test_missing_level_is_a_clear_error():
    with pytest.raises(KeyError, match="stride 32"):
        multilevel_roi_align(
            {"P3": tf.zeros([1, 8, 8, 1]), "P4": tf.zeros([1, 4, 4, 1])},
            tf.zeros([1, 2, 4]),
            output_size=7,
            featmap_strides=[8, 16, 32, 64],
        )


# --- the gather method against the crop_and_resize method -------------------------------------


def _gather_test_boxes(rng: np.random.Generator, image_size: int, count: int) -> np.ndarray:
    """Random boxes of every level, and hand-placed ones: padding, zero-area, tiny, on the
    borders, partly and wholly outside the image."""
    boxes = _random_boxes(rng, count, 1.3 * image_size, min_size=1.0)
    s = float(image_size)
    boxes[:11] = [
        [-1, -1, -1, -1],
        [0, 0, 0, 0],
        [0, 0, s, s],
        [s - 2, s - 2, s + 5, s + 3],
        [-50, -50, -20, -20],
        [10, 10, 10.5, 10.3],
        [s + 20, s + 20, s + 100, s + 100],
        [-3, 0, 5, s],
        [0.2, 0.1, 0.6, 0.9],
        [s - 0.5, -0.5, s, 0.5],
        [-60, -40, s + 80, s + 90],
    ]
    return boxes


def _pooled_and_feature_gradients(pyramid, boxes, weights, method, **kwargs):
    with tf.GradientTape() as tape:
        tape.watch(pyramid)
        out = multilevel_roi_align(pyramid, boxes, method=method, **kwargs)
        loss = tf.reduce_sum(out * weights)
    grads = tape.gradient(loss, pyramid)
    return out.numpy(), {k: None if g is None else g.numpy() for k, g in grads.items()}


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("level_assignment", ["finest_scale", "canonical"])
@pytest.mark.parametrize(("output_size", "sampling_ratio"), [(7, 1), (7, 2), (14, 2), (4, 3)])
def test_gather_method_equals_crop_and_resize_forward_and_gradient(
    aligned, level_assignment, output_size, sampling_ratio
):
    from maskspine.training.trainer import _op_determinism

    rng = np.random.default_rng(17 + output_size + sampling_ratio)
    image_size = 384
    pyramid = {k: tf.constant(v) for k, v in _pyramid(rng, image_size, channels=4).items()}
    boxes = np.stack([_gather_test_boxes(rng, image_size, 48) for _ in range(2)])
    assert {0, 1, 2, 3} <= set(assign_box_levels(boxes, num_levels=4).numpy().ravel())
    weights = tf.constant(rng.normal(size=(2, 48, output_size, output_size, 4)).astype(np.float32))
    kwargs = dict(
        output_size=output_size,
        featmap_strides=STRIDES,
        sampling_ratio=sampling_ratio,
        aligned=aligned,
        level_assignment=level_assignment,
    )
    # crop_and_resize's CPU gradient adds from several threads without locks unless op
    # determinism is on: the reference gradient is taken with it on.
    with _op_determinism(True):
        expected, expected_grads = _pooled_and_feature_gradients(
            pyramid, tf.constant(boxes), weights, "crop_and_resize", **kwargs
        )
    got, grads = _pooled_and_feature_gradients(
        pyramid, tf.constant(boxes), weights, "gather", **kwargs
    )
    assert got.shape == expected.shape == (2, 48, output_size, output_size, 4)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    for key in ("P3", "P4", "P5", "P6"):
        scale = max(1.0, float(np.abs(expected_grads[key]).max()))
        np.testing.assert_allclose(grads[key], expected_grads[key], rtol=0, atol=1e-5 * scale)
    assert grads["P7"] is None  # stride 128 is not pooled from


def test_gather_method_compiles_with_xla_and_equals_the_uncompiled_call():
    rng = np.random.default_rng(19)
    pyramid = {k: tf.constant(v) for k, v in _pyramid(rng, 128, channels=4).items()}
    boxes = tf.constant(np.stack([_gather_test_boxes(rng, 128, 16) for _ in range(2)]))
    weights = tf.constant(rng.normal(size=(2, 16, 7, 7, 4)).astype(np.float32))

    def pooled_and_gradients(features, boxes):
        with tf.GradientTape() as tape:
            tape.watch(features)
            out = multilevel_roi_align(
                features, boxes, output_size=7, featmap_strides=STRIDES, method="gather"
            )
            loss = tf.reduce_sum(out * weights)
        return out, tape.gradient(loss, features)

    compiled = tf.function(pooled_and_gradients, jit_compile=True)
    out, grads = compiled(pyramid, boxes)
    expected, expected_grads = pooled_and_gradients(pyramid, boxes)
    # XLA compiled the whole function: its HLO holds the gathers, no crop_and_resize.
    hlo = compiled.experimental_get_compiler_ir(pyramid, boxes)(stage="hlo")
    assert "gather" in hlo and "CropAndResize" not in hlo
    np.testing.assert_allclose(out.numpy(), expected.numpy(), atol=1e-5)
    for key in ("P3", "P4", "P5", "P6"):
        np.testing.assert_allclose(grads[key].numpy(), expected_grads[key].numpy(), atol=1e-5)


def test_unknown_method_is_a_clear_error():
    with pytest.raises(ValueError, match="gather"):
        roi_align(tf.zeros([1, 4, 4, 1]), tf.zeros([1, 1, 4]), stride=8, output_size=2, method="x")


@pytest.mark.parametrize("sampling_ratio", [1, 2, 3])
def test_bin_means_gradient_is_autodiffs_of_pool_and_mask(sampling_ratio):
    # The hand-written gradient against TensorFlow's autodiff of the same expression
    # (an average pool of the masked samples), inside a tf.function whose box count is
    # unknown at trace time, as in the model.
    from maskspine.modeling.roi_align import _masked_bin_means

    rng = np.random.default_rng(sampling_ratio)
    side = 5 * sampling_ratio
    crops = tf.constant(rng.normal(size=(6, side, side, 3)).astype(np.float32))
    mask = tf.constant((rng.uniform(size=(6, side, side, 1)) > 0.3).astype(np.float32))
    upstream = tf.constant(rng.normal(size=(6, 5, 5, 3)).astype(np.float32))
    samples = tf.TensorSpec([None, side, side, None], tf.float32)
    bins = tf.TensorSpec([None, 5, 5, None], tf.float32)

    @tf.function(input_signature=[samples, tf.TensorSpec([None, side, side, 1]), bins])
    def both(crops, mask, upstream):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(crops)
            ours = _masked_bin_means(crops, mask, sampling_ratio)
            autodiff = tf.nn.avg_pool2d(crops * mask, sampling_ratio, sampling_ratio, "VALID")
        grads = [tape.gradient(out, crops, output_gradients=upstream) for out in (ours, autodiff)]
        return ours, autodiff, grads[0], grads[1]

    ours, autodiff, grad, expected = both(crops, mask, upstream)
    np.testing.assert_array_equal(ours.numpy(), autodiff.numpy())
    np.testing.assert_allclose(grad.numpy(), expected.numpy(), rtol=1e-6, atol=0)
    outside = np.broadcast_to(mask.numpy(), grad.shape) == 0
    assert (
        outside.any() and np.all(grad.numpy()[outside] == 0) and np.all(grad.numpy()[~outside] != 0)
    )
