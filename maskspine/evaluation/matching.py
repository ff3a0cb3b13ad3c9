"""Detections of two runs matched one to one (the same model in two precisions, maskspine
against the original code), and how far the matched pairs differ. Host numpy.

    pairs, missing, extra = match_by_iou(reference, other)       # same class, IoU >= 0.5
    pairs, missing, extra = match_by_box_distance(reference, other, tolerance=0.01)
    print(format_summary(summarize_pairs(pairs)))

A detection is a dict with `box` (yxyx, 4 numbers), `score` and `label`. Both matchers are
greedy in descending reference score; `missing` counts the reference detections without a
partner, `extra` the other run's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from maskspine.boxes import box_overlaps

Detection = dict[str, Any]


def _by_score(detections: Sequence[Detection]) -> list[int]:
    return sorted(range(len(detections)), key=lambda i: -float(detections[i]["score"]))


def match_by_iou(
    reference: Sequence[Detection], other: Sequence[Detection], iou_threshold: float = 0.5
) -> tuple[list[tuple[Detection, Detection]], int, int]:
    """Each reference detection (by descending score) takes the free detection of `other`
    of the same class with the highest IoU, if at least `iou_threshold`.

    Returns:
        (pairs (reference, other), reference detections unmatched, other ones unmatched).
    """
    if not reference or not other:
        return [], len(reference), len(other)
    iou = box_overlaps([d["box"] for d in reference], [d["box"] for d in other])[0]
    free = np.ones(len(other), bool)
    labels = np.array([d["label"] for d in other])
    pairs = []
    for i in _by_score(reference):
        candidates = free & (labels == reference[i]["label"]) & (iou[i] >= iou_threshold)
        if candidates.any():
            best = int(np.argmax(np.where(candidates, iou[i], -1.0)))
            free[best] = False
            pairs.append((reference[i], other[best]))
    return pairs, len(reference) - len(pairs), int(free.sum())


def match_by_box_distance(
    reference: Sequence[Detection], other: Sequence[Detection], tolerance: float
) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Each reference detection (in the order given) takes the free detection of `other` of
    the same class whose box is nearest (the largest corner difference), if within
    `tolerance` pixels: the test of "the same detection" for two computations of one model.

    Returns:
        (index pairs (reference, other), unmatched reference indices, unmatched other ones).
    """
    used = np.zeros(len(other), bool)
    pairs, unmatched = [], []
    for i, detection in enumerate(reference):
        candidates = [
            j for j in range(len(other)) if not used[j] and other[j]["label"] == detection["label"]
        ]
        if candidates:
            distances = [
                float(np.abs(np.subtract(other[j]["box"], detection["box"])).max())
                for j in candidates
            ]
            best = candidates[int(np.argmin(distances))]
            if min(distances) <= tolerance:
                used[best] = True
                pairs.append((i, best))
                continue
        unmatched.append(i)
    return pairs, unmatched, [int(j) for j in np.flatnonzero(~used)]


def summarize_pairs(pairs: Sequence[tuple[Detection, Detection]]) -> dict[str, float | None]:
    """Median and largest box-corner difference (pixels) and score difference of matched
    pairs (None without pairs)."""
    box = [float(np.abs(np.subtract(a["box"], b["box"])).max()) for a, b in pairs]
    score = [abs(float(a["score"]) - float(b["score"])) for a, b in pairs]
    return {
        "box_diff_median": float(np.median(box)) if box else None,
        "box_diff_max": max(box, default=None),
        "score_diff_median": float(np.median(score)) if score else None,
        "score_diff_max": max(score, default=None),
    }


def format_summary(figures: dict[str, float | None]) -> str:
    """`summarize_pairs`' figures as one line."""
    if figures["box_diff_max"] is None:
        return "no matched pairs"
    return (
        f"box corners differ by median {figures['box_diff_median']:.3f} px, at most "
        f"{figures['box_diff_max']:.3f} px; scores by median {figures['score_diff_median']:.4f}, "
        f"at most {figures['score_diff_max']:.4f}"
    )


def detection_agreement(
    reference: dict[str, Any],
    other: dict[str, Any],
    *,
    box_tolerance: float = 0.01,
    score_tolerance: float = 1e-4,
    mask_tolerance: float = 1e-3,
) -> dict[str, float]:
    """How far two computations of one model's detections on one image agree.

    Args:
        reference, other: `num` and the first `num` rows of `boxes` [D, 4] yxyx, `scores`
            [D], `classes` [D] and `masks` [D, M, M] (box-relative probabilities).
        box_tolerance, score_tolerance, mask_tolerance: what counts as the same detection:
            the same class and box corners within `box_tolerance` pixels
            (`match_by_box_distance`), then its score and every mask value within theirs.

    Returns:
        `reference`, `other` (counts), `matched` (pairs by class and box), `agreeing`
        (matched and within every tolerance), `share` (agreeing / reference, 1.0 for two
        empty sets), and the largest box, score and mask differences over the pairs.
    """

    def detections(found: dict[str, Any]) -> list[Detection]:
        return [
            {"box": found["boxes"][i], "score": float(found["scores"][i]),
             "label": int(found["classes"][i])}
            for i in range(int(found["num"]))
        ]  # fmt: skip

    pairs, _, _ = match_by_box_distance(detections(reference), detections(other), box_tolerance)
    box = score = mask = 0.0
    agreeing = 0
    for i, j in pairs:
        box = max(box, float(np.abs(np.subtract(other["boxes"][j], reference["boxes"][i])).max()))
        score_diff = abs(float(other["scores"][j]) - float(reference["scores"][i]))
        mask_diff = float(np.abs(np.subtract(other["masks"][j], reference["masks"][i])).max())
        score, mask = max(score, score_diff), max(mask, mask_diff)
        agreeing += score_diff <= score_tolerance and mask_diff <= mask_tolerance
    count = int(reference["num"])
    return {
        "reference": count,
        "other": int(other["num"]),
        "matched": len(pairs),
        "agreeing": agreeing,
        "share": agreeing / count if count else float(int(other["num"]) == 0),
        "max_box_diff": box,
        "max_score_diff": score,
        "max_mask_diff": mask,
    }
