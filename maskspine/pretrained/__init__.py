"""Published SpineNet Mask R-CNN weights: tensorflow/tpu and Model Garden checkpoints into
maskspine run directories (`maskspine import-weights`).

    from maskspine.pretrained import import_weights

    report = import_weights("spinenet-49.tar.gz", format="tpu", model="49", output="runs/coco49")
    print(report.summary())
"""

from maskspine.pretrained.importer import (
    FORMATS,
    ImportReport,
    import_weights,
    pretrained_config_path,
)
from maskspine.pretrained.sources import WeightsImportError

__all__ = [
    "FORMATS",
    "ImportReport",
    "WeightsImportError",
    "import_weights",
    "pretrained_config_path",
]
