"""maskspine's pre-processing of uint8 images against the originals' (reference_preprocess.py).

    python tools/pretrained/compare_preprocess.py /work/refdata/preprocess.npz

For each image and each format, `maskspine.data.pipeline.preprocess_image` with the
configs/pretrained config (640x640, divider 128) against the original's normalised, resized,
padded image: the largest absolute difference, and image_info rows 0, 2, 3 (original size,
scale, offset). Row 1 differs by convention: the originals store the desired size
(640, 640) there, maskspine the scaled image's size; with `clip_boxes_to: input` the
model clips to the desired size as they do.
"""

from __future__ import annotations

import sys

import numpy as np


def main() -> None:
    import tensorflow as tf

    from maskspine.config import load_config
    from maskspine.data.pipeline import preprocess_image
    from maskspine.pretrained import pretrained_config_path

    ref = np.load(sys.argv[1])
    count = len([k for k in ref.files if k.startswith("image")])
    worst = {}
    for format in ("tpu", "modelgarden"):
        config = load_config(pretrained_config_path(format, "49"))
        for i in range(count):
            image = ref[f"image{i}"]
            ours, info = preprocess_image(tf.constant(image), config)
            theirs, their_info = ref[f"{format}_images{i}"], ref[f"{format}_info{i}"]
            diff = float(np.abs(ours.numpy() - theirs).max())
            rows = float(np.abs(info.numpy()[[0, 2, 3]] - their_info[[0, 2, 3]]).max())
            worst[format] = max(worst.get(format, 0.0), diff)
            print(f"{format:<12} image {image.shape[0]}x{image.shape[1]}: max |diff| {diff:.2e}"
                  f" (values up to {np.abs(theirs).max():.2f}); image_info rows 0, 2, 3 "
                  f"max |diff| {rows:.1e}; row 1 ours {info.numpy()[1].tolist()}, theirs "
                  f"{their_info[1].tolist()}")  # fmt: skip
    print("largest difference:", {k: f"{v:.2e}" for k, v in worst.items()})


if __name__ == "__main__":
    main()
