#!/bin/bash
# Reference data (checkpoint written by the original code + its outputs) for any SpineNet model id:
# runs a copy of ../shared/tools/reference/{tpu,modelgarden}_make_reference.py with the model id
# changed (tensorflow/tpu: configs/spinenet/spinenet{ID}_mrcnn.yaml; Model Garden:
# maskrcnn_spinenet_coco with backbone.spinenet.model_id = ID). The copy lives in a temp dir.
# usage: make_reference_any.sh tpu|modelgarden MODEL_ID OUTDIR [SIZE=256] [SEED=5]
# env: SHARED (default ../shared relative to the repo: /work/shared), PY, TPUSRC, TPU_MIRROR as the
#      shared scripts take them.
set -euo pipefail
FORMAT=${1:?usage: make_reference_any.sh tpu|modelgarden MODEL_ID OUTDIR [SIZE] [SEED]}
MODEL=${2:?model id}
OUT=${3:?output directory}
SIZE=${4:-256}
SEED=${5:-5}
HERE=$(cd "$(dirname "$0")" && pwd)
SHARED=${SHARED:-$(cd "$HERE/../../.." && pwd)/shared}
REF=$SHARED/tools/reference
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
lower=$(echo "$MODEL" | tr 'A-Z' 'a-z')
case $FORMAT in
  tpu)
    sed "s#configs/spinenet/spinenet49_mrcnn.yaml#configs/spinenet/spinenet${lower}_mrcnn.yaml#" \
      "$REF/tpu_make_reference.py" > "$TMP/tpu_make_reference.py"
    grep -q "spinenet${lower}_mrcnn.yaml" "$TMP/tpu_make_reference.py"
    cp "$REF/tpu_make_reference.sh" "$TMP/"
    PY=${PY:-/tmp/modelgarden-venv/bin/python} bash "$TMP/tpu_make_reference.sh" "$OUT" "$SIZE" "$SEED";;
  modelgarden)
    sed "s#^mc = cfg.task.model\$#cfg.task.model.backbone.spinenet.model_id = '${MODEL}'\nmc = cfg.task.model#" \
      "$REF/modelgarden_make_reference.py" > "$TMP/modelgarden_make_reference.py"
    grep -q "model_id = '${MODEL}'" "$TMP/modelgarden_make_reference.py"
    cp "$REF/modelgarden_make_reference.sh" "$TMP/"
    PY=${PY:-/tmp/modelgarden-venv/bin/python} bash "$TMP/modelgarden_make_reference.sh" "$OUT" "$SIZE" "$SEED";;
  *) echo "format must be tpu or modelgarden" >&2; exit 2;;
esac
