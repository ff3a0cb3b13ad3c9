"""Post-processing time per image: mask pasting, RLE encoding, the whole instance path.

    python benchmarks/postprocess.py [--runs 20] [--detections 100]

Synthetic detections (random 28 x 28 mask probabilities, boxes with log-uniform sizes) at
COCO-like image sizes; prints the median and the 90th percentile over `--runs` repetitions
of: `paste_masks`, `encode_rle`, `detections_to_instances` (boxes back to the original
image + paste + encode) and `to_coco_results` + `to_reference_json`. A "worst case" row
pastes 100 boxes that each cover the whole image.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from maskspine import formats, postprocess


def synthetic_outputs(rng, count: int, height: int, width: int, *, full_image: bool = False):
    if full_image:
        boxes = np.tile(np.array([0.0, 0.0, height, width], np.float32), (count, 1))
    else:
        sizes = np.exp(rng.uniform(np.log(8), np.log(min(height, width) * 0.8), (count, 2)))
        y1 = rng.uniform(0, height - sizes[:, 0])
        x1 = rng.uniform(0, width - sizes[:, 1])
        boxes = np.stack([y1, x1, y1 + sizes[:, 0], x1 + sizes[:, 1]], -1).astype(np.float32)
    # Smooth blobs rather than noise, so the RLEs have realistic run counts.
    yy, xx = np.meshgrid(np.linspace(-1, 1, 28), np.linspace(-1, 1, 28), indexing="ij")
    radius = rng.uniform(0.5, 1.0, (count, 1, 1))
    masks = 1.0 / (1.0 + np.exp(8 * (np.sqrt(yy**2 + xx**2)[None] - radius)))
    return {
        "detection_boxes": boxes,
        "detection_scores": rng.uniform(0.05, 1.0, count).astype(np.float32),
        "detection_classes": rng.integers(1, 81, count).astype(np.int32),
        "num_detections": np.array(count, np.int32),
        "detection_masks": masks.astype(np.float32),
    }


def timed(function, runs: int) -> tuple[float, float]:
    function()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    times.sort()
    return statistics.median(times) * 1e3, times[int(0.9 * (len(times) - 1))] * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--detections", type=int, default=100)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    names = [f"class{i}" for i in range(1, 81)]
    category_ids = list(range(1, 81))
    cases = [
        ("COCO 480x640", 480, 640, False),
        ("COCO 640x427", 640, 427, False),
        ("1024x1024", 1024, 1024, False),
        ("worst case 480x640, full-image boxes", 480, 640, True),
    ]
    print(f"{args.detections} detections, median / p90 over {args.runs} runs, milliseconds")
    header = f"{'image':<38}{'paste':>16}{'encode':>16}{'instances':>16}{'json':>16}"
    print(header)
    print("-" * len(header))
    for label, height, width, full in cases:
        outputs = synthetic_outputs(rng, args.detections, height, width, full_image=full)
        info = np.array([[height, width], [height, width], [1, 1], [0, 0]], np.float32)
        boxes = postprocess.boxes_to_original(outputs["detection_boxes"], info)
        masks = outputs["detection_masks"]
        pasted = postprocess.paste_masks(masks, boxes, (height, width))
        instances = postprocess.detections_to_instances(outputs, info)

        def write_json(instances=instances, height=height, width=width):
            formats.to_coco_results(instances, 1, category_ids)
            formats.to_reference_json(instances, (height, width), names, category_ids)

        figures = [
            timed(
                lambda m=masks, b=boxes, h=height, w=width: postprocess.paste_masks(m, b, (h, w)),
                args.runs,
            ),
            timed(lambda p=pasted: postprocess.encode_rle(p), args.runs),
            timed(lambda o=outputs, i=info: postprocess.detections_to_instances(o, i), args.runs),
            timed(write_json, args.runs),
        ]
        print(f"{label:<38}" + "".join(f"{f'{m:.1f} / {p:.1f}':>16}" for m, p in figures))


if __name__ == "__main__":
    main()
