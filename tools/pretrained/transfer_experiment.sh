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
# usage: transfer_experiment.sh WORKDIR   (WORKDIR/pretrain_data and pretrain_val as in transfer_pretrain_modelgarden.sh)
set -euo pipefail
WORK=${1:?usage: transfer_experiment.sh WORKDIR}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
MS="python -m maskspine.cli"
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
