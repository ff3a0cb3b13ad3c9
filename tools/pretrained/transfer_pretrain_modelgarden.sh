#!/bin/bash
# Pre-trains a SpineNet-49S Mask R-CNN with TF Model Garden's own training code on a synthetic
# set that is NOT the fine-tuning task, for the transfer measurement of tools/README.md:
#   - data: 600 shapes images drawn with another seed and other sizes (200-320 px, up to 8
#     shapes from 16 px) with all classes merged into one category "shape" (class-agnostic:
#     the fine-tuning task's three classes are never seen);
#   - Model Garden's create_coco_tf_record, then official/vision/train.py, experiment
#     maskrcnn_spinenet_coco (91 classes, as the published configs) with SpineNet-49S at
#     256x256, AdamW, float32, on the CPU.
# usage: transfer_pretrain_modelgarden.sh WORKDIR [STEPS=1500]
#   -> WORKDIR/data (COCO folder), WORKDIR/tfrecords, WORKDIR/model (Model Garden checkpoints)
# env: PY (maskspine's python), MGPY (default /tmp/modelgarden-venv/bin/python)
set -euo pipefail
WORK=${1:?usage: transfer_pretrain_modelgarden.sh WORKDIR [STEPS]}
STEPS=${2:-1500}
PY=${PY:-python}
MGPY=${MGPY:-/tmp/modelgarden-venv/bin/python}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$WORK"

if [ ! -f "$WORK/data/labels.json" ]; then
  PYTHONPATH="$REPO" "$PY" - "$WORK/data" <<'PYEOF'
import json, sys
from pathlib import Path
import numpy as np
from pycocotools import mask as mask_utils
from maskspine.data.shapes import ShapesSpec, write_shapes_split
folder = Path(sys.argv[1])
spec = ShapesSpec(min_image_size=200, max_image_size=320, min_shapes=2, max_shapes=8,
                  min_shape_size=16, max_shape_fraction=0.35)
labels = write_shapes_split(folder, 600, seed=100, split_index=0, spec=spec)
data = json.loads(labels.read_text())
data["categories"] = [{"id": 1, "name": "shape", "supercategory": "shape"}]
for annotation in data["annotations"]:
    annotation["category_id"] = 1
    segmentation = annotation["segmentation"]
    if isinstance(segmentation, dict) and isinstance(segmentation["counts"], str):
        # Model Garden's converter takes polygons or a list of uncompressed RLEs
        pixels = mask_utils.decode(segmentation).flatten(order="F")
        changes = np.flatnonzero(np.diff(np.concatenate([[0], pixels, [1 - pixels[-1]]])))
        counts = np.diff(np.concatenate([[0], changes])).tolist()
        annotation["segmentation"] = [{"size": segmentation["size"], "counts": counts}]
labels.write_text(json.dumps(data))
print("wrote", len(data["images"]), "images,", len(data["annotations"]), "instances, 1 category")
PYEOF
fi

if [ ! -f "$WORK/tfrecords/train-00000-of-00002.tfrecord" ]; then
  mkdir -p "$WORK/tfrecords"
  TF_CPP_MIN_LOG_LEVEL=2 "$MGPY" -m official.vision.data.create_coco_tf_record \
    --image_dir="$WORK/data/data" --object_annotations_file="$WORK/data/labels.json" \
    --output_file_prefix="$WORK/tfrecords/train" --num_shards=2 --include_masks \
    --num_processes=0
fi

cat > "$WORK/experiment.yaml" <<YAML
runtime:
  distribution_strategy: one_device
  num_gpus: 0
  mixed_precision_dtype: float32
task:
  init_checkpoint: null
  annotation_file: null
  model:
    input_size: [256, 256, 3]
    num_classes: 91
    backbone:
      type: spinenet
      spinenet: {model_id: '49S', min_level: 3, max_level: 7}
    detection_generator: {max_num_detections: 50}
  train_data:
    input_path: '$WORK/tfrecords/train-*'
    global_batch_size: 4
    dtype: float32
    shuffle_buffer_size: 600
    parser: {aug_rand_hflip: true, aug_scale_min: 0.8, aug_scale_max: 1.25, max_num_instances: 20}
  losses: {l2_weight_decay: 0.0}
trainer:
  train_steps: $STEPS
  steps_per_loop: 50
  summary_interval: 50
  checkpoint_interval: 250
  max_to_keep: 3
  optimizer_config:
    optimizer: {type: adamw, adamw: {weight_decay_rate: 0.0001, gradient_clip_norm: 10.0}}
    learning_rate: {type: cosine, cosine: {initial_learning_rate: 0.001, decay_steps: $STEPS, alpha: 0.01}}
    warmup: {type: linear, linear: {warmup_steps: 100, warmup_learning_rate: 0.0001}}
YAML

TF_CPP_MIN_LOG_LEVEL=2 "$MGPY" -m official.vision.train --experiment=maskrcnn_spinenet_coco \
  --mode=train --model_dir="$WORK/model" --config_file="$WORK/experiment.yaml"
