"""maskspine: SpineNet Mask R-CNN instance segmentation in Keras 3 / TensorFlow.

import maskspine

seg = maskspine.load("runs/<run>")           # maskspine.segmenter.load
results = seg.predict("photos/")             # per image: class names, scores, boxes, masks
model = maskspine.build_model(config)        # a fresh MaskRCNN (maskspine.modeling)
"""

__version__ = "0.1.0"

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
