"""The fake models of the tests: callables with MaskRCNN's inference contract
(`{"images", "image_info"}` in, the detection dict of docs/architecture.md out) whose
detections are known in advance, so that everything after the model (batching, pasting,
JSON, drawing, videos) is checked against an answer computed in the test.

- `FixedDetections`: the same detections for every image.
- `BrightBox`: one detection per image, the box of its bright pixels.

Both count their traces and the batch sizes they saw, and carry a `precision` as MaskRCNN
does.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


class _Counting:
    precision = "float32"

    def __init__(self) -> None:
        self.traces = 0
        self.batch_sizes: list[int] = []

    def _count(self, images) -> tf.Tensor:
        self.traces += 1
        self.batch_sizes.append(images.shape[0])
        return tf.shape(images)[0]


class FixedDetections(_Counting):
    """The same detections for every image: boxes [D, 4] yxyx input pixels, scores, classes
    (0 = padding), masks [D, M, M]; `num_detections` the first that many."""

    def __init__(self, boxes, scores, classes, masks, num_detections=None):
        super().__init__()
        self.boxes = np.asarray(boxes, np.float32)
        self.scores = np.asarray(scores, np.float32)
        self.classes = np.asarray(classes, np.int32)
        self.masks = np.asarray(masks, np.float32)
        self.num = len(self.boxes) if num_detections is None else num_detections

    def __call__(self, inputs, training=False):
        batch = self._count(inputs["images"])

        def tiled(array):
            tensor = tf.constant(array)
            return tf.tile(tensor[None], [batch] + [1] * array.ndim)

        return {
            "detection_boxes": tiled(self.boxes),
            "detection_scores": tiled(self.scores),
            "detection_classes": tiled(self.classes),
            "num_detections": tf.fill([batch], tf.constant(self.num, tf.int32)),
            "detection_masks": tiled(self.masks),
        }


class BrightBox(_Counting):
    """One detection per image: the box of its bright pixels (normalised value above 0, i.e.
    brighter than about the mean colour), class 1, score 0.9, a full mask."""

    def __call__(self, inputs, training=False):
        images = inputs["images"]
        batch = self._count(images)
        bright = tf.cast(tf.reduce_mean(images, -1) > 0.0, tf.int32)  # [B, H, W]

        def extent(occupied):  # [B, N] -> first index, last index + 1
            size = tf.shape(occupied)[1]
            first = tf.argmax(occupied, 1, output_type=tf.int32)
            last = size - tf.argmax(occupied[:, ::-1], 1, output_type=tf.int32)
            return first, last

        y1, y2 = extent(tf.reduce_max(bright, 2))
        x1, x2 = extent(tf.reduce_max(bright, 1))
        return {
            "detection_boxes": tf.cast(tf.stack([y1, x1, y2, x2], -1), tf.float32)[:, None],
            "detection_scores": tf.fill([batch, 1], 0.9),
            "detection_classes": tf.ones([batch, 1], tf.int32),
            "num_detections": tf.ones([batch], tf.int32),
            "detection_masks": tf.ones([batch, 1, 28, 28]),
        }
