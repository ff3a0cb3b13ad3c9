"""Writes configs/pretrained/*.yaml: one maskspine config per published SpineNet Mask R-CNN.

    python tools/pretrained/make_configs.py

Each config selects the model options that make maskspine compute what the original code
computes (see tools/README.md for the differences and where each one is in the originals):

- tensorflow/tpu `models/official/detection/configs/spinenet/spinenet{ID}_mrcnn.yaml` on
  top of `configs/maskrcnn_config.py` and `detection_config.py` (the code and format of the
  model zoo's COCO checkpoints);
- TF Model Garden's `maskrcnn_spinenet_coco` experiment (`official/vision/configs/
  maskrcnn.py`) with the backbone's model id changed.

The class list is COCO's 91 ids (0 = background, 1..90 as in the annotation files); the 10
ids COCO does not use (12, 26, 29, 30, 45, 66, 68, 69, 71, 83) are named "N/A", the name the
originals' drawing code (`utils/object_detection/visualization_utils.py`) gives ids missing
from their label map. `category_ids` maps model class k to COCO id k.
"""

from __future__ import annotations

from pathlib import Path

import yaml

OUT = Path(__file__).resolve().parents[2] / "configs" / "pretrained"

#: COCO's category names by id (instances_*.json of 2014/2017).
COCO_NAMES = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train",
    8: "truck", 9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign",
    14: "parking meter", 15: "bench", 16: "bird", 17: "cat", 18: "dog", 19: "horse",
    20: "sheep", 21: "cow", 22: "elephant", 23: "bear", 24: "zebra", 25: "giraffe",
    27: "backpack", 28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase", 34: "frisbee",
    35: "skis", 36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat",
    40: "baseball glove", 41: "skateboard", 42: "surfboard", 43: "tennis racket",
    44: "bottle", 46: "wine glass", 47: "cup", 48: "fork", 49: "knife", 50: "spoon",
    51: "bowl", 52: "banana", 53: "apple", 54: "sandwich", 55: "orange", 56: "broccoli",
    57: "carrot", 58: "hot dog", 59: "pizza", 60: "donut", 61: "cake", 62: "chair",
    63: "couch", 64: "potted plant", 65: "bed", 67: "dining table", 70: "toilet", 72: "tv",
    73: "laptop", 74: "mouse", 75: "remote", 76: "keyboard", 77: "cell phone",
    78: "microwave", 79: "oven", 80: "toaster", 81: "sink", 82: "refrigerator", 84: "book",
    85: "clock", 86: "vase", 87: "scissors", 88: "teddy bear", 89: "hair drier",
    90: "toothbrush",
}  # fmt: skip
UNUSED_NAME = "N/A"

#: Per published model: input size and what its yaml changes from the defaults.
TPU_MODELS = {
    "49": dict(size=640),
    "96": dict(size=1024),
    "143": dict(size=1280),
    # swish everywhere, stochastic depth, anchor size 5, 7 head convs of 384 filters
    "190": dict(size=1536, swish=True, drop=0.2, anchor=5.0, head_convs=7, head_filters=384,
                aug_min=0.1),
    "49S": dict(size=640, head_filters=128, fc=512),
}  # fmt: skip
MODELGARDEN_MODELS = {"49S": dict(size=640), "49": dict(size=640), "96": dict(size=1024),
                      "143": dict(size=1280)}  # fmt: skip
ENDPOINTS = {"49S": 128, "49": 256, "96": 256, "143": 256, "190": 512}


def config(flavour: str, model: str, spec: dict) -> dict:
    tpu = flavour == "tpu"
    channels = ENDPOINTS[model]
    activation = "swish" if spec.get("swish") else "relu"
    head_filters = spec.get("head_filters", 256)
    head_convs = spec.get("head_convs", 4)
    norm = {"type": "BN", "momentum": 0.01, "eps": 0.001}
    coder = {"legacy_plus_one": tpu, "dhdw_clip": "upper"}
    roi_layer = {"type": "RoIAlign", "sample_num": 1, "aligned": False}
    extractor = {
        "out_channels": channels,
        "featmap_strides": [8, 16, 32, 64, 128],
        "level_assignment": "canonical",
    }
    proposal = {"min_bbox_size": 0, "size_filter": False, "nms_rule": "padded"}
    classes = ["background"] + [COCO_NAMES.get(i, UNUSED_NAME) for i in range(1, 91)]
    return {
        "brief": f"{flavour}-spinenet{model}",
        "backbone": {
            "type": "spinenet",
            "arch": model,
            "norm_cfg": norm,
            "activation": activation,
            "stochastic_depth_rate": spec.get("drop", 0.0),
            "conv_padding": "symmetric" if tpu else "same",
            "downsample_pooling": "single" if tpu else "repeated",
        },
        "rpn": {
            "in_channels": channels,
            "feat_channels": head_filters,
            "num_convs": spec.get("head_convs", 1),
            "norm_per_level": True,
            "activation": activation,
            "norm_cfg": norm,
            "bbox_coder": {"target_means": [0.0] * 4, "target_stds": [1.0] * 4, **coder},
            "loss_bbox": {"loss_weight": 1.0, "beta": 1.0 / 9.0},
            "anchor_generator": {
                "scales": [spec.get("anchor", 3.0)],
                "strides": [8, 16, 32, 64, 128],
                "ratios": [1.0, 2.0, 0.5] if tpu else [0.5, 1.0, 2.0],
                "ratio_convention": "width_over_height",
            },
        },
        "bbox_head": {
            "num_shared_convs": head_convs,
            "num_shared_fcs": 1,
            "in_channels": channels,
            "conv_out_channels": head_filters,
            "fc_out_channels": spec.get("fc", 1024),
            "roi_feat_size": 7,
            "bbox_coder": {
                "target_means": [0.0] * 4,
                "target_stds": [0.1, 0.1, 0.2, 0.2],
                **coder,
            },
            "norm_cfg": norm,
            "conv_bias": True,
            "fc_norm": True,
            "activation": activation,
        },
        "mask_head": {
            "num_convs": head_convs,
            "in_channels": channels,
            "conv_out_channels": head_filters,
            "norm_cfg": norm,
            "conv_bias": True,
            "deconv_norm": True,
            "activation": activation,
        },
        "roi": {"roi_layer": {**roi_layer, "out_size": 7}, **extractor, "sample_num": 512},
        "mask_roi": {"roi_layer": {**roi_layer, "out_size": 14}, **extractor, "sample_num": 128},
        "train_cfg": {
            "rpn_proposal": {"nms_pre": 2000, "max_per_img": 1000, "iou_threshold": 0.7,
                             **proposal},
            "rcnn": {
                "assigner": {"pos_iou_thr": 0.5, "neg_iou_thr": 0.5, "min_pos_iou": 0.5,
                             "match_low_quality": False},
                "sampler": {"num": 512, "pos_fraction": 0.25, "neg_pos_ub": -1,
                            "add_gt_as_proposals": True},
            },
        },
        "test_cfg": {
            "rpn": {"nms_pre": 1000, "max_per_img": 1000, "iou_threshold": 0.7, **proposal},
            "rcnn": {"score_thr": 0.05, "iou_threshold": 0.5, "max_per_img": 100,
                     "mask_thr_binary": 0.5, "nms_rule": "padded"},
        },
        "weight_decay": 0.00004,
        "coco_classes": classes,
        "num_classes": 91,
        "category_ids": list(range(1, 91)),
        "img_width": spec["size"],
        "img_height": spec["size"],
        "divider": 128,
        "resize_method": "bilinear_legacy" if tpu else "bilinear",
        "clip_boxes_to": "input",
        "aug_scale_min": spec.get("aug_min", 0.5),
        "aug_scale_max": 2.0,
    }  # fmt: skip


HEADER = """\
# SpineNet-{model} Mask R-CNN, {size}x{size}, COCO (91 classes by COCO id), as {source}
# computes it. Made for `maskspine import-weights --format {flavour} --model {model}`, which
# writes it into the run directory; written by tools/pretrained/make_configs.py.
# Classes: COCO ids 0..90 (0 = background); the ids COCO does not use are named "N/A".
"""
SOURCES = {
    "tpu": "tensorflow/tpu models/official/detection (configs/spinenet/spinenet{lower}_mrcnn.yaml)",
    "modelgarden": "TF Model Garden official/vision (experiment maskrcnn_spinenet_coco)",
}


class _Dumper(yaml.SafeDumper):
    """No anchors / aliases; lists of numbers on one line."""

    def ignore_aliases(self, data):
        return True


def _represent_list(dumper, data):
    flow = all(isinstance(item, (int, float)) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for flavour, models in (("tpu", TPU_MODELS), ("modelgarden", MODELGARDEN_MODELS)):
        for model, spec in models.items():
            source = SOURCES[flavour].format(lower=model.lower())
            text = HEADER.format(model=model, size=spec["size"], source=source, flavour=flavour)
            text += yaml.dump(
                config(flavour, model, spec), Dumper=_Dumper, sort_keys=False, width=100
            )
            path = OUT / f"spinenet{model.lower()}_mrcnn_{flavour}.yaml"
            path.write_text(text)
            print(path)


if __name__ == "__main__":
    main()
