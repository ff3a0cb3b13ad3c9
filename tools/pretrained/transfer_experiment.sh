#!/bin/bash
# The transfer measurement of tools/README.md ("Transfer"):
#  1. pre-train a Model Garden-architecture Mask R-CNN (configs/pretrained/spinenet49_mrcnn_modelgarden.yaml
#     at shapes_demo's widths: 1/4 channels, 64-channel features and heads) with maskspine on a synthetic
#     set that is not the fine-tuning task (600 shapes images of other sizes, seed 100, all classes merged
#     into COCO id 1: class-agnostic);
#  2. write it as a Model Garden checkpoint (write_modelgarden_checkpoint.py) and import that with
#     `maskspine import-weights --format modelgarden`;
#  3. `maskspine train configs/shapes_demo.yaml --pretrained RUN --set coco_classes=from_data` for one
#     epoch on the shapes set, and the same run from scratch; both print the segm mAP.
# usage: transfer_experiment.sh WORKDIR   (PRETRAIN_EPOCHS=2 by default)
set -euo pipefail
WORK=${1:?usage: transfer_experiment.sh WORKDIR}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
MS="python -m maskspine.cli"

# 0. the pre-training set: shapes of other sizes (200-320 px images, 2-8 shapes from 16 px),
#    seed 100, 600 training and 50 validation images, every instance COCO id 1 (class-agnostic:
#    the fine-tuning task's three classes are never told apart), the 91 COCO categories listed
if [ ! -f "$WORK/pretrain_val/labels.json" ]; then
  python - "$REPO" "$WORK" <<'PYEOF'
import json, sys
from pathlib import Path
from maskspine.config import load_config
from maskspine.data.shapes import ShapesSpec, write_shapes_split
repo, work = Path(sys.argv[1]), Path(sys.argv[2])
config = load_config(repo / "configs/pretrained/spinenet49_mrcnn_modelgarden.yaml")
categories = [{"id": i, "name": n, "supercategory": "coco"}
              for i, n in zip(config.category_ids, config.coco_classes[1:])]
spec = ShapesSpec(min_image_size=200, max_image_size=320, min_shapes=2, max_shapes=8,
                  min_shape_size=16, max_shape_fraction=0.35)
for name, count, split in (("pretrain_data", 600, 0), ("pretrain_val", 50, 1)):
    labels = write_shapes_split(work / name, count, seed=100, split_index=split, spec=spec)
    data = json.loads(labels.read_text())
    data["categories"] = categories
    for annotation in data["annotations"]:
        annotation["category_id"] = 1
    labels.write_text(json.dumps(data))
PYEOF
fi
ARCH=(--set img_height=256 --set img_width=256
  --set backbone.filter_size_scale=0.25 --set backbone.endpoints_num_filters=64
  --set rpn.in_channels=64 --set rpn.feat_channels=64
  --set bbox_head.in_channels=64 --set bbox_head.conv_out_channels=64
  --set bbox_head.num_shared_convs=2 --set bbox_head.fc_out_channels=256
  --set mask_head.in_channels=64 --set mask_head.conv_out_channels=64 --set mask_head.num_convs=2
  --set roi.out_channels=64 --set mask_roi.out_channels=64)
TRAIN=(--set opt_type=adamw --set lr=0.001 --set weight_decay=0.0001 --set warmup_step=100
  --set lr_type=cosine --set min_lr=0.00001 --set grad_clip=10 --set batch_size=4 --set num_gts=20
  --set mask_crop_size=56 --set log_every=25 --set save_every=150 --set aug_scale_min=0.8
  --set aug_scale_max=1.25 --set backbone.norm_cfg.momentum=0.03 --set rpn.norm_cfg.momentum=0.03
  --set bbox_head.norm_cfg.momentum=0.03 --set mask_head.norm_cfg.momentum=0.03
  --set train_cfg.rpn_proposal.nms_pre=500 --set train_cfg.rpn_proposal.max_per_img=500
  --set train_cfg.rcnn.sampler.num=128 --set roi.sample_num=128 --set mask_roi.sample_num=32
  --set test_cfg.rpn.nms_pre=300 --set test_cfg.rpn.max_per_img=300 --set test_cfg.rcnn.max_per_img=50)

# 1. pre-training (maskspine, Model Garden architecture)
if [ ! -d "$WORK/runs/pretrain" ]; then
  $MS train "$REPO/configs/pretrained/spinenet49_mrcnn_modelgarden.yaml" \
    --train-data "$WORK/pretrain_data" --val-data "$WORK/pretrain_val" --out "$WORK/runs" --brief pretrain \
    "${ARCH[@]}" "${TRAIN[@]}" --set epoch_size=${PRETRAIN_EPOCHS:-2} --set eval_every=${PRETRAIN_EPOCHS:-2}
  mv "$WORK"/runs/*_MaskRCNN_pretrain_256x256 "$WORK/runs/pretrain"
fi
# 2. as a Model Garden checkpoint, imported
python "$REPO/tools/pretrained/write_modelgarden_checkpoint.py" "$WORK/runs/pretrain" "$WORK/mg_checkpoint/ckpt-300"
$MS import-weights "$WORK/mg_checkpoint" --format modelgarden --model 49 --output "$WORK/runs/imported" \
  --force "${ARCH[@]}"
# 3. one epoch on the shapes set: from the import, and from scratch
for start in pretrained scratch; do
  extra=(); [ $start = pretrained ] && extra=(--pretrained "$WORK/runs/imported")
  $MS train "$REPO/configs/shapes_demo.yaml" --out "$WORK/runs" --brief "finetune-$start" \
    --set coco_classes=from_data --set epoch_size=1 --set eval_every=1 "${extra[@]}" \
    2>&1 | tee "$WORK/finetune-$start.log"
done
grep -h "Segmentation eval result\|Bbox eval result" "$WORK"/finetune-*.log
