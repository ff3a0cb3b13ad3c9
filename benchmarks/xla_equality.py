"""A trained run compiled with XLA against the same run in TensorFlow's graph: detections on its
validation images, and one training step from the same weights, batch and step seed.

    python benchmarks/xla_equality.py RUN [--val-data shapes] [--images 100]

Inference: the run loaded twice, `jit_compile: false` (crop_and_resize, TensorFlow's NMS,
the graph) and `jit_compile: true` (the gathers and the tiled NMS, compiled); each image's
detections matched one to one (`maskspine.evaluation.matching.detection_agreement`: the
same class, box corners within 0.01 px, score within 1e-4, mask within 1e-3). Training: one
step (the samplers seeded by step 7; BatchNorm on batch statistics, then on its moving
statistics) of each model on the same batch of the run's training data, with deterministic
kernels on the graph's side; every loss and the global gradient norm compared relatively.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from maskspine.checkpoints import load_model  # noqa: E402
from maskspine.data import build_dataset  # noqa: E402
from maskspine.evaluation.matching import detection_agreement  # noqa: E402
from maskspine.predict import predict_function  # noqa: E402
from maskspine.training.trainer import _op_determinism  # noqa: E402


def detections(outputs: dict, index: int) -> dict:
    return {
        "num": int(outputs["num_detections"][index]),
        "boxes": np.asarray(outputs["detection_boxes"][index]),
        "classes": np.asarray(outputs["detection_classes"][index]),
        "scores": np.asarray(outputs["detection_scores"][index]),
        "masks": np.asarray(outputs["detection_masks"][index]),
    }


def step_figures(model, batch, training: bool) -> tuple[dict, float]:
    """One training step's losses and global gradient norm (no update); `training` False
    runs BatchNorm on its moving statistics."""

    def step(batch):
        with tf.GradientTape() as tape:
            losses = model.compute_losses(batch, training=training, step=tf.constant(7, tf.int64))
        gradients = tape.gradient(losses["loss"], model.trainable_variables)
        return losses, tf.linalg.global_norm(gradients)

    function = tf.function(step, jit_compile=model.xla)
    losses, norm = function(batch)
    return {key: float(value) for key, value in losses.items()}, float(norm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--val-data", default="shapes")
    parser.add_argument("--train-data", default="shapes")
    parser.add_argument("--images", type=int, default=100)
    args = parser.parse_args()
    graph, config, weights = load_model(args.run, overrides=["jit_compile=false"])
    compiled, _, _ = load_model(args.run, overrides=["jit_compile=true"])
    print(f"{weights}: XLA {compiled.xla} against the graph {graph.xla}")

    dataset = build_dataset(config, args.val_data, training=False, batch_size=1)
    totals = {"reference": 0, "matched": 0, "agreeing": 0}
    worst = {"max_box_diff": 0.0, "max_score_diff": 0.0, "max_mask_diff": 0.0}
    count = 0
    for batch in dataset.take(args.images):
        count += 1
        a = predict_function(graph)(batch["images"], batch["image_info"])
        b = predict_function(compiled)(batch["images"], batch["image_info"])
        agreement = detection_agreement(detections(a, 0), detections(b, 0))
        for key in totals:
            totals[key] += agreement[key]
        for key in worst:
            worst[key] = max(worst[key], agreement[key])
    share = totals["agreeing"] / max(totals["reference"], 1)
    print(
        f"inference, {count} images: {totals['agreeing']} of {totals['reference']} detections "
        f"agree ({100 * share:.2f} %), {totals['matched']} matched by class and box; largest "
        f"differences over the matched: box {worst['max_box_diff']:.3g} px, score "
        f"{worst['max_score_diff']:.3g}, mask {worst['max_mask_diff']:.3g}"
    )

    batch = next(iter(build_dataset(config, args.train_data, training=True, start_batch=0)))
    for training in (True, False):
        print(f"training step, BatchNorm on {'batch' if training else 'moving'} statistics:")
        with _op_determinism(True):
            graph_losses, graph_norm = step_figures(graph, batch, training)
        compiled_losses, compiled_norm = step_figures(compiled, batch, training)
        for key, value in graph_losses.items():
            relative = abs(compiled_losses[key] - value) / max(abs(value), 1e-12)
            print(
                f"  {key:<14} graph {value:.6f}  XLA {compiled_losses[key]:.6f}  rel {relative:.2e}"
            )
        relative = abs(compiled_norm - graph_norm) / graph_norm
        print(
            f"  gradient norm  graph {graph_norm:.6f}  XLA {compiled_norm:.6f}  rel {relative:.2e}"
        )


if __name__ == "__main__":
    main()
