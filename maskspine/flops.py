"""Counting the arithmetic of a traced function, and this host's peak, so that a timing can
say how close to the limit it runs.

    count = count_flops(tf.function(model.train_step), batch)   # FlopCount
    count.dense          # convolution and matrix-product FLOPs (forward and gradients)
    count.other          # the rest: one per output element of arithmetic ops
    peaks = host_peaks("bfloat16")   # {"conv": FLOP/s, "matmul": FLOP/s}, measured once, cached

FLOPs are counted from the graph of a `tf.function` traced for the given inputs, op by op,
from the static shapes of each op's inputs and outputs (inside `tf.function` calls, while
loops and conditionals too), a multiply-add counted as 2:

- `Conv2D`, `DepthwiseConv2dNative` and their two gradients (`Conv2DBackpropInput`, which is
  also a transposed convolution, and `Conv2DBackpropFilter`): 2 x output elements x the
  filter's window x its input channels per group (for a gradient, the forward convolution's
  count);
- `MatMul`, `BatchMatMul*`: 2 x M x N x K (x batch);
- every other op that computes (element-wise arithmetic, reductions, ...): one per output
  element; ops that only move or reshape data count nothing.

A while loop's body counts once (its trip count is not known from the graph): NMS loops,
which hold no dense work, are undercounted in `other`.

The dense part is what a CPU's convolution and matrix kernels run at their peak; its share of
the host's measured peak (`host_peaks`: a 3x3 convolution and a large matrix product, median
of a few calls, cached per host and TensorFlow version under `~/.cache/maskspine`) is how
close to the limit a function runs.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maskspine.graphs import graph_ops

#: Ops counted as convolution or matrix work.
_CONV_OPS = {
    "Conv2D",
    "Conv2DBackpropInput",
    "Conv2DBackpropFilter",
    "DepthwiseConv2dNative",
    "DepthwiseConv2dNativeBackpropInput",
    "DepthwiseConv2dNativeBackpropFilter",
    "_FusedConv2D",
}
_MATMUL_OPS = {"MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3", "_FusedMatMul"}

#: Ops that move, reshape, select or make data without arithmetic: counted as nothing.
_FREE_OPS = {
    "Const", "Identity", "IdentityN", "Placeholder", "ReadVariableOp", "AssignVariableOp",
    "Reshape", "Shape", "ShapeN", "Size", "Rank", "Transpose", "ConcatV2", "Concat", "Pack",
    "Unpack", "Split", "SplitV", "Slice", "StridedSlice", "StridedSliceGrad", "Gather",
    "GatherV2", "GatherNd", "ScatterNd", "TensorScatterUpdate", "Tile", "ExpandDims",
    "Squeeze", "Fill", "ZerosLike", "OnesLike", "Range", "Cast", "StopGradient", "NoOp",
    "Pad", "PadV2", "MirrorPad", "BroadcastTo", "BroadcastArgs", "BroadcastGradientArgs",
    "Select", "SelectV2", "Where", "ReverseV2", "Bitcast", "PreventGradient",
    "StatefulPartitionedCall", "PartitionedCall", "While", "StatelessWhile", "If",
    "StatelessIf", "Enter", "Exit", "Merge", "Switch", "NextIteration", "LoopCond",
    "TensorListReserve", "TensorListSetItem", "TensorListGetItem", "TensorListStack",
    "TensorListFromTensor", "TensorListElementShape", "TensorListLength",
    "VarHandleOp", "ResourceGather", "OptionalFromValue", "OptionalGetValue",
    "ResourceApplyKerasMomentum", "AssignAddVariableOp", "AssignSubVariableOp",
    "VariableShape", "EnsureShape", "CheckNumerics", "CheckNumericsV2", "Assert",
    "DeviceIndex", "InvertPermutation", "TopKV2", "Unique", "ArgMax", "ArgMin",
}  # fmt: skip


@dataclass
class FlopCount:
    """FLOPs of one call of a traced function.

    Attributes:
        dense: convolution and matrix-product FLOPs.
        other: the other ops' (one per output element of each computing op).
        by_op: {op type: FLOPs} of every op type that counted.
        unknown_shapes: ops whose shapes were not all known (not counted).
    """

    dense: int = 0
    other: int = 0
    by_op: dict[str, int] = field(default_factory=dict)
    unknown_shapes: int = 0

    @property
    def total(self) -> int:
        return self.dense + self.other

    @property
    def conv(self) -> int:
        """The convolutions' FLOPs (forward and gradients)."""
        return sum(flops for kind, flops in self.by_op.items() if kind in _CONV_OPS)

    @property
    def matmul(self) -> int:
        """The matrix products' FLOPs."""
        return sum(flops for kind, flops in self.by_op.items() if kind in _MATMUL_OPS)

    def ideal_seconds(self, peaks: dict[str, float]) -> float:
        """The time the dense work takes at the host's peaks (`host_peaks`): convolutions at
        the convolution peak, matrix products at the matrix-product peak."""
        return self.conv / peaks["conv"] + self.matmul / peaks["matmul"]

    def add(self, op_type: str, flops: int, dense: bool) -> None:
        if dense:
            self.dense += flops
        else:
            self.other += flops
        self.by_op[op_type] = self.by_op.get(op_type, 0) + flops


def _shape(tensor: Any) -> list[int] | None:
    dims = tensor.shape.as_list() if tensor.shape.rank is not None else None
    if dims is None or any(d is None for d in dims):
        return None
    return dims


def _prod(values: list[int]) -> int:
    result = 1
    for value in values:
        result *= int(value)
    return result


def _conv_flops(op: Any) -> int | None:
    """2 x output elements x window x input channels per group, of the forward convolution."""
    kind = op.type
    if kind in ("Conv2D", "_FusedConv2D", "DepthwiseConv2dNative"):
        output, kernel = _shape(op.outputs[0]), _shape(op.inputs[1])
    elif kind in ("Conv2DBackpropInput", "DepthwiseConv2dNativeBackpropInput"):
        output, kernel = _shape(op.inputs[2]), _shape(op.inputs[1])  # out_backprop, filter
    else:  # Conv2DBackpropFilter and the depthwise one: the filter comes as its sizes
        output = _shape(op.inputs[2])
        kernel = _shape(op.outputs[0])
    if output is None or kernel is None:
        return None
    if kind.startswith("Depthwise"):  # [kh, kw, channels, multiplier]: one input channel each
        return 2 * _prod(output) * kernel[0] * kernel[1]
    return 2 * _prod(output) * kernel[0] * kernel[1] * kernel[2]


def _matmul_flops(op: Any) -> int | None:
    a, output = _shape(op.inputs[0]), _shape(op.outputs[0])
    if a is None or output is None:
        return None
    transpose_a = op.get_attr("transpose_a") if op.type in ("MatMul", "_FusedMatMul") else (
        op.get_attr("adj_x")
    )  # fmt: skip
    inner = a[-2] if transpose_a else a[-1]
    return 2 * _prod(output) * inner


def _count_op(op: Any, count: FlopCount) -> None:
    kind = op.type
    if kind in _CONV_OPS or kind in _MATMUL_OPS:
        flops = _conv_flops(op) if kind in _CONV_OPS else _matmul_flops(op)
        if flops is None:
            count.unknown_shapes += 1
        else:
            count.add(kind, flops, dense=True)
    elif kind not in _FREE_OPS and op.outputs and op.outputs[0].dtype.is_floating:
        shape = _shape(op.outputs[0])
        if shape is None:
            count.unknown_shapes += 1
        else:
            count.add(kind, _prod(shape), dense=False)


def count_graph_flops(graph: Any) -> FlopCount:
    """The FLOPs of a `tf.Graph` (a concrete function's `.graph`), nested functions included;
    of the ops that run (`graph_ops(live_only=True)`)."""
    count = FlopCount()
    for op in graph_ops(graph, live_only=True):
        _count_op(op, count)
    return count


def count_flops(function: Callable, *args: Any, **kwargs: Any) -> FlopCount:
    """The FLOPs of one call of `function` (a `tf.function`, or a Python function that is
    traced as one) on these arguments' shapes; nothing runs."""
    import tensorflow as tf

    if not hasattr(function, "get_concrete_function"):
        function = tf.function(function)
    concrete = function.get_concrete_function(*args, **kwargs)
    return count_graph_flops(concrete.graph)


# --------------------------------------------------------------------------- the host's peak


#: The calibration: 3x3 convolutions of the shapes a detector runs (a backbone level, a box
#: head's RoIs, a wide stride-1 map) and two matrix products; each peak is the best of its
#: shapes (kernels run some shapes faster than others: the best is what the host can do).
CONV_SHAPES = ((1, 160, 160, 256, 256), (256, 14, 14, 256, 256), (4, 64, 64, 128, 128))
MATMUL_SIZES = (2048, 4096)


def _cpu_key(precision: str) -> str:
    """The cache key of a host's peaks: its CPU model, flags and the cores this process may
    use (`maskspine.threads.host_cores`: a container's CPU quota counts), oneDNN's kernels or
    Eigen's (`TF_ENABLE_ONEDNN_OPTS`) and the instruction set oneDNN is held to
    (`ONEDNN_MAX_CPU_ISA`), TensorFlow's version, the precision and the calibration's shapes."""
    import tensorflow as tf

    from maskspine.precision import onednn_enabled, onednn_isa_limit
    from maskspine.threads import host_cores

    try:
        info = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        info = platform.processor()
    model = next((line for line in info.splitlines() if line.startswith("model name")), "")
    flags = next((line for line in info.splitlines() if line.startswith("flags")), "")
    calibration = f"{CONV_SHAPES}{MATMUL_SIZES}"
    cores = host_cores()
    digest = hashlib.sha1(f"{model}|{flags}|{cores}|{calibration}".encode()).hexdigest()
    isa = onednn_isa_limit()
    held = f"-isa{isa}" if isa else ""
    kernels = "" if onednn_enabled() else "-eigen"
    return f"{digest[:12]}{kernels}{held}-tf{tf.__version__}-{precision}"


def _median_seconds(function: Callable, *args: Any, runs: int = 5) -> float:
    function(*args).numpy()  # warm-up: the trace and the first call's allocations
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function(*args).numpy()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def measure_peaks(precision: str = "float32") -> dict[str, float]:
    """This host's convolution and matrix-product throughput in `precision` (FLOP/s): the best
    over `CONV_SHAPES` and `MATMUL_SIZES` of the median of 5 calls each."""
    import tensorflow as tf

    dtype = tf.dtypes.as_dtype(precision)
    conv = tf.function(lambda x, w: tf.nn.conv2d(x, w, 1, "SAME"))
    conv_rates = []
    for batch, height, width, channels, filters in CONV_SHAPES:
        x = tf.cast(tf.random.normal([batch, height, width, channels]), dtype)
        w = tf.cast(tf.random.normal([3, 3, channels, filters]), dtype)
        flops = 2 * batch * height * width * channels * filters * 9
        conv_rates.append(flops / _median_seconds(conv, x, w))
    matmul = tf.function(tf.matmul)
    matmul_rates = []
    for size in MATMUL_SIZES:
        a = tf.cast(tf.random.normal([size, size]), dtype)
        matmul_rates.append(2 * size**3 / _median_seconds(matmul, a, a))
    return {"conv": max(conv_rates), "matmul": max(matmul_rates)}


def peaks_cache_path() -> Path:
    """Where measured peaks are kept: `$MASKSPINE_DATA_DIR` or `~/.cache/maskspine`."""
    root = os.environ.get("MASKSPINE_DATA_DIR") or os.path.join("~", ".cache", "maskspine")
    return Path(root).expanduser() / "host_peaks.json"


def host_peaks(precision: str = "float32", *, refresh: bool = False) -> dict[str, float]:
    """`measure_peaks(precision)`, measured once per host (CPU model and flags, cores, the
    oneDNN instruction-set limit), TensorFlow version and precision, and read from
    `peaks_cache_path()` afterwards. Measured with TensorFlow's default thread pools (in a
    fresh process where this one has others: `maskspine.threads`), so that a share of peak
    is always of the whole host."""
    from maskspine.files import read_json, write_json_atomic
    from maskspine.threads import run_with_default_threads

    path = peaks_cache_path()
    key = _cpu_key(precision)
    cached = read_json(path, {})
    if not refresh and isinstance(cached.get(key), dict):
        return {name: float(value) for name, value in cached[key].items()}
    peaks = run_with_default_threads(measure_peaks, precision)
    cached[key] = peaks
    with contextlib.suppress(OSError):  # a read-only home: measured again next time
        write_json_atomic(path, cached)
    return peaks


def share_of_peak(count: FlopCount, seconds: float, peaks: dict[str, float]) -> float:
    """How close to the host's limit a call of `seconds` runs: the time its dense work takes
    at the peaks over the time it took (1.0: every second spent in convolutions and matrix
    products at their peak rates)."""
    return count.ideal_seconds(peaks) / max(seconds, 1e-12)


# ------------------------------------------------------------ the dense kernels, run alone


@dataclass(frozen=True)
class DenseOp:
    """One convolution or matrix product of a traced graph, as its kernel is called: the op
    type, each input's shape and dtype (an int32 size input, such as a convolution
    gradient's `filter_sizes`, as its value), the attributes it is called with and its FLOPs
    (counted as `count_flops` does)."""

    type: str
    inputs: tuple[tuple[str, tuple[int, ...], str], ...]  # (argument, shape or value, dtype)
    attrs: tuple[tuple[str, Any], ...]
    flops: int

    def random_inputs(self) -> dict[str, Any]:
        """Inputs of this op's shapes and dtypes, by argument name: seeded normal values, and
        the int32 size inputs as their values."""
        import tensorflow as tf

        inputs = {}
        for index, (name, shape, dtype) in enumerate(self.inputs):
            if dtype == "int32":
                inputs[name] = tf.constant(shape, tf.int32)
            else:
                values = tf.random.stateless_normal(shape, seed=[index, 0])
                inputs[name] = tf.cast(values, tf.dtypes.as_dtype(dtype))
        return inputs

    def function(self) -> Callable[..., Any]:
        """A `tf.function` running this op alone, with its attributes, on inputs given by
        argument name (as `random_inputs` makes them; arguments, so nothing is folded into
        a constant)."""
        import inspect

        import tensorflow as tf

        raw = getattr(tf.raw_ops, self.type)
        accepted = inspect.signature(raw).parameters
        attrs = {name: value for name, value in self.attrs if name in accepted}
        return tf.function(lambda **inputs: raw(**inputs, **attrs))


def dense_ops(graph: Any) -> collections.Counter:
    """{DenseOp: how many times the graph runs it} for the convolutions and matrix products
    of `graph` (a concrete function's `.graph`, nested functions included) whose shapes are
    all known; of the ops that run (`graph_ops(live_only=True)`)."""
    found: collections.Counter = collections.Counter()
    for op in graph_ops(graph, live_only=True):
        if op.type not in _CONV_OPS and op.type not in _MATMUL_OPS:
            continue
        flops = _conv_flops(op) if op.type in _CONV_OPS else _matmul_flops(op)
        output = _shape(op.outputs[0])
        if flops is None or output is None:
            continue
        inputs = []
        for argument, tensor in zip(op.op_def.input_arg, op.inputs):
            if tensor.dtype == "int32":  # the sizes of a gradient's output
                inputs.append((argument.name, tuple(output), "int32"))
                continue
            shape = _shape(tensor)
            if shape is None:
                break
            inputs.append((argument.name, tuple(shape), tensor.dtype.name))
        else:
            attrs = tuple(
                (attr.name, _hashable(op.get_attr(attr.name)))
                for attr in op.op_def.attr
                if attr.type != "type" or attr.name == "Tout"
            )
            found[DenseOp(op.type, tuple(inputs), attrs, flops)] += 1
    return found


def _hashable(value: Any) -> Any:
    """An attribute's value as a dict key: lists (strides, dilations) as tuples."""
    return tuple(value) if isinstance(value, list) else value


@dataclass
class KernelFloor:
    """The time a function's dense kernels take, each run alone at its own shapes (both
    cores, median of a few calls), one after another: what the kernels allow the function.

    Attributes:
        seconds: the sum over the function's dense ops of their time alone.
        rows: (DenseOp, times the function runs it, seconds of one run alone), slowest total
            first.
    """

    seconds: float
    rows: list[tuple[DenseOp, int, float]]

    def by_type(self) -> dict[str, float]:
        """{op type: seconds} of the floor."""
        totals: dict[str, float] = {}
        for op, count, seconds in self.rows:
            totals[op.type] = totals.get(op.type, 0.0) + count * seconds
        return totals


def kernel_floor(function: Callable, *args: Any, runs: int = 5, **kwargs: Any) -> KernelFloor:
    """`KernelFloor` of one call of `function` (traced, as `count_flops` does, for these
    arguments) on this host: each distinct convolution and matrix product is timed alone."""
    import tensorflow as tf

    if not hasattr(function, "get_concrete_function"):
        function = tf.function(function)
    ops = dense_ops(function.get_concrete_function(*args, **kwargs).graph)
    rows = []
    for op, count in ops.items():
        call = functools.partial(op.function(), **op.random_inputs())
        rows.append((op, count, _median_seconds(call, runs=runs)))
    rows.sort(key=lambda row: -row[1] * row[2])
    return KernelFloor(sum(count * seconds for _, count, seconds in rows), rows)
