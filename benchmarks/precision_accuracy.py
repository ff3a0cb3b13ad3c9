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

from maskspine.evaluation.matching import (  # noqa: E402
    format_summary,
    match_by_iou,
    summarize_pairs,
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
        pairs, unmatched, unpaired = match_by_iou(reference, det_low.get(image_id, []))
        missing, extra, total = missing + unmatched, extra + unpaired, total + len(reference)
        all_pairs += pairs
    extra += sum(len(v) for k, v in det_low.items() if k not in det32)
    print(
        f"detections: {total} in float32, {len(all_pairs)} matched, {missing} without a "
        f"{args.precision} partner, {extra} {args.precision} ones without a float32 partner"
    )
    if all_pairs:
        print("matched: " + format_summary(summarize_pairs(all_pairs)))


if __name__ == "__main__":
    main()
