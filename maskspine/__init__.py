"""maskspine: SpineNet Mask R-CNN instance segmentation in Keras 3 / TensorFlow."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `maskspine.build_model` without importing TensorFlow at `import maskspine` time.
    if name == "build_model":
        from maskspine.modeling.mask_rcnn import build_mask_rcnn

        return build_mask_rcnn
    raise AttributeError(f"module 'maskspine' has no attribute {name!r}")
