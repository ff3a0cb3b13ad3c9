"""Published SpineNet Mask R-CNN weights: tensorflow/tpu and Model Garden checkpoints into
maskspine run directories (`maskspine import-weights`).

    from maskspine.pretrained import import_weights

    report = import_weights("spinenet-49.tar.gz", format="tpu", model="49", output="runs/coco49")
    print(report.summary())

Importing this package loads neither TensorFlow nor Keras (the CLI's error mapping imports
`WeightsImportError` from it); `import_weights` and the rest load on first use.
"""

from __future__ import annotations

from typing import Any

from maskspine.pretrained.sources import WeightsImportError

__all__ = [
    "FORMATS",
    "ImportReport",
    "WeightsImportError",
    "import_weights",
    "pretrained_config_path",
]


def __getattr__(name: str) -> Any:
    if name in ("FORMATS", "ImportReport", "import_weights", "pretrained_config_path"):
        from maskspine.pretrained import importer

        return getattr(importer, name)
    raise AttributeError(f"module 'maskspine.pretrained' has no attribute {name!r}")
