"""Times SpineNet Mask R-CNN inference on this CPU: the whole model (median of N runs after
warm-up, tf.function, batch 1) and where the time goes (backbone, RPN + proposals, box
head + NMS, mask head).

    python benchmarks/inference.py [--config configs/mask_rcnn_49_640.yaml] [--runs 5]

Model Garden's figure for the same setting comes from
`../shared/tools/modelgarden_maskrcnn_infer.py` (see benchmarks/compare_modelgarden.sh,
which runs both in one go).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

from maskspine.config import load_config  # noqa: E402
from maskspine.modeling.mask_rcnn import build_mask_rcnn  # noqa: E402


def median_seconds(function, argument, runs: int) -> tuple[float, list[float]]:
    tf.nest.map_structure(lambda t: t.numpy(), function(argument))  # warm-up (tracing)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy(), function(argument))
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/mask_rcnn_49_640.yaml")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    config = load_config(args.config, args.overrides)
    model = build_mask_rcnn(config)
    size = (config.img_height, config.img_width)
    images = tf.random.uniform([1, *size, 3])
    print(
        f"model: SpineNet-{config.backbone.arch} Mask R-CNN, {config.num_classes} classes, "
        f"{model.count_params():,} parameters, input {size[0]}x{size[1]}, batch 1"
    )

    whole, times = median_seconds(tf.function(lambda x: model(x)), images, args.runs)
    print(f"whole model: median {whole:.3f} s  (runs: {', '.join(f'{t:.3f}' for t in times)})")

    # Stage by stage, each its own tf.function over the previous stage's outputs.
    features = tf.function(lambda x: model.backbone(x, training=False))
    image_shape = tf.constant([size], tf.float32)
    feats = features(images)
    propose = tf.function(lambda f: model.propose(f, image_shape, training=False)[2:])
    proposals, valid = propose(feats)
    box_stage = tf.function(lambda inputs: model.detect(*inputs, image_shape))

    @tf.function
    def box_head_only(inputs):
        f, p = inputs
        return model.box_head(model.box_features(f, p), training=False)

    detections = box_stage((feats, proposals, valid))
    mask_stage = tf.function(lambda inputs: model.detection_masks(*inputs))

    stages = [
        ("backbone", features, images),
        ("RPN + proposals (incl. per-level NMS)", propose, feats),
        ("box head: RoIAlign + convs + FC", box_head_only, (feats, proposals)),
        ("box head + class-wise decode + combined NMS", box_stage, (feats, proposals, valid)),
        (
            "mask head: RoIAlign + FCN on the detections",
            mask_stage,
            (feats, detections["detection_boxes"], detections["detection_classes"]),
        ),
    ]
    for name, function, argument in stages:
        seconds, _ = median_seconds(function, argument, args.runs)
        print(f"  {name}: median {seconds:.3f} s")


if __name__ == "__main__":
    main()
