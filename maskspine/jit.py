"""XLA compilation: the config's `jit_compile` for one machine.

    jit_compile: auto | true | false        (config key; `--jit-compile` where a command takes
                                             `--precision`)

- `true`: the training step and inference run as XLA-compiled functions
  (`tf.function(jit_compile=True)`, and `Model.compile(jit_compile=True)` for `fit`); the
  model's parts take the kernels XLA compiles (RoIAlign and mask targets by bilinear
  gathers, the tiled NMS: `maskspine.modeling.factory`), which give the graph's values to
  float rounding. The first call pays the compilation.
- `false`: TensorFlow's graph, with its own kernels (`crop_and_resize`, its NMS ops).
- `auto`: by the kind of device that runs the model, as measured (`AUTO_RULE`,
  benchmarks/README.md "XLA"): always on a TPU (nothing else runs there), compiled on a GPU
  (XLA fuses what the graph runs op by op), and on a CPU as the measurements found.
"""

from __future__ import annotations

from maskspine.choices import JIT_COMPILE, check_choice

#: `auto`'s choice per device kind. CPU: the graph; on the 2-core hosts measured, XLA's
#: training step (the gathers' scatter-add gradients run serially) and its compile time
#: cost more than the fusion saves (benchmarks/README.md, "XLA").
AUTO_RULE = {"tpu": True, "gpu": True, "cpu": False}


def device_kind() -> str:
    """ "tpu" under a TPU strategy or with TPU devices, "gpu" with a visible GPU, else "cpu"."""
    import tensorflow as tf

    strategy = tf.distribute.get_strategy()
    if isinstance(strategy, tf.distribute.TPUStrategy) or tf.config.list_logical_devices("TPU"):
        return "tpu"
    if tf.config.list_physical_devices("GPU"):
        return "gpu"
    return "cpu"


def resolve_jit_compile(setting: str | bool, kind: str | None = None) -> bool:
    """Whether to compile with XLA: `setting` ("auto", "true", "false", or a bool) on a
    device of `kind` (default: this machine's, `device_kind`)."""
    if isinstance(setting, bool):
        return setting
    check_choice("jit_compile", setting, JIT_COMPILE)
    if setting != "auto":
        return setting == "true"
    return AUTO_RULE[kind or device_kind()]
