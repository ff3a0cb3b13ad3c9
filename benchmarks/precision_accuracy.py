"""The accuracy cost of a precision: one checkpoint evaluated in float32 and in another
precision on the same validation split (COCO bbox and segm mAP), and its detections
matched one to one (same class, IoU >= 0.5, greedy by score) with their box and score
differences.

    python benchmarks/precision_accuracy.py --checkpoint runs/<shapes demo run> \\
        [--val-data shapes] [--precision bfloat16] [--set KEY=VALUE ...]

Prints both mAPs and their difference, then for the matched detections the median and
largest box-corner difference (pixels) and score difference, and how many detections of
each precision found no partner.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _iou(a, b) -> float:
    y1, x1 = max(a[0], b[0]), max(a[1], b[1])
    y2, x2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(y2 - y1, 0.0) * max(x2 - x1, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(reference: list[dict], other: list[dict]) -> tuple[list[tuple[dict, dict]], int, int]:
    """Greedy one-to-one matching by reference score: same class, IoU >= 0.5."""
    free = set(range(len(other)))
    pairs = []
    for detection in sorted(reference, key=lambda d: -d["score"]):
        candidates = [
            j
            for j in free
            if other[j]["label"] == detection["label"]
            and _iou(other[j]["box"], detection["box"]) >= 0.5
        ]
        if candidates:
            best = max(candidates, key=lambda j: _iou(other[j]["box"], detection["box"]))
            free.remove(best)
            pairs.append((detection, other[best]))
    return pairs, len(reference) - len(pairs), len(free)


def summarize(pairs: list[tuple[dict, dict]]) -> dict[str, float | None]:
    """Median and largest box-corner difference (pixels) and score difference of matched
    pairs (None without pairs)."""
    import numpy as np

    box = [float(np.abs(np.subtract(a["box"], b["box"])).max()) for a, b in pairs]
    score = [abs(a["score"] - b["score"]) for a, b in pairs]
    return {
        "box_diff_median": float(np.median(box)) if box else None,
        "box_diff_max": max(box, default=None),
        "score_diff_median": float(np.median(score)) if score else None,
        "score_diff_max": max(score, default=None),
    }


def format_summary(figures: dict[str, float | None]) -> str:
    return (
        f"box corners differ by median {figures['box_diff_median']:.3f} px, at most "
        f"{figures['box_diff_max']:.3f} px; scores by median {figures['score_diff_median']:.4f}, "
        f"at most {figures['score_diff_max']:.4f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--val-data", default=None)
    parser.add_argument("--precision", default="bfloat16")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    from maskspine.boxes import xywh_to_yxyx
    from maskspine.checkpoints import load_model
    from maskspine.evaluation.runner import (
        evaluate_results,
        evaluation_data,
        predict_coco_results,
    )

    results = {}
    for precision in ("float32", args.precision):
        model, config, weights = load_model(
            args.checkpoint, overrides=[*args.overrides, f"precision={precision}"]
        )
        data = evaluation_data(config, args.val_data)
        # one pass of the model: its COCO records feed both the evaluation and the matching
        records = predict_coco_results(
            model, data.dataset, data.category_ids, False, num_images=data.num_images
        )
        report = evaluate_results(records, data.annotations_file, print_summary=False)
        detections: dict[int, list[dict]] = {}
        for record in records:
            detections.setdefault(record["image_id"], []).append(
                {
                    "box": xywh_to_yxyx(record["bbox"]),
                    "score": record["score"],
                    "label": record["category_id"],
                }  # fmt: skip
            )
        results[precision] = (report.stats, detections)
        print(f"{precision} ({model.precision}): {weights}")
    (stats32, det32), (stats_low, det_low) = results["float32"], results[args.precision]
    for iou_type in ("bbox", "segm"):
        a, b = stats32[iou_type]["AP"], stats_low[iou_type]["AP"]
        print(f"{iou_type} mAP: float32 {a:.4f}, {args.precision} {b:.4f}, difference {b - a:+.4f}")
    all_pairs, missing, extra, total = [], 0, 0, 0
    for image_id, reference in det32.items():
        pairs, unmatched, unpaired = match(reference, det_low.get(image_id, []))
        missing, extra, total = missing + unmatched, extra + unpaired, total + len(reference)
        all_pairs += pairs
    extra += sum(len(v) for k, v in det_low.items() if k not in det32)
    print(
        f"detections: {total} in float32, {len(all_pairs)} matched, {missing} without a "
        f"{args.precision} partner, {extra} {args.precision} ones without a float32 partner"
    )
    if all_pairs:
        print("matched: " + format_summary(summarize(all_pairs)))


if __name__ == "__main__":
    main()
