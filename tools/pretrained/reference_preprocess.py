"""The originals' inference pre-processing of a few uint8 images (run once, by hand).

Runs tensorflow/tpu `serving/inputs.py` `preprocess_image` (normalise, then TF1 bilinear
resize keeping the aspect ratio, pad to a multiple of the stride) and Model Garden's
`official/vision/serving/detection.py` steps (`preprocess_ops.normalize_image`, then
`resize_and_crop_image`) on the same images, desired size 640x640, stride 128, and writes
OUT.npz: `image{i}` uint8 [h, w, 3], `tpu_images{i}` / `modelgarden_images{i}` float32
[640, 640, 3], `tpu_info{i}` / `modelgarden_info{i}` [4, 2]. Compare with
tools/pretrained/compare_preprocess.py.

    TPUSRC=/tmp/tpusrc TF_USE_LEGACY_KERAS=1 /tmp/modelgarden-venv/bin/python \\
        tools/pretrained/reference_preprocess.py /work/refdata/preprocess.npz
"""

import os
import sys

import numpy as np

ROOT = os.path.join(os.environ.get("TPUSRC", "/tmp/tpusrc"), "models")
SIZES = [(480, 640), (500, 333), (200, 300), (640, 640)]
DESIRED, STRIDE = (640, 640), 128


def make_image(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth gradients plus noise, uint8 RGB."""
    rs = np.random.RandomState(seed)
    y, x = np.mgrid[0:height, 0:width] / float(max(height, width))
    image = np.stack([np.sin(6 * x + c) * np.cos(4 * y - c) for c in range(3)], -1)
    image = 128 + 100 * image + rs.normal(0, 20, image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def main() -> None:
    out = sys.argv[1]
    images = [make_image(h, w, i) for i, (h, w) in enumerate(SIZES)]
    results = {f"image{i}": image for i, image in enumerate(images)}

    # Model Garden (TF2, eager)
    import tensorflow as tf
    from official.vision.ops import preprocess_ops

    for i, image in enumerate(images):
        x = preprocess_ops.normalize_image(
            tf.cast(tf.constant(image), tf.float32),
            offset=preprocess_ops.MEAN_RGB,
            scale=preprocess_ops.STDDEV_RGB,
        )
        x, info = preprocess_ops.resize_and_crop_image(
            x,
            DESIRED,
            padded_size=preprocess_ops.compute_padded_size(DESIRED, STRIDE),
            aug_scale_min=1.0,
            aug_scale_max=1.0,
        )
        results[f"modelgarden_images{i}"], results[f"modelgarden_info{i}"] = x.numpy(), info.numpy()

    # tensorflow/tpu (TF1 graph): its packages resolve relative to official/detection.
    sys.path[:0] = [ROOT, os.path.join(ROOT, "official/detection")]
    for name in [m for m in sys.modules if m == "official" or m.startswith("official.")]:
        del sys.modules[name]  # its `utils` must not be Model Garden's
    from serving import inputs  # noqa: E402

    graph = tf.Graph()
    with graph.as_default():
        placeholder = tf.compat.v1.placeholder(tf.uint8, [None, None, 3])
        image_t, info_t = inputs.preprocess_image(placeholder, DESIRED, STRIDE)
        with tf.compat.v1.Session(graph=graph) as session:
            for i, image in enumerate(images):
                x, info = session.run([image_t, info_t], {placeholder: image})
                results[f"tpu_images{i}"], results[f"tpu_info{i}"] = x, info
    np.savez(out, **results)
    print("wrote", out, len(images), "images")


if __name__ == "__main__":
    main()
