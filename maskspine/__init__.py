"""maskspine: SpineNet Mask R-CNN instance segmentation in Keras 3 / TensorFlow."""

__version__ = "0.1.0"
