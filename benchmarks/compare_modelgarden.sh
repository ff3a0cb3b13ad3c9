#!/usr/bin/env bash
# Ours and TF Model Garden's SpineNet-49 Mask R-CNN (81 classes, 640x640) one after the other,
# so that every figure comes from the same machine state: inference at batch 1 and a training
# step at batch 2 (SGD), ours in float32 and in bfloat16, Model Garden in float32; medians of 5
# after a warm-up. Model Garden lives in its own venv (../shared/tools/modelgarden-venv.sh); it is
# never a dependency of maskspine. Run it on an otherwise idle machine.
#   usage: bash benchmarks/compare_modelgarden.sh [RUNS=5]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
tools=${MODELGARDEN_TOOLS:-../shared/tools}
venv=$(bash "$tools/modelgarden-venv.sh")
config=configs/mask_rcnn_49_640.yaml
for precision in float32 bfloat16; do
  echo "== maskspine, $precision"
  maskspine benchmark "$config" --what infer --what train --runs "$runs" --precision "$precision" \
      --set test_batch_size=1 --set batch_size=2 --set opt_type=sgd
done
echo "== TF Model Garden, float32: inference"
"$venv/bin/python" "$tools/modelgarden_maskrcnn_infer.py" 81 2>/dev/null | grep -E "params|MG"
echo "== TF Model Garden, float32: training step"
"$venv/bin/python" "$tools/modelgarden_train_step.py" 640 2 2>/dev/null | grep -E "params|MG"
