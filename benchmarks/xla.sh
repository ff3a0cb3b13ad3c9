#!/usr/bin/env bash
# XLA against the graph: inference (batch 1) and the training step, at 256 (the shapes demo,
# batch 4) and at 640 (SpineNet-49, batch 2), both ways, the first call (trace + compile) its
# own column. The figures behind jit_compile's `auto` on a CPU (maskspine/jit.py).
# usage: bash benchmarks/xla.sh [OUT_DIR]        (idle machine; about half an hour on 2 cores)
set -euo pipefail
out=${1:-/tmp/maskspine-xla}
mkdir -p "$out"
classes=(--set "coco_classes=[background, circle, square, triangle]" --set num_classes=4)
for jit in false true; do
  maskspine benchmark configs/shapes_demo.yaml "${classes[@]}" --what infer --what train \
    --jit-compile "$jit" --runs 5 --json "$out/demo256_jit_$jit.json" | tee "$out/demo256_jit_$jit.txt"
  maskspine benchmark configs/mask_rcnn_49_640.yaml --what infer \
    --jit-compile "$jit" --runs 5 --json "$out/infer640_jit_$jit.json" | tee "$out/infer640_jit_$jit.txt"
  maskspine benchmark configs/mask_rcnn_49_640.yaml --what train --batch-size 2 \
    --jit-compile "$jit" --runs 5 --json "$out/train640_jit_$jit.json" | tee "$out/train640_jit_$jit.txt"
done
