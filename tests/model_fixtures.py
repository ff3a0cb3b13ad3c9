"""Helpers shared by the model tests: a tiny config and hand-made training batches."""

from __future__ import annotations

import os

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Overrides that shrink configs/shapes_demo.yaml to a model that builds and steps in seconds.
TINY_OVERRIDES = [
    "coco_classes=[background, square, disc, bar]",
    "num_classes=4",
    "img_height=128",
    "img_width=128",
    "backbone.filter_size_scale=0.125",
    "backbone.endpoints_num_filters=32",
    "rpn.in_channels=32",
    "rpn.feat_channels=32",
    "bbox_head.in_channels=32",
    "bbox_head.conv_out_channels=32",
    "bbox_head.num_shared_convs=1",
    "bbox_head.fc_out_channels=128",
    "mask_head.in_channels=32",
    "mask_head.conv_out_channels=32",
    "mask_head.num_convs=1",
    "roi.out_channels=32",
    "mask_roi.out_channels=32",
    "num_gts=8",
    "mask_crop_size=28",
    "precision=float32",  # the demo's `auto` is bfloat16 on some hosts: tests compare float32
    # the demo's one thread per op would hold for the whole test process (pytest's workers)
    "intra_op_threads=0",
]


#: Every anchor / RoI sampled: no sampling, and nothing that depends on how the batch is split
#: over replicas or on which step samples it, so two ways of running a step agree to float
#: tolerance.
SAMPLE_EVERYTHING = [
    "train_cfg.rpn.sampler.num=2048",
    "train_cfg.rcnn.sampler.num=512",
    "train_cfg.rcnn.sampler.pos_fraction=1.0",
    "roi.sample_num=512",
    "mask_roi.sample_num=512",
]


#: Every part's XLA-compilable option (RoIAlign and mask targets by gathers, tiled NMS).
XLA_OVERRIDES = [
    "roi.roi_layer.method=gather",
    "mask_roi.roi_layer.method=gather",
    "train_cfg.rcnn.mask_target_method=gather",
    "train_cfg.rpn_proposal.nms_implementation=tiled",
    "test_cfg.rpn.nms_implementation=tiled",
    "test_cfg.rcnn.nms_implementation=tiled",
]


#: TINY_OVERRIDES for a run on the small shapes set: classes from the data, few short epochs.
RUN_OVERRIDES = [o for o in TINY_OVERRIDES if not o.startswith(("coco_classes", "num_classes"))] + [
    "coco_classes=from_data",
    "batch_size=2",
    "epoch_size=2",
    "steps_per_epoch=3",
    "save_every=2",
    "keep_checkpoint_max=2",
    "log_every=2",
    "eval_every=2",
    "warmup_step=2",
    "opt_type=sgd",
    "lr=0.01",
    "test_cfg.rcnn.max_per_img=20",
    "test_cfg.rpn.nms_pre=100",
    "test_cfg.rpn.max_per_img=100",
    "train_cfg.rpn_proposal.nms_pre=200",
    "train_cfg.rpn_proposal.max_per_img=200",
]


def make_batch(
    batch_size: int = 2, size: int = 128, num_gts: int = 8, mask_size: int = 28, seed: int = 0
) -> tuple[dict[str, np.ndarray], list[list[tuple[int, np.ndarray, np.ndarray]]]]:
    """A training batch (docs/architecture.md contract) of flat-coloured shapes on a dark ground.

    Class 1 = square, 2 = disc, 3 = horizontal bar; each instance has its own colour
    channel so the task is learnable by a tiny model. Returns the batch and, per image,
    (class, box yxyx, full-image bool mask) of each instance.
    """
    rng = np.random.RandomState(seed)
    images = np.full((batch_size, size, size, 3), -1.0, np.float32)
    boxes = -np.ones((batch_size, num_gts, 4), np.float32)
    classes = -np.ones((batch_size, num_gts), np.int32)
    masks = np.zeros((batch_size, num_gts, mask_size, mask_size), np.uint8)
    truth = []
    centres = np.arange(size) + 0.5
    for b in range(batch_size):
        instances = []
        cells = [(8, 8), (8, 68), (68, 8), (68, 68)]
        rng.shuffle(cells)
        for g, label in enumerate((1, 2, 3)):
            y0, x0 = cells[g]
            extent = rng.randint(36, 52)
            if label == 3:
                box = np.array([y0 + extent / 3, x0, y0 + 2 * extent / 3, x0 + extent], np.float32)
            else:
                box = np.array([y0, x0, y0 + extent, x0 + extent], np.float32)

            def inside(y, x, box=box, label=label):
                if label == 2:
                    cy, cx, r = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, (box[2] - box[0]) / 2
                    return (y - cy) ** 2 + (x - cx) ** 2 <= r * r
                return (y >= box[0]) & (y < box[2]) & (x >= box[1]) & (x < box[3])

            full = inside(centres[:, None], centres[None, :])
            images[b][full] = -1.0
            images[b][full, label - 1] = 1.5
            boxes[b, g], classes[b, g] = box, label
            # The gt mask cropped to its box: sampled at M x M cell centres inside the box.
            ys = box[0] + (np.arange(mask_size) + 0.5) * (box[2] - box[0]) / mask_size
            xs = box[1] + (np.arange(mask_size) + 0.5) * (box[3] - box[1]) / mask_size
            masks[b, g] = inside(ys[:, None], xs[None, :]).astype(np.uint8)
            instances.append((label, box, full))
        truth.append(instances)
    info = np.array([[size, size], [size, size], [1, 1], [0, 0]], np.float32)
    batch = {
        "images": images,
        "image_info": np.tile(info, (batch_size, 1, 1)),
        "gt_boxes": boxes,
        "gt_classes": classes,
        "gt_is_crowd": np.zeros((batch_size, num_gts), bool),
        "gt_masks": masks,
    }
    return batch, truth


def write_run(folder, config):
    """A run directory as training writes it: `config.yaml` and one periodic checkpoint of a
    fresh model of `config`. Returns the folder."""
    from pathlib import Path

    from maskspine.checkpoints import save_weights_atomic
    from maskspine.config import save_config
    from maskspine.modeling.factory import build_mask_rcnn

    folder = Path(folder)
    save_config(config, folder / "config.yaml")
    save_weights_atomic(
        build_mask_rcnn(config), folder / "checkpoints" / "ckpt-00000001.weights.h5"
    )
    return folder
