#!/usr/bin/env bash
# Runs our inference benchmark and TF Model Garden's (same model family, 640x640, batch 1,
# median of 5 after warm-up) one after the other, so both figures come from the same machine
# state. Model Garden lives in its own venv (../shared/tools/modelgarden-venv.sh); it is never
# a dependency of maskspine.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=${MODELGARDEN_TOOLS:-../shared/tools}
venv=$(bash "$tools/modelgarden-venv.sh")
echo "== maskspine"; python benchmarks/inference.py --config configs/mask_rcnn_49_640.yaml --runs 5
echo "== TF Model Garden"; "$venv/bin/python" "$tools/modelgarden_maskrcnn_infer.py" 81 2>/dev/null | grep -E "params|MG"
