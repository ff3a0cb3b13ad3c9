"""Side by side: a reference checkpoint made by the original code, imported into maskspine.

    python tools/pretrained/compare.py --format modelgarden --model 49 /work/refdata/mg49_384
    python tools/pretrained/compare.py --format tpu --model 49 /work/refdata/tpu49_384

REFERENCE is an output directory of `../shared/tools/reference/{tpu,modelgarden}_make_reference.sh`
(or of `make_reference_any.py` here for the other model ids): `ckpt/` (a checkpoint written by
the original code) and `reference.npz` (its input and outputs on that input; conventions in
the docstrings of the scripts that wrote them). This script imports `ckpt/` with
`maskspine.pretrained.import_weights` (the config's input size set to the reference's),
runs maskspine on the same normalised input and prints, from the backbone down:

- features per level, RPN objectness logits and deltas per level (max |difference|);
- proposals (same order expected: max |difference| of boxes and scores);
- box head class logits and deltas on the reference's own proposals;
- detections matched one to one (same class; their box within 0.01 px, score within 1e-4,
  mask probabilities within 1e-3), the largest differences, and every unmatched detection
  with what is near it (NMS ties are the only differences allowed);
- parameter counts of both models;
- with `--precision bfloat16` (or float16), the import run again in that precision: its
  detections matched to the original's float32 ones (same class, IoU >= 0.5, as
  `benchmarks/precision_accuracy.py` matches) with their box and score differences;
- with `--jit-compile`, the import built for XLA and compiled: its detections against the
  graph's and the original's, with the same tolerances.

It needs no original code (the reference data holds their outputs); `--json FILE` also
writes the figures.
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
from pathlib import Path

import numpy as np

from maskspine.boxes import box_overlaps
from maskspine.evaluation.matching import (
    detection_agreement,
    format_summary,
    match_by_box_distance,
    match_by_iou,
    summarize_pairs,
)

REPO = Path(__file__).resolve().parents[2]

BOX_TOL, SCORE_TOL, MASK_TOL = 0.01, 1e-4, 1e-3


def _detections(found: dict) -> list[dict]:
    """The first `num` detections of a detection dict as `maskspine.evaluation.matching`'s
    detection dicts."""
    return [
        {"box": found["boxes"][i], "score": float(found["scores"][i]),
         "label": int(found["classes"][i])}
        for i in range(int(found["num"]))
    ]  # fmt: skip


def compare_precision(model, images, info, theirs: dict, precision: str) -> dict:
    """The original's float32 detections against the import's in another precision."""
    outputs = model({"images": images, "image_info": info}, training=False)
    n = int(outputs["num_detections"][0])
    low = [{"box": b, "score": float(s), "label": int(c)} for b, s, c in zip(
        outputs["detection_boxes"].numpy()[0][:n], outputs["detection_scores"].numpy()[0][:n],
        outputs["detection_classes"].numpy()[0][:n])]  # fmt: skip
    reference = _detections(theirs)
    pairs, missing, extra = match_by_iou(reference, low)
    figures = {"precision": precision, "computes_in": model.precision, "theirs": len(reference),
               "ours": len(low), "matched": len(pairs), "unmatched_theirs": missing,
               "unmatched_ours": extra, **summarize_pairs(pairs)}  # fmt: skip
    print(f"{precision} ({model.precision}) against the original's float32 detections: "
          f"{len(pairs)} of {len(reference)} matched (same class, IoU >= 0.5), {extra} of ours "
          f"without a partner")  # fmt: skip
    if pairs:
        print("  " + format_summary(figures))
    return figures


def _outputs(found) -> dict:
    return {
        "num": int(found["num_detections"][0]),
        "boxes": np.asarray(found["detection_boxes"])[0],
        "classes": np.asarray(found["detection_classes"])[0].astype(int),
        "scores": np.asarray(found["detection_scores"])[0],
        "masks": np.asarray(found["detection_masks"])[0],
    }


def compare_compiled(model, images, info, graph: dict, theirs: dict) -> dict:
    """The import compiled with XLA (its parts' XLA kernels) against the same import run by
    the graph, and against the original's detections."""
    from maskspine.predict import predict_function

    assert model.xla, "the model was not built for XLA"
    compiled = _outputs(predict_function(model)(images, info))
    figures = {}
    for name, reference in (("graph", graph), ("original", theirs)):
        agreement = detection_agreement(
            reference, compiled, box_tolerance=BOX_TOL, score_tolerance=SCORE_TOL,
            mask_tolerance=MASK_TOL,
        )  # fmt: skip
        figures[name] = agreement
        print(f"XLA-compiled against the {name}: {agreement['agreeing']} of "
              f"{agreement['reference']} detections agree ({100 * agreement['share']:.1f}%); "
              f"max |diff| box {agreement['max_box_diff']:.3g} px, score "
              f"{agreement['max_score_diff']:.3g}, mask {agreement['max_mask_diff']:.3g}")  # fmt: skip
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", type=Path)
    parser.add_argument("--format", required=True, choices=["tpu", "modelgarden"])
    parser.add_argument("--model", default="49")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--precision", help="also run the import in this precision")
    parser.add_argument(
        "--jit-compile",
        action="store_true",
        help="also run the import compiled with XLA (jit_compile: true) and compare its "
        "detections with the graph's and the original's",
    )
    args = parser.parse_args()

    import tensorflow as tf

    from maskspine.checkpoints import load_model
    from maskspine.pretrained import import_weights

    ref = dict(np.load(args.reference / "reference.npz", allow_pickle=True))
    size = int(ref["size"])
    figures: dict = {"reference": str(args.reference), "format": args.format, "model": args.model,
                     "size": size, "source": str(ref.get("source"))}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        report = import_weights(
            args.reference / "ckpt",
            format=args.format,
            model=args.model,
            output=run,
            overrides=[f"img_height={size}", f"img_width={size}"],
        )
        print(report.summary())
        model, config, _ = load_model(run)
        low = compiled = None
        if args.precision:
            low = load_model(run, overrides=[f"precision={args.precision}"])[0]
        if args.jit_compile:
            compiled = load_model(run, overrides=["jit_compile=true"])[0]

    images = tf.constant(ref["images"])
    info = tf.constant(ref["image_info"])
    features = model.backbone(images, training=False)
    rows = []

    def line(name: str, diff: float, scale: float | None = None) -> None:
        text = f"  {name:<34} max|diff| {diff:.3g}" + (
            f"  (max|value| {scale:.3g})" if scale else ""
        )
        rows.append(text)
        print(text)
        figures.setdefault("max_abs_diff", {})[name] = float(diff)

    print("intermediate outputs (maskspine vs the original on the same input):")
    for level in range(3, 8):
        theirs = ref[f"fpn_l{level}"]
        line(f"features P{level}", np.abs(features[f"P{level}"].numpy() - theirs).max(),
             np.abs(theirs).max())  # fmt: skip
    objectness, deltas = model.rpn_head(features, training=False)
    for level in range(3, 8):
        t_scores = ref[f"rpn_scores_l{level}"].reshape(1, -1)
        t_boxes = ref[f"rpn_boxes_l{level}"].reshape(1, -1, 4)
        line(f"RPN objectness logits P{level}", np.abs(objectness[level].numpy() - t_scores).max())
        line(f"RPN deltas P{level}", np.abs(deltas[level].numpy() - t_boxes).max())
    window = model.image_window(images, info)
    proposals, _, _ = model.proposal_generator(
        objectness, deltas, model.anchor_generator.by_level(), window, training=False
    )
    proposals = proposals.numpy()[0]
    t_rois = ref["rpn_rois"][0]
    same = np.abs(proposals - t_rois).max(axis=1) <= BOX_TOL
    nearest = np.abs(t_rois[:, None, :] - proposals[None, :, :]).max(-1).min(1)
    as_set = nearest <= BOX_TOL
    inside = np.abs(proposals - t_rois)[same].max() if same.any() else np.nan
    line("proposals (rows in the same place)", inside)
    t_scores = ref["rpn_roi_scores"][0]
    gaps = [min(abs(t_scores[i] - t_scores[k]) for k in (i - 1, i + 1) if 0 <= k < len(t_scores))
            for i in np.flatnonzero(~same)]  # fmt: skip
    figures["proposals"] = {"same_place": int(same.sum()), "as_a_set": int(as_set.sum()),
                            "moved_rows_score_gap_to_neighbour_max": float(max(gaps, default=0))}  # fmt: skip
    print(f"  proposals within {BOX_TOL} px: {same.sum()} of {len(same)} in the same place, "
          f"{as_set.sum()} as a set" + (f"; the moved rows' score differs from a neighbour's by "
          f"at most {max(gaps):.2g} (order of near-equal scores)" if gaps else ""))  # fmt: skip
    class_logits, box_deltas = model.box_head(
        model.roi_aligner(features, tf.constant(ref["rpn_rois"])), training=False
    )
    line(
        "class logits on their proposals", np.abs(class_logits.numpy() - ref["class_outputs"]).max()
    )
    line("box deltas on their proposals",
         np.abs(box_deltas.numpy().reshape(1, 1000, -1) - ref["box_outputs"]).max())  # fmt: skip

    outputs = model({"images": images, "image_info": info}, training=False)
    theirs = {"num": int(ref["num_detections"][0]), "boxes": ref["detection_boxes"][0],
              "classes": ref["detection_classes"][0].astype(int),
              "scores": ref["detection_scores"][0], "masks": ref["detection_masks"][0]}  # fmt: skip
    ours = {"num": int(outputs["num_detections"][0]),
            "boxes": outputs["detection_boxes"].numpy()[0],
            "classes": outputs["detection_classes"].numpy()[0].astype(int),
            "scores": outputs["detection_scores"].numpy()[0],
            "masks": outputs["detection_masks"].numpy()[0]}  # fmt: skip
    pairs, unmatched_theirs, unmatched_ours = match_by_box_distance(
        _detections(theirs), _detections(ours), BOX_TOL
    )
    agreement = detection_agreement(
        theirs, ours, box_tolerance=BOX_TOL, score_tolerance=SCORE_TOL, mask_tolerance=MASK_TOL
    )
    print("detections:")
    print(f"  theirs {theirs['num']}, ours {ours['num']}; matched one to one (same class, box "
          f"within {BOX_TOL} px): {len(pairs)}; also score within {SCORE_TOL} and mask within "
          f"{MASK_TOL}: {agreement['agreeing']} = {100.0 * agreement['share']:.1f}%")  # fmt: skip
    print(f"  max |diff| over matched: box {agreement['max_box_diff']:.3g} px, score "
          f"{agreement['max_score_diff']:.3g}, mask {agreement['max_mask_diff']:.3g}")  # fmt: skip
    figures["detections"] = {
        "theirs": theirs["num"], "ours": ours["num"], "matched": len(pairs),
        "matched_within_all_tolerances": agreement["agreeing"],
        "max_box_diff": agreement["max_box_diff"], "max_score_diff": agreement["max_score_diff"],
        "max_mask_diff": agreement["max_mask_diff"],
    }  # fmt: skip
    explain = []
    for i in unmatched_theirs:
        near = box_overlaps(theirs["boxes"][i : i + 1], ours["boxes"][: ours["num"]])[0][0]
        j = int(np.argmax(near)) if ours["num"] else -1
        text = (f"  theirs #{i}: class {theirs['classes'][i]} score {theirs['scores'][i]:.5f} "
                f"box {np.round(theirs['boxes'][i], 2).tolist()}; nearest of ours: #{j} class "
                f"{ours['classes'][j]} score {ours['scores'][j]:.5f} IoU {near[j]:.3f}")  # fmt: skip
        print(text)
        explain.append(text.strip())
    for j in unmatched_ours:
        text = (f"  ours #{j} (unmatched): class {ours['classes'][j]} score {ours['scores'][j]:.5f} "
                f"box {np.round(ours['boxes'][j], 2).tolist()}")  # fmt: skip
        print(text)
        explain.append(text.strip())
    figures["unmatched"] = explain

    if low is not None:
        figures["precision"] = compare_precision(low, images, info, theirs, args.precision)
    if compiled is not None:
        figures["xla"] = compare_compiled(compiled, images, info, ours, theirs)

    table = REPO / "tests" / "pretrained" / "tables" / f"{args.format}_{args.model}.json.gz"
    with gzip.open(table, "rt") as f:
        theirs_count = json.load(f)["num_parameters"]
    figures["parameters"] = {"ours": int(model.count_params()), "theirs": int(theirs_count)}
    print(f"parameters: ours {model.count_params():,}, theirs {theirs_count:,}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
