"""Numeric precision: the config's `precision` as the dtype policy of one model.

    precision: float32 | bfloat16 | float16 | auto        (config key)

- `float32`: everything in float32 (the default: results equal to the original code's).
- `bfloat16`: Keras' `mixed_bfloat16` for the model's layers: convolutions and matmuls in
  bfloat16, variables in float32. Fast on CPUs with AMX-BF16 or AVX512-BF16 (Sapphire
  Rapids and later) and on GPUs of compute capability 8.0 or more; emulated, and no faster,
  elsewhere. No loss scaling is needed.
- `float16`: `mixed_float16`, for GPUs before compute capability 8.0; training scales the
  loss (`loss_scale` is the initial scale) in the optimizer.
- `auto`: bfloat16 where the hardware runs it natively (a GPU of compute capability 8.0 or
  more, else a CPU with AMX-BF16 / AVX512-BF16 that `ONEDNN_MAX_CPU_ISA` does not hold
  below them), float16 on older GPUs, float32 otherwise.
  Resolved on the machine that builds the model: an export records what it resolved to.

The policy is the model's own (`build_mask_rcnn` sets it on the layers it creates and puts
the process-wide one back), so two models of different precisions can live side by side.
The numerically sensitive parts stay float32 whatever the policy: the model's inputs
(`image_info`), box decoding and clipping, NMS, RoIAlign's sampling coordinates, the
softmax / sigmoid outputs and every loss.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from maskspine.choices import PRECISIONS

#: The Keras dtype policy of each resolved precision.
KERAS_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}

#: /proc/cpuinfo flags of CPUs that run bfloat16 matrix products natively.
_BFLOAT16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.cache
def cpu_bfloat16_flags(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, ...]:
    """The /proc/cpuinfo flags of native bfloat16 this CPU has (`amx_bf16`, `avx512_bf16`),
    in that order; empty where it has none or the file does not exist."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return ()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[-1].split())
            return tuple(flag for flag in _BFLOAT16_CPU_FLAGS if flag in flags)
    return ()


#: oneDNN's instruction sets (`ONEDNN_MAX_CPU_ISA`) below the first with bfloat16 dot
#: products (AVX512_CORE_BF16): held to one of these, oneDNN emulates bfloat16.
_ONEDNN_ISAS_WITHOUT_BFLOAT16 = (
    "SSE41",
    "AVX",
    "AVX2",
    "AVX2_VNNI",
    "AVX2_VNNI_2",
    "AVX512_CORE",
    "AVX512_CORE_VNNI",
)


def onednn_isa_limit(environ: Mapping[str, str] | None = None) -> str | None:
    """The instruction set oneDNN is held to (`ONEDNN_MAX_CPU_ISA`, or its former name
    `DNNL_MAX_CPU_ISA`), upper-cased; None where neither is set."""
    environ = os.environ if environ is None else environ
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        if environ.get(name, "").strip():
            return environ[name].strip().upper()
    return None


def onednn_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether TensorFlow runs oneDNN's kernels on the CPU: True unless `TF_ENABLE_ONEDNN_OPTS`
    says 0 / false (`import maskspine` sets it to 1 where it is unset, for every CPU; left to
    itself TensorFlow picks oneDNN only on CPUs with AVX512-VNNI, AVX512-BF16 or AMX)."""
    environ = os.environ if environ is None else environ
    return environ.get("TF_ENABLE_ONEDNN_OPTS", "").strip().lower() not in ("0", "false")


def cpu_has_native_bfloat16(
    cpuinfo: str = "/proc/cpuinfo", environ: Mapping[str, str] | None = None
) -> bool:
    """Whether this CPU has AMX-BF16 or AVX512-BF16 (read from /proc/cpuinfo; False where
    that file does not exist) and oneDNN may use it: False where `ONEDNN_MAX_CPU_ISA` holds
    oneDNN below AVX512_CORE_BF16 (e.g. `AVX2`), which makes its bfloat16 emulated, and where
    `TF_ENABLE_ONEDNN_OPTS=0` leaves the CPU to Eigen's kernels (no bfloat16 dot products)."""
    if onednn_isa_limit(environ) in _ONEDNN_ISAS_WITHOUT_BFLOAT16:
        return False
    if not onednn_enabled(environ):
        return False
    return bool(cpu_bfloat16_flags(cpuinfo))


def gpu_compute_capabilities() -> list[tuple[int, int]]:
    """The compute capability of each visible GPU (empty without GPUs)."""
    import tensorflow as tf

    found = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        found.append(tuple(details.get("compute_capability", (0, 0))))
    return found


def resolve_precision(precision: str) -> str:
    """`float32`, `bfloat16` or `float16` for a config's `precision` on this machine.

    Raises:
        ValueError: an unknown name.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    gpus = gpu_compute_capabilities()
    if gpus:
        return "bfloat16" if min(gpus) >= (8, 0) else "float16"
    return "bfloat16" if cpu_has_native_bfloat16() else "float32"


@contextlib.contextmanager
def dtype_policy(precision: str) -> Iterator[None]:
    """Layers created inside get the Keras policy of a resolved `precision`; the
    process-wide policy is put back afterwards."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(KERAS_POLICIES[precision])
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
