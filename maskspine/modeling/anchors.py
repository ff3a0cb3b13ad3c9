"""Multilevel anchors for the RPN.

An anchor for (ratio r, scale s) at stride t has base size t * s, height base * sqrt(r)
and width base / sqrt(r) (so r = height / width; with `ratio_convention`
"width_over_height", as tensorflow/tpu and Model Garden define their aspect ratios, the
width is base * sqrt(r) and the height base / sqrt(r)), and is centred on its feature-map
cell: ((y + 0.5) * t, (x + 0.5) * t). Anchors are yxyx in input pixels, float32.

Order inside a level: row y, then column x, then the A = len(ratios) * len(scales) anchors
of the cell with the ratio as the outer loop and the scale as the inner loop. This is the
order of an RPN head output [B, H_l, W_l, A] reshaped to [B, H_l * W_l * A].
Levels are log2(stride) and come in increasing stride order when concatenated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from maskspine.choices import RATIO_CONVENTIONS


def stride_to_level(stride: int) -> int:
    """The pyramid level of a stride (8 -> 3); strides must be powers of two."""
    level = int(round(math.log2(stride)))
    if 2**level != stride:
        raise ValueError(f"anchor stride {stride} is not a power of two (e.g. 8, 16, 32)")
    return level


def feature_size(image_size: tuple[int, int], stride: int) -> tuple[int, int]:
    """(H_l, W_l) = (ceil(H / stride), ceil(W / stride)) for an input of (H, W) pixels."""
    height, width = image_size
    return math.ceil(height / stride), math.ceil(width / stride)


def _cell_anchors(
    stride: int,
    scales: Sequence[float],
    ratios: Sequence[float],
    ratio_convention: str = "height_over_width",
) -> np.ndarray:
    """[A, 2] (height, width) of the anchors of one cell, ratio-major then scale."""
    if ratio_convention not in RATIO_CONVENTIONS:
        raise ValueError(
            f"ratio_convention must be one of {RATIO_CONVENTIONS}, got {ratio_convention!r}"
        )
    sizes = []
    for ratio in ratios:
        for scale in scales:
            base = stride * scale
            long_side, short_side = base * math.sqrt(ratio), base / math.sqrt(ratio)
            if ratio_convention == "height_over_width":
                sizes.append((long_side, short_side))
            else:
                sizes.append((short_side, long_side))
    return np.asarray(sizes, dtype=np.float64)


def _level_anchors(
    image_size: tuple[int, int],
    stride: int,
    scales: Sequence[float],
    ratios: Sequence[float],
    ratio_convention: str = "height_over_width",
) -> np.ndarray:
    """[H_l * W_l * A, 4] yxyx anchors of one level as a float32 numpy array."""
    rows, cols = feature_size(image_size, stride)
    sizes = _cell_anchors(stride, scales, ratios, ratio_convention)  # [A, 2]
    centre_y = (np.arange(rows, dtype=np.float64) + 0.5) * stride
    centre_x = (np.arange(cols, dtype=np.float64) + 0.5) * stride
    cy, cx = np.meshgrid(centre_y, centre_x, indexing="ij")  # [H_l, W_l]
    centres = np.stack([cy, cx], axis=-1)[:, :, None, :]  # [H_l, W_l, 1, 2]
    half = 0.5 * sizes[None, None, :, :]  # [1, 1, A, 2]
    shape = (rows, cols, len(sizes), 2)
    top_left = np.broadcast_to(centres - half, shape)
    bottom_right = np.broadcast_to(centres + half, shape)
    boxes = np.concatenate([top_left, bottom_right], axis=-1)  # [H_l, W_l, A, 4]
    return boxes.reshape(-1, 4).astype(np.float32)


def generate_anchors(
    image_size: tuple[int, int],
    strides: Sequence[int],
    scales: Sequence[float],
    ratios: Sequence[float],
    ratio_convention: str = "height_over_width",
) -> dict[int, tf.Tensor]:
    """Anchors of every level for an input of `image_size` pixels.

    Args:
        image_size: (height, width) of the network input in pixels.
        strides: one stride per level, powers of two (the reference's [8, 16, 32, 64, 128]).
        scales: anchor sizes in units of the stride (the reference's [3]).
        ratios: height / width ratios (the reference's [0.5, 1.0, 2.0]), or width / height
            ones with `ratio_convention` "width_over_height".
    Returns:
        {level: [H_l * W_l * A, 4] float32 yxyx input pixels}, level = log2(stride), with
        H_l = ceil(H / stride), W_l = ceil(W / stride), A = len(ratios) * len(scales).
        Anchors may extend past the image border.
    """
    return {
        stride_to_level(stride): tf.constant(
            _level_anchors(image_size, stride, scales, ratios, ratio_convention)
        )
        for stride in strides
    }


@keras.saving.register_keras_serializable(package="maskspine")
class AnchorGenerator:
    """The anchors of every level for one input size, computed once (constants of the graph).

    Args:
        image_size: (height, width) of the network input in pixels.
        strides, scales, ratios, ratio_convention: see `generate_anchors`; the convention
            "width_over_height" is tensorflow/tpu's (`models/official/detection/dataloader/
            anchor.py`) and Model Garden's (`official/vision/ops/anchor.py`).

    Attributes:
        levels: the levels, increasing.
        num_anchors: anchors per feature-map cell (A).
    """

    def __init__(
        self,
        image_size: Sequence[int],
        strides: Sequence[int],
        scales: Sequence[float],
        ratios: Sequence[float],
        ratio_convention: str = "height_over_width",
    ) -> None:
        self.image_size = tuple(int(v) for v in image_size)
        self.strides = [int(v) for v in strides]
        self.scales = [float(v) for v in scales]
        self.ratios = [float(v) for v in ratios]
        self.ratio_convention = ratio_convention
        self.num_anchors = len(self.scales) * len(self.ratios)
        self._anchors = {
            stride_to_level(stride): _level_anchors(
                self.image_size, stride, self.scales, self.ratios, ratio_convention
            )
            for stride in self.strides
        }
        self.levels = sorted(self._anchors)

    def by_level(self) -> dict[int, tf.Tensor]:
        """{level: [N_l, 4] float32 yxyx input pixels} (see `generate_anchors`)."""
        return {level: tf.constant(anchors) for level, anchors in self._anchors.items()}

    def concatenated(self) -> tf.Tensor:
        """[A, 4] float32: every level's anchors, in increasing level order."""
        return tf.constant(np.concatenate([self._anchors[level] for level in self.levels]))

    def get_config(self) -> dict:
        return {
            "image_size": list(self.image_size),
            "strides": self.strides,
            "scales": self.scales,
            "ratios": self.ratios,
            "ratio_convention": self.ratio_convention,
        }

    @classmethod
    def from_config(cls, config: dict) -> AnchorGenerator:
        return cls(**config)
