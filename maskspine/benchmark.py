"""Timing a config on this machine: inference (the whole model and stage by stage), a
training step and the training input pipeline. What `maskspine benchmark` prints, and what
the scripts under `benchmarks/` call.

    rows = run_benchmark(load_config("configs/mask_rcnn_49_640.yaml"), what=("infer",))
    print(format_table(rows, machine_description()))

Every figure is a median over `runs` timed calls after `warmup` untimed ones (the first
traces the `tf.function` and, with `jit_compile`, compiles it: its time is its own column);
a call's time includes bringing its outputs to the host. The model's functions run compiled
when the model was built for XLA (config `jit_compile`). For each function the table gives
its convolution and matrix-product FLOPs (`maskspine.flops`, counted from its trace), the
GFLOP/s achieved and the share of the host's peak (the time that work takes at the host's
measured convolution and matrix peaks, over the time it took). Peak
memory is the process's resident-set high-water mark after each part (the parts run data,
then inference, then training, each using more than the one before, so each figure is that
part's peak).
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from maskspine.flops import FlopCount, count_flops, host_peaks, share_of_peak
from maskspine.precision import resolve_precision
from maskspine.threads import affinity_cores, host_cores, set_threads

if TYPE_CHECKING:
    import keras

    from maskspine.config import Config

WHAT = ("data", "infer", "train")


@dataclass
class Measurement:
    """Timed calls of one thing.

    Attributes:
        part: "infer", "train" or "data".
        name: what was timed ("whole model", "backbone", "training step", ...).
        seconds: each timed call, seconds.
        images: images per call.
        first_call: seconds of the first, untimed call (the trace, and XLA's compilation).
        flops: the FLOPs of one call (`maskspine.flops.count_flops`), when counted.
        peaks: the host's convolution and matrix peaks it is measured against.
        peak_memory_bytes: the process's peak resident memory after the part (0 if unknown).
        share_of: the name of the row this one is a part of (stages of the whole model).
    """

    part: str
    name: str
    seconds: list[float]
    images: int
    peak_memory_bytes: int = 0
    share_of: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    first_call: float | None = None
    flops: FlopCount | None = None
    peaks: dict[str, float] | None = None

    @property
    def gflops_per_second(self) -> float | None:
        """Convolution and matrix-product GFLOP/s achieved (None when not counted)."""
        return self.flops.dense / self.median / 1e9 if self.flops is not None else None

    @property
    def share_of_peak(self) -> float | None:
        """The time the dense work takes at the host's peaks over the time it took."""
        if self.flops is None or self.peaks is None:
            return None
        return share_of_peak(self.flops, self.median, self.peaks)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def images_per_second(self) -> float:
        return self.images / self.median if self.median > 0 else float("inf")


def time_calls(
    function: Callable[[], Any], runs: int = 5, warmup: int = 1
) -> tuple[float, list[float]]:
    """(seconds of the first call, seconds of each of `runs` calls after `warmup` untimed
    ones); each call's result is brought to numpy inside the timing (TensorFlow runs
    asynchronously). The first call holds the trace and, compiled, XLA's compilation."""
    import tensorflow as tf

    def call() -> None:
        tf.nest.map_structure(lambda value: np.asarray(value), function())

    first = 0.0
    for index in range(warmup):
        start = time.perf_counter()
        call()
        if index == 0:
            first = time.perf_counter() - start
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return first, seconds


def measure(
    part: str,
    name: str,
    function: Any,
    arguments: Sequence[Any],
    images: int,
    *,
    runs: int,
    peaks: dict[str, float] | None,
    share_of: str | None = None,
) -> Measurement:
    """A `Measurement` of `function(*arguments)` (a `tf.function`): its first call, `runs`
    timed calls, and its FLOPs counted from the trace the calls use. The first call's time
    is left out for a stage (`share_of`), which was traced to make the next stage's inputs."""
    first, seconds = time_calls(lambda: function(*arguments), runs)
    return Measurement(
        part,
        name,
        seconds,
        images,
        share_of=share_of,
        first_call=None if share_of else first,
        flops=count_flops(function, *arguments),
        peaks=peaks,
    )


def peak_memory_bytes() -> int:
    """The process's peak resident memory so far (0 where `resource` is missing)."""
    try:
        import resource
    except ImportError:  # Windows
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def machine_description() -> str:
    """CPU, cores (and a container's CPU quota where it allows fewer), native bfloat16, the
    kernels (Eigen where oneDNN is turned off), GPUs and the TensorFlow version: what sets
    the figures."""
    import tensorflow as tf

    from maskspine.precision import (
        cpu_bfloat16_flags,
        gpu_compute_capabilities,
        onednn_enabled,
        onednn_isa_limit,
    )

    cpu = platform.processor() or platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    gpus = gpu_compute_capabilities()
    gpu_text = ", ".join(f"GPU (compute {major}.{minor})" for major, minor in gpus) or "no GPU"
    flags = cpu_bfloat16_flags()
    bf16 = f"native bfloat16 ({', '.join(flags)})" if flags else "no native bfloat16"
    isa_limit = onednn_isa_limit()
    if not onednn_enabled():
        bf16 += "; Eigen's kernels (TF_ENABLE_ONEDNN_OPTS=0)"
    elif isa_limit:
        bf16 += f"; oneDNN held to {isa_limit}"
    allowed, affinity = host_cores(), affinity_cores()
    cores = f"{affinity} cores" + (f" (a CPU quota of {allowed})" if allowed < affinity else "")
    return (
        f"{cpu}, {cores}, {bf16}; {gpu_text}; TensorFlow {tf.__version__}, "
        f"Python {platform.python_version()}"
    )


# --------------------------------------------------------------------------- inference


def benchmark_inference(
    model: keras.Model,
    batch_size: int = 1,
    runs: int = 5,
    seed: int = 0,
    peaks: dict[str, float] | None = None,
) -> list[Measurement]:
    """The whole model, then each stage as its own `tf.function` over the previous stage's
    outputs: backbone; RPN + proposals; box head (multilevel RoIAlign, convs, FC); class-wise
    decode + NMS; mask head on the detections (RoIAlign, FCN, class pick). The stages do not
    overlap: together they are the whole model (their sum differs from it by what running
    them as separate functions costs or saves).

    Args:
        model: a `MaskRCNN` (compiled with XLA when it was built for it: `model.xla`).
        batch_size: images per call (random images of the config's size).
        peaks: the host's peaks (`maskspine.flops.host_peaks`) for the share of peak.
    """
    import tensorflow as tf

    from maskspine.predict import predict_function

    size = model.image_size
    images = tf.random.stateless_uniform([batch_size, *size, 3], seed=[seed, 0]) * 2.0 - 1.0
    info = tf.constant([[size, size, [1.0, 1.0], [0.0, 0.0]]], tf.float32)
    info = tf.tile(info, [batch_size, 1, 1])
    jit = bool(getattr(model, "xla", False))
    whole = measure(
        "infer", "whole model", predict_function(model), (images, info), batch_size,
        runs=runs, peaks=peaks,
    )  # fmt: skip

    # Each stage as its own function (compiled as the whole is), the parts' calls as
    # MaskRCNN.call makes them.
    window = model.image_window(images, info)
    backbone = tf.function(lambda x: model.backbone(x, training=False), jit_compile=jit)
    features = backbone(images)

    @tf.function(jit_compile=jit)
    def propose(f):
        objectness, deltas = model.rpn_head(f, training=False)
        proposals, _, valid = model.proposal_generator(
            objectness, deltas, model.anchor_generator.by_level(), window, training=False
        )
        return proposals, valid

    proposals, valid = propose(features)

    @tf.function(jit_compile=jit)
    def box_head(f, p):
        return model.box_head(model.roi_aligner(f, p), training=False)

    class_logits, box_deltas = box_head(features, proposals)
    detect = tf.function(
        lambda c, d, p, v: model.detection_generator(c, d, p, v, window), jit_compile=jit
    )
    detections = detect(class_logits, box_deltas, proposals, valid)
    masks = tf.function(model.detection_masks, jit_compile=jit)
    boxes, classes = detections["detection_boxes"], detections["detection_classes"]
    stages = [
        ("backbone", backbone, (images,)),
        ("RPN + proposals", propose, (features,)),
        ("box head (RoIAlign, convs, FC)", box_head, (features, proposals)),
        ("decode + NMS", detect, (class_logits, box_deltas, proposals, valid)),
        ("mask head (RoIAlign, FCN)", masks, (features, boxes, classes)),
    ]
    rows = [whole]
    for name, function, arguments in stages:
        rows.append(
            measure(
                "infer",
                name,
                function,
                arguments,
                batch_size,
                runs=runs,
                peaks=peaks,
                share_of=whole.name,
            )  # fmt: skip
        )
    peak = peak_memory_bytes()
    for row in rows:
        row.peak_memory_bytes = peak
    return rows


# --------------------------------------------------------------------------- training


def synthetic_training_batch(
    config: Config, batch_size: int, instances: int = 8, seed: int = 0
) -> dict[str, np.ndarray]:
    """A training batch of the architecture's contract with `instances` random boxes of
    random classes per image (ellipse masks), for timing a step without a data set."""
    rng = np.random.default_rng(seed)
    height, width = config.img_height, config.img_width
    size = config.mask_crop_size
    count = min(instances, config.num_gts)
    boxes = -np.ones((batch_size, config.num_gts, 4), np.float32)
    classes = -np.ones((batch_size, config.num_gts), np.int32)
    masks = np.zeros((batch_size, config.num_gts, size, size), np.uint8)
    cells = (np.arange(size) + 0.5) / size * 2 - 1
    ellipse = (cells[:, None] ** 2 + cells[None, :] ** 2 <= 1).astype(np.uint8)
    for b in range(batch_size):
        for g in range(count):
            box_h = rng.uniform(0.1, 0.5) * height
            box_w = rng.uniform(0.1, 0.5) * width
            y1, x1 = rng.uniform(0, height - box_h), rng.uniform(0, width - box_w)
            boxes[b, g] = [y1, x1, y1 + box_h, x1 + box_w]
            classes[b, g] = rng.integers(1, config.num_classes)
            masks[b, g] = ellipse
    info = np.array([[height, width], [height, width], [1, 1], [0, 0]], np.float32)
    return {
        "images": rng.normal(size=(batch_size, height, width, 3)).astype(np.float32),
        "image_info": np.tile(info, (batch_size, 1, 1)),
        "gt_boxes": boxes,
        "gt_classes": classes,
        "gt_is_crowd": np.zeros((batch_size, config.num_gts), bool),
        "gt_masks": masks,
    }


def benchmark_training(
    config: Config,
    batch_size: int | None = None,
    runs: int = 5,
    peaks: dict[str, float] | None = None,
) -> list[Measurement]:
    """One training step (forward, losses, backward, optimizer update) of a fresh model of
    `config` (its `precision`, `jit_compile` and optimizer), on a synthetic batch."""
    import tensorflow as tf

    from maskspine.modeling.factory import build_mask_rcnn
    from maskspine.training.optimizer import build_optimizer

    batch_size = batch_size or config.batch_size
    model = build_mask_rcnn(config)
    model.compile(
        optimizer=build_optimizer(config, steps_per_epoch=100, precision=model.precision),
        auto_scale_loss=False,
    )
    batch = {
        key: tf.constant(value)
        for key, value in synthetic_training_batch(config, batch_size).items()
    }
    step = tf.function(model.train_step, jit_compile=model.xla, autograph=False)  # as fit's
    row = measure("train", "training step", step, (batch,), batch_size, runs=runs, peaks=peaks)
    row.peak_memory_bytes = peak_memory_bytes()
    return [row]


# --------------------------------------------------------------------------- data


def benchmark_data(
    config: Config,
    source: str = "shapes",
    batch_size: int | None = None,
    batches: int = 20,
    runs: int = 5,
    data_dir: str | os.PathLike | None = None,
) -> list[Measurement]:
    """The training input pipeline (`build_dataset(training=True)`, augmentation on): the
    time of `batches` batches, `runs` times after a warm-up of as many."""
    from maskspine.data import build_dataset

    batch_size = batch_size or config.batch_size
    dataset = build_dataset(
        config, source, training=True, batch_size=batch_size, data_dir=data_dir, start_batch=0
    )
    iterator = iter(dataset)

    def some_batches():
        for _ in range(batches):
            batch = next(iterator)
        return batch["images"]

    first, seconds = time_calls(some_batches, runs)
    row = Measurement(
        "data", f"input pipeline ({batches} batches)", seconds, batches * batch_size,
        first_call=first,
    )  # fmt: skip
    row.peak_memory_bytes = peak_memory_bytes()
    return [row]


# --------------------------------------------------------------------------- the table


def run_benchmark(
    config: Config,
    *,
    model: keras.Model | None = None,
    what: Sequence[str] = WHAT,
    batch_size: int | None = None,
    runs: int = 5,
    data_source: str = "shapes",
    data_dir: str | os.PathLike | None = None,
    peaks: dict[str, float] | None = None,
) -> list[Measurement]:
    """The parts of `what` (in the order data, infer, train).

    Args:
        config: the config (classes resolved); its `precision` and `jit_compile` apply to
            every part, and with "train" in `what` its `intra_op_threads` and
            `inter_op_threads` too (`maskspine.threads`: they hold for the process).
        model: the model to time at inference (a loaded checkpoint); default a fresh one.
        batch_size: images per call (default `test_batch_size` for inference, `batch_size`
            for training and data).
        runs: timed calls per figure.
        peaks: the host's convolution and matrix peaks (default `flops.host_peaks` of the
            model's precision: measured once, then cached).
    """
    from maskspine.modeling.factory import build_mask_rcnn

    unknown = sorted(set(what) - set(WHAT))
    if unknown:
        raise ValueError(f"unknown part {unknown}: choose from {', '.join(WHAT)}")
    if "train" in what:
        # the pools training runs with (before anything runs on TensorFlow; they hold for
        # the process, so inference timed with them runs on them too)
        set_threads(config.intra_op_threads, config.inter_op_threads)
    rows: list[Measurement] = []
    if "data" in what:
        rows += benchmark_data(config, data_source, batch_size, runs=runs, data_dir=data_dir)
    if peaks is None and ("infer" in what or "train" in what):
        peaks = host_peaks(resolve_precision(config.precision))
    if "infer" in what:
        model = model or build_mask_rcnn(config)
        rows += benchmark_inference(model, batch_size or config.test_batch_size, runs, peaks=peaks)
    if "train" in what:
        rows += benchmark_training(config, batch_size, runs, peaks=peaks)
    return rows


def format_table(rows: Sequence[Measurement], header: str = "") -> str:
    """One table: part, what, median seconds per call, the first call's seconds (trace and
    compilation), images/s, share of the whole model, dense GFLOP/s and share of the host's
    peak, peak memory."""
    lines = [header] if header else []
    titles = (
        "part", "what", "median s", "first call s", "images/s", "share", "GFLOP/s",
        "of peak", "peak memory",
    )  # fmt: skip
    table = []
    wholes = {row.name: row.median for row in rows if row.share_of is None}
    for row in rows:
        share = f"{100 * row.median / wholes[row.share_of]:.0f} %" if row.share_of else ""
        memory = f"{row.peak_memory_bytes / 2**30:.1f} GiB" if row.peak_memory_bytes else ""
        rate = row.gflops_per_second
        of_peak = row.share_of_peak
        table.append(
            (
                row.part,
                ("  " if row.share_of else "") + row.name,
                f"{row.median:.3f}",
                f"{row.first_call:.2f}" if row.first_call is not None else "",
                f"{row.images_per_second:.2f}",
                share,
                f"{rate:.1f}" if rate is not None else "",
                f"{100 * of_peak:.0f} %" if of_peak is not None else "",
                memory,
            )
        )
    widths = [max(len(t), *(len(r[i]) for r in table)) for i, t in enumerate(titles)]
    lines.append("  ".join(t.ljust(w) for t, w in zip(titles, widths)))
    for r in table:
        lines.append(
            "  ".join(
                v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))
            )
        )
    for name, whole in wholes.items():
        parts = [row.median for row in rows if row.share_of == name]
        if parts:
            lines.append(
                f"The {len(parts)} stages of the {name} do not overlap and sum to "
                f"{100 * sum(parts) / whole:.0f} % of it (each runs as its own function)."
            )
    return "\n".join(lines)
