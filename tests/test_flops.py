"""FLOP counting (`maskspine.flops`): single layers against hand counts, gradients, nested
graphs, and SpineNet-49 against a count of its layers' shapes made here and against
TensorFlow's own profiler."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from maskspine.flops import (
    count_flops,
    dense_ops,
    host_peaks,
    kernel_floor,
    measure_peaks,
    share_of_peak,
)


def test_a_convolution_a_dense_layer_and_a_transposed_convolution_by_hand():
    x = tf.zeros([2, 32, 32, 16])
    conv = keras.layers.Conv2D(8, 3, strides=2, padding="same")
    conv.build(x.shape)
    count = count_flops(lambda x: conv(x), x)
    assert count.dense == 2 * (2 * 16 * 16 * 8) * (3 * 3 * 16)  # 2 x outputs x window x C_in
    assert count.by_op["Conv2D"] == count.dense == count.conv and count.matmul == 0
    dense = keras.layers.Dense(10)
    dense.build((5, 64))
    assert count_flops(lambda v: dense(v), tf.zeros([5, 64])).matmul == 2 * 5 * 64 * 10
    up = keras.layers.Conv2DTranspose(4, 2, strides=2)
    up.build(x.shape)
    # A transposed convolution is the gradient of the convolution it inverts: 2 x its input
    # elements (the forward convolution's outputs) x window x its output channels.
    assert count_flops(lambda x: up(x), x).dense == 2 * (2 * 32 * 32 * 16) * (2 * 2 * 4)
    depthwise = keras.layers.DepthwiseConv2D(3, padding="same")
    depthwise.build(x.shape)
    assert count_flops(lambda x: depthwise(x), x).dense == 2 * (2 * 32 * 32 * 16) * 9


def test_gradients_count_twice_the_forward_work_and_nested_functions_count():
    x = tf.zeros([1, 16, 16, 8])
    w = tf.zeros([3, 3, 8, 4])

    @tf.function
    def inner(x, w):
        return tf.nn.conv2d(x, w, 1, "SAME")

    def step(x, w):
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            loss = tf.reduce_sum(inner(x, w))
        return loss, tape.gradient(loss, [x, w])

    forward = 2 * (16 * 16 * 4) * (3 * 3 * 8)
    count = count_flops(step, x, w)
    assert count.dense == 3 * forward  # forward, input gradient, filter gradient
    assert set(count.by_op) >= {"Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter"}
    assert count.other > 0  # the sum, the loss gradient's fill


def test_spinenet_49_against_its_layers_and_tensorflows_profiler():
    from tensorflow.python.profiler import model_analyzer, option_builder

    from maskspine.modeling.spinenet import build_spinenet

    backbone = build_spinenet("49", (256, 256, 3))
    images = tf.zeros([1, 256, 256, 3])
    function = tf.function(lambda x: backbone(x, training=False))
    count = count_flops(function, images)
    # Independently: every Conv2D layer of the model, from its output and kernel shapes.
    by_layers = 0
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, height, width, filters = layer.output.shape
            kernel_h, kernel_w, channels, _ = layer.kernel.shape
            by_layers += 2 * height * width * filters * kernel_h * kernel_w * channels
    assert count.dense == count.conv == by_layers
    assert 5e9 < count.dense < 2e10  # about 4.5 G multiply-adds at 256 x 256
    # TensorFlow's profiler counts every op of a graph: give it the graph TensorFlow itself
    # cuts down to what the outputs need (the plain convolutions whose BatchNorm folds them,
    # `maskspine.modeling.layers.Conv2D`, are traced but never run).
    graph = function.get_concrete_function(images).graph
    needed = tf.compat.v1.graph_util.extract_sub_graph(
        graph.as_graph_def(add_shapes=True), [tensor.op.name for tensor in graph.outputs]
    )
    assert sum(node.op == "Conv2D" for node in needed.node) < sum(
        op.type == "Conv2D" for op in graph.get_operations()
    )
    pruned = tf.Graph()
    with pruned.as_default():
        tf.graph_util.import_graph_def(needed, name="")
    options = option_builder.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    options["account_type_regexes"] = ["Conv2D"]
    profiled = model_analyzer.profile(pruned, options=options)
    assert count.dense == profiled.total_float_ops


def test_peaks_are_measured_once_and_share_of_peak_is_ideal_over_actual(monkeypatch, tmp_path):
    import maskspine.flops as flops

    monkeypatch.setenv("MASKSPINE_DATA_DIR", str(tmp_path))
    calls = []

    def fake_measure(precision):
        calls.append(precision)
        return {"conv": 100e9, "matmul": 200e9}

    monkeypatch.setattr(flops, "measure_peaks", fake_measure)
    assert host_peaks("float32") == {"conv": 100e9, "matmul": 200e9}
    assert host_peaks("float32") == {"conv": 100e9, "matmul": 200e9}
    host_peaks("bfloat16")
    assert calls == ["float32", "bfloat16"]  # cached per precision
    count = flops.FlopCount()
    count.add("Conv2D", 50_000_000_000, dense=True)  # 0.5 s at the conv peak
    count.add("MatMul", 20_000_000_000, dense=True)  # 0.1 s at the matmul peak
    assert share_of_peak(count, 1.2, host_peaks()) == pytest.approx(0.5)


@pytest.mark.slow  # a real calibration: a few seconds of convolutions and matrix products
def test_measured_peaks_are_plausible():
    peaks = measure_peaks("float32")
    assert 1e9 < peaks["conv"] < 1e13 and 1e9 < peaks["matmul"] < 1e13
    assert np.isfinite(list(peaks.values())).all()


def _conv_step(x, w, v):
    """A strided convolution, its two gradients and a matrix product."""
    with tf.GradientTape() as tape:
        tape.watch([x, w])
        y = tf.nn.conv2d(x, w, 2, "SAME")
        loss = tf.reduce_sum(y * y)
    grads = tape.gradient(loss, [x, w])
    return grads, tf.matmul(v, v, transpose_b=True)


def test_dense_ops_run_alone_give_what_the_graph_computes():
    x, w, v = tf.zeros([2, 9, 9, 3]), tf.zeros([3, 3, 3, 5]), tf.zeros([4, 6])
    ops = dense_ops(tf.function(_conv_step).get_concrete_function(x, w, v).graph)
    by_type = {op.type: op for op in ops}
    assert set(by_type) == {"Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter", "MatMul"}
    assert set(ops.values()) == {1}
    # Each op alone, on its own random inputs, against the same arithmetic written here.
    conv = by_type["Conv2D"]
    inputs = conv.random_inputs()
    expected = tf.nn.conv2d(inputs["input"], inputs["filter"], 2, "SAME")
    np.testing.assert_allclose(conv.function()(**inputs), expected, rtol=1e-5, atol=1e-5)
    assert conv.flops == 2 * (2 * 5 * 5 * 5) * (3 * 3 * 3)
    grad = by_type["Conv2DBackpropFilter"]
    inputs = grad.random_inputs()
    assert inputs["filter_sizes"].numpy().tolist() == [3, 3, 3, 5]
    with tf.GradientTape() as tape:
        tape.watch(filters := tf.zeros([3, 3, 3, 5]))
        y = tf.nn.conv2d(inputs["input"], filters, 2, "SAME")
    expected = tape.gradient(y, filters, output_gradients=inputs["out_backprop"])
    np.testing.assert_allclose(grad.function()(**inputs), expected, rtol=1e-4, atol=1e-4)
    matmul = by_type["MatMul"]
    inputs = matmul.random_inputs()
    expected = inputs["a"].numpy() @ inputs["b"].numpy().T
    np.testing.assert_allclose(matmul.function()(**inputs), expected, rtol=1e-5, atol=1e-5)


def test_a_layer_called_twice_is_one_op_run_twice_and_dtypes_are_kept():
    conv = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, dtype="mixed_bfloat16")
    x = tf.zeros([1, 8, 8, 2])
    conv.build(x.shape)
    graph = tf.function(lambda x: conv(conv(x)[..., :2])).get_concrete_function(x).graph
    ops = dense_ops(graph)
    assert len(ops) == 1
    ((op, count),) = ops.items()
    assert count == 2 and op.type == "Conv2D"
    assert [dtype for _, _, dtype in op.inputs] == ["bfloat16", "bfloat16"]
    assert op.function()(**op.random_inputs()).dtype == tf.bfloat16
    floor = kernel_floor(lambda x: conv(conv(x)[..., :2]), x, runs=3)
    ((row_op, row_count, seconds),) = floor.rows
    assert row_op == op and row_count == 2 and seconds > 0
    assert floor.seconds == pytest.approx(2 * seconds)
    assert floor.by_type() == {"Conv2D": pytest.approx(2 * seconds)}


def test_peaks_are_cached_apart_when_onednn_is_held_to_a_lower_instruction_set(
    monkeypatch, tmp_path
):
    import maskspine.flops as flops

    monkeypatch.setenv("MASKSPINE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    rates = iter([300e9, 100e9])
    monkeypatch.setattr(flops, "measure_peaks", lambda precision: {"conv": next(rates)})
    assert host_peaks("float32") == {"conv": 300e9}
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert host_peaks("float32") == {"conv": 100e9}  # measured again, not the AVX-512 figure
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert host_peaks("float32") == {"conv": 300e9}


def test_peaks_are_cached_apart_with_and_without_onednn(monkeypatch, tmp_path):
    import maskspine.flops as flops

    monkeypatch.setenv("MASKSPINE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
    rates = iter([120e9, 100e9])
    monkeypatch.setattr(flops, "measure_peaks", lambda precision: {"conv": next(rates)})
    assert host_peaks("float32") == {"conv": 120e9}
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    assert host_peaks("float32") == {"conv": 100e9}  # Eigen's kernels: measured again
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "false")
    assert host_peaks("float32") == {"conv": 100e9}  # the same setting, spelt otherwise
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
    assert host_peaks("float32") == {"conv": 120e9}


def test_peaks_are_cached_apart_for_the_cpus_a_quota_allows(monkeypatch, tmp_path):
    """A process held to fewer CPUs by a container's quota has a peak of its own."""
    import maskspine.flops as flops
    from maskspine import threads

    monkeypatch.setenv("MASKSPINE_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(threads, "affinity_cores", lambda: 8)
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: None)
    rates = iter([400e9, 100e9])
    monkeypatch.setattr(flops, "measure_peaks", lambda precision: {"conv": next(rates)})
    assert host_peaks("float32") == {"conv": 400e9}
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: 2)
    assert host_peaks("float32") == {"conv": 100e9}  # 2 of the 8 cores: measured again
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: None)
    assert host_peaks("float32") == {"conv": 400e9}
