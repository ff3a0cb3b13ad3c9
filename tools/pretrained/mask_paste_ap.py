"""Mask AP of maskspine's paster against tensorflow/tpu's, on masks round-tripped through 28x28.

    python tools/pretrained/mask_paste_ap.py [--images 100]

Every ground-truth instance of the synthetic shapes validation split (generated here, as
`maskspine data` does) is cut to its box and sampled on a 28x28 grid at the cell centres
(what the mask head learns to predict, in maskspine and in tensorflow/tpu alike), then
pasted back into the image with its exact box by

- "maskspine": `maskspine.postprocess.paste_masks` (the cells spread over the box's
  continuous extent, pixel centres at +0.5, bilinear, >= 0.5: Detectron2 / mmdetection);
- "tpu": the paster of tensorflow/tpu's COCO evaluation (`utils/mask_utils.py`
  `paste_instance_masks`, Detectron's): the mask padded with one zero cell on each side, the
  box grown by 30/28 about its centre and truncated to integer pixels, the 30x30 mask resized
  to (x2 - x1 + 1) x (y2 - y1 + 1) pixels with OpenCV's bilinear rule (half-pixel centres,
  edge cells repeated), > 0.5; written here in numpy.

Each pasted mask is a detection with the instance's class and a score of 1; pycocotools
gives the segm AP of each paster (the round trip's loss) and their difference.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import tempfile
from pathlib import Path

import numpy as np

MASK = 28


def cell_centre_samples(full_mask: np.ndarray, box_yxyx, size: int = MASK) -> np.ndarray:
    """[size, size] bilinear samples of a full-image mask at the box's cell centres (pixel p
    covers [p, p + 1), its centre at p + 0.5; outside the image counts as 0)."""
    y1, x1, y2, x2 = box_yxyx
    padded = np.pad(full_mask.astype(np.float64), 1)

    def axis(start, end, limit):
        centres = start + (np.arange(size) + 0.5) * (end - start) / size - 0.5 + 1  # padded index
        centres = np.clip(centres, 0, limit + 1)
        low = np.floor(centres).astype(int)
        high = np.minimum(low + 1, limit + 1)
        return low, high, centres - low

    ly, hy, wy = axis(y1, y2, full_mask.shape[0])
    lx, hx, wx = axis(x1, x2, full_mask.shape[1])
    top = padded[ly][:, lx] * (1 - wx) + padded[ly][:, hx] * wx
    bottom = padded[hy][:, lx] * (1 - wx) + padded[hy][:, hx] * wx
    return (top * (1 - wy)[:, None] + bottom * wy[:, None]).astype(np.float32)


def _resize_bilinear_half_pixel(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """OpenCV INTER_LINEAR on float32: source = (dst + 0.5) * scale - 0.5, edges repeated."""

    def axis(out, size):
        src = (np.arange(out) + 0.5) * (size / out) - 0.5
        src = np.clip(src, 0, size - 1)
        low = np.floor(src).astype(int)
        high = np.minimum(low + 1, size - 1)
        return low, high, src - low

    ly, hy, wy = axis(height, image.shape[0])
    lx, hx, wx = axis(width, image.shape[1])
    top = image[ly][:, lx] * (1 - wx) + image[ly][:, hx] * wx
    bottom = image[hy][:, lx] * (1 - wx) + image[hy][:, hx] * wx
    return top * (1 - wy)[:, None] + bottom * wy[:, None]


def paste_masks_tpu(masks: np.ndarray, boxes_yxyx: np.ndarray, image_size) -> np.ndarray:
    """tensorflow/tpu's `paste_instance_masks` rule (see the module docstring)."""
    height, width = image_size
    count, mask_h, mask_w = masks.shape
    scale = max((mask_w + 2.0) / mask_w, (mask_h + 2.0) / mask_h)
    pasted = np.zeros((count, height, width), np.uint8)
    for i in range(count):
        y1, x1, y2, x2 = boxes_yxyx[i]
        xc, yc = (x1 + x2) / 2, (y1 + y2) / 2
        half_w, half_h = (x2 - x1) / 2 * scale, (y2 - y1) / 2 * scale
        box = np.array([xc - half_w, yc - half_h, xc + half_w, yc + half_h]).astype(np.int32)
        w, h = max(box[2] - box[0] + 1, 1), max(box[3] - box[1] + 1, 1)
        padded = np.zeros((mask_h + 2, mask_w + 2), np.float32)
        padded[1:-1, 1:-1] = masks[i]
        resized = _resize_bilinear_half_pixel(padded, h, w) > 0.5
        x_0, x_1 = min(max(box[0], 0), width), min(max(box[2] + 1, 0), width)
        y_0, y_1 = min(max(box[1], 0), height), min(max(box[3] + 1, 0), height)
        pasted[i, y_0:y_1, x_0:x_1] = resized[
            y_0 - box[1] : y_1 - box[1], x_0 - box[0] : x_1 - box[0]
        ]
    return pasted


def segm_stats(gt, records) -> np.ndarray:
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(gt, gt.loadRes(records), "segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def round_trip(folder: Path) -> dict[str, np.ndarray]:
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    from maskspine.postprocess import paste_masks

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(folder / "labels.json"))
    records = {"maskspine": [], "tpu": []}
    for image_id in gt.getImgIds():
        info = gt.loadImgs(image_id)[0]
        size = (info["height"], info["width"])
        anns = gt.loadAnns(gt.getAnnIds(imgIds=image_id))
        if not anns:
            continue
        boxes = np.array([[a["bbox"][1], a["bbox"][0], a["bbox"][1] + a["bbox"][3],
                           a["bbox"][0] + a["bbox"][2]] for a in anns])  # fmt: skip
        small = np.stack([cell_centre_samples(gt.annToMask(a), b) for a, b in zip(anns, boxes)])
        for name, pasted in (("maskspine", paste_masks(small, boxes, size)),
                             ("tpu", paste_masks_tpu(small, boxes, size))):  # fmt: skip
            for ann, mask in zip(anns, pasted):
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                records[name].append({"image_id": image_id, "category_id": ann["category_id"],
                                      "segmentation": rle, "score": 1.0})  # fmt: skip
    return {name: segm_stats(gt, recs) for name, recs in records.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    from maskspine.data.shapes import ShapesSpec, write_shapes_split

    names = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    with tempfile.TemporaryDirectory() as tmp:
        for label, spec in (("shapes (default sizes)", ShapesSpec()),
                            ("shapes, small objects (12-40 px)",
                             ShapesSpec(min_shape_size=12, max_shape_fraction=0.15))):  # fmt: skip
            folder = Path(tmp) / label.split()[0] / str(math.floor(spec.min_shape_size))
            write_shapes_split(folder, args.images, seed=args.seed, split_index=1, spec=spec)
            stats = round_trip(folder)
            print(f"{label}, {args.images} images, GT masks through 28x28:")
            for name, values in stats.items():
                print(f"  {name:<10}" + "  ".join(f"{n} {v:.4f}" for n, v in zip(names, values)))
            diff = stats["maskspine"] - stats["tpu"]
            print("  difference" + "  ".join(f"{n} {v:+.4f}" for n, v in zip(names, diff)))


if __name__ == "__main__":
    main()
