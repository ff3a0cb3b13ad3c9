"""Model Garden's own outputs for a checkpoint, in the layout of the shared reference.npz.

    /tmp/modelgarden-venv/bin/python tools/pretrained/modelgarden_outputs.py \\
        CKPT_PREFIX MODEL_ID SIZE IMAGE.png OUTDIR

Builds `maskrcnn_spinenet_coco` with SpineNet MODEL_ID at SIZE x SIZE, restores CKPT_PREFIX
(`tf.train.Checkpoint(model=...)`, every object of the model must be found in it), runs it on
IMAGE (resized to SIZE x SIZE without keeping the aspect ratio, normalised as Model Garden
normalises) and writes OUTDIR/reference.npz with the arrays `compare.py` reads (input,
detections, proposals, head outputs, RPN outputs and features per level) and OUTDIR/ckpt as a
link to the checkpoint's directory.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
from official.core import exp_factory  # noqa: E402
from official.vision import registry_imports  # noqa: E402, F401
from official.vision.modeling import factory  # noqa: E402
from official.vision.ops import anchor  # noqa: E402
from PIL import Image  # noqa: E402

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def main() -> None:
    prefix, model_id, size, image_path, out = sys.argv[1:6]
    size = int(size)
    config = exp_factory.get_exp_config("maskrcnn_spinenet_coco")
    config.task.model.backbone.spinenet.model_id = model_id
    config.task.model.input_size = [size, size, 3]
    mc = config.task.model
    model = factory.build_maskrcnn(tf_keras.layers.InputSpec(shape=[None, size, size, 3]), mc)
    pixels = np.asarray(Image.open(image_path).convert("RGB").resize((size, size), Image.BILINEAR))
    images = ((pixels / 255.0 - MEAN) / STD)[None].astype(np.float32)
    image_shape = tf.constant([[size, size]], tf.float32)
    model(tf.constant(images), image_shape=image_shape, training=False)  # creates the variables
    status = tf.train.Checkpoint(model=model).read(prefix)
    status.assert_existing_objects_matched()
    out_ = model(tf.constant(images), image_shape=image_shape, training=False)
    anchors = anchor.Anchor(mc.min_level, mc.max_level, mc.anchor.num_scales,
                            mc.anchor.aspect_ratios, mc.anchor.anchor_size, (size, size))  # fmt: skip
    anchors = {k: v[None] for k, v in anchors.multilevel_boxes.items()}
    rois, roi_scores = model.roi_generator(out_["rpn_boxes"], out_["rpn_scores"], anchors,
                                           image_shape, training=False)  # fmt: skip
    r = {k: out_[k].numpy() for k in ("num_detections", "detection_boxes", "detection_classes",
                                      "detection_scores", "detection_masks", "box_outputs")}  # fmt: skip
    r["class_outputs"] = out_["cls_outputs"].numpy()
    r["rpn_rois"] = rois.numpy()
    r["rpn_roi_scores"] = np.reshape(roi_scores.numpy(), rois.shape[:2])
    for level in range(mc.min_level, mc.max_level + 1):
        r[f"rpn_scores_l{level}"] = out_["rpn_scores"][str(level)].numpy()
        r[f"rpn_boxes_l{level}"] = out_["rpn_boxes"][str(level)].numpy()
        r[f"fpn_l{level}"] = out_["decoder_features"][str(level)].numpy()
    info = np.array([[[size, size], [size, size], [1, 1], [0, 0]]], np.float32)
    os.makedirs(out, exist_ok=True)
    np.savez(os.path.join(out, "reference.npz"), images=images, image_info=info, size=size,
             seed=-1, source=f"Model Garden on {prefix}", **r)  # fmt: skip
    link = os.path.join(out, "ckpt")
    if not os.path.exists(link):
        os.symlink(os.path.dirname(os.path.abspath(prefix)), link)
    print(
        "detections", int(r["num_detections"][0]), "max score", float(r["detection_scores"].max())
    )


if __name__ == "__main__":
    main()
