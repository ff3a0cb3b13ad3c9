"""maskspine: SpineNet Mask R-CNN instance segmentation in Keras 3 / TensorFlow.

import maskspine

seg = maskspine.load("runs/<run>")           # maskspine.segmenter.load
results = seg.predict("photos/")             # per image: class names, scores, boxes, masks
model = maskspine.build_model(config)        # a fresh MaskRCNN (maskspine.modeling)
"""

import os as _os

__version__ = "0.1.0"

# TensorFlow runs its convolutions and matrix products on oneDNN by default only where the CPU
# has AVX512-VNNI, AVX512-BF16 or AMX; elsewhere (AVX2-only CPUs such as AMD Zen 3) on Eigen's
# kernels. maskspine asks for oneDNN on every x86 CPU: on a 2-core AMD EPYC Zen 3 the demo's
# training step takes 0.57 s against Eigen's 0.74, its inference 0.26 s against 0.41, and
# SpineNet-49's training step at 640 20.4 s against 25.8 (benchmarks/README.md, "oneDNN on
# AVX2-only CPUs"). It is read when TensorFlow starts: import maskspine first, or set
# TF_ENABLE_ONEDNN_OPTS yourself (0 keeps Eigen's kernels).
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def _fit_pools_to_cpu_quota() -> None:
    # TensorFlow sizes its default thread pools by the CPU affinity, not by a container's CPU
    # quota: where a quota allows fewer CPUs, the pools are sized to it (maskspine.threads).
    # Read when TensorFlow starts, like TF_ENABLE_ONEDNN_OPTS; TF_NUM_INTRAOP_THREADS and
    # TF_NUM_INTEROP_THREADS set by the user are kept. Never a reason for the import to fail.
    try:
        from maskspine.threads import fit_pools_to_cpu_quota

        fit_pools_to_cpu_quota()
    except Exception:  # noqa: BLE001
        pass


_fit_pools_to_cpu_quota()

#: Public names and the modules that hold them; imported on first use, so that
#: `import maskspine` (and every `--help`) does not wait for TensorFlow.
_LAZY = {
    "build_model": ("maskspine.modeling.factory", "build_mask_rcnn"),
    "load": ("maskspine.segmenter", "load"),
    "Segmenter": ("maskspine.segmenter", "Segmenter"),
    "ImagePrediction": ("maskspine.segmenter", "ImagePrediction"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'maskspine' has no attribute {name!r}")
