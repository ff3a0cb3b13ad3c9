"""Variable tables of the tensorflow/tpu SpineNet Mask R-CNN checkpoints (run once, by hand).

Builds the inference graph of tensorflow/tpu `models/official/detection` for each
`configs/spinenet/spinenet{ID}_mrcnn.yaml` and writes the name, shape and dtype of every
global variable (what `tf.compat.v1.train.Saver` writes, `global_step` included) to
`tests/pretrained/tables/tpu_{ID}.json.gz`. The tests build synthetic checkpoints from
these tables; maskspine itself derives the names (maskspine/pretrained/tpu.py).

Needs the tensorflow/tpu sources (see ../../../shared/tools/reference-checkpoints.md) and
a TF 2.21 + tf_keras environment (the Model Garden venv):

    TPUSRC=/tmp/tpusrc TF_USE_LEGACY_KERAS=1 /tmp/modelgarden-venv/bin/python \
        tools/pretrained/make_tpu_tables.py [49 96 143 190 49S]
"""

import gzip
import json
import os
import sys
import types
from pathlib import Path

ROOT = os.path.join(os.environ.get("TPUSRC", "/tmp/tpusrc"), "models")
OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "pretrained", "tables")
SIZE = 256  # variable shapes do not depend on the input size

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The tpu code imports its packages relative to official/detection and models/.
sys.path[:0] = [ROOT, os.path.join(ROOT, "official/detection")]
sys.path.append(os.path.join(ROOT, "official/efficientnet"))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

v1 = tf.compat.v1
# serving/detection.py imports tf.compat.v1.estimator (gone in TF 2.16) for names only.
estimator = types.ModuleType("tensorflow.compat.v1.estimator")
estimator.ModeKeys = type("ModeKeys", (), {"TRAIN": "train", "EVAL": "eval", "PREDICT": "infer"})
v1.estimator = estimator
sys.modules["tensorflow.compat.v1.estimator"] = estimator
v1.disable_eager_execution()

from hyperparameters import params_dict  # noqa: E402
from serving import detection  # noqa: E402

from configs import factory as config_factory  # noqa: E402


def table(model_id: str) -> dict:
    params = config_factory.config_generator("mask_rcnn")
    yaml_path = os.path.join(
        ROOT, f"official/detection/configs/spinenet/spinenet{model_id.lower()}_mrcnn.yaml"
    )
    params = params_dict.override_params_dict(params, yaml_path, is_strict=True)
    params = params_dict.override_params_dict(
        params,
        {
            "use_tpu": False,
            "architecture": {"use_bfloat16": False},
            "maskrcnn_parser": {"output_size": [SIZE, SIZE]},
        },
        is_strict=True,
    )
    params.validate()
    params.lock()
    graph = v1.Graph()
    with graph.as_default():
        images = v1.placeholder(tf.float32, [1, SIZE, SIZE, 3])
        image_info = v1.placeholder(tf.float32, [1, 4, 2])
        detection.build_predictions(
            {"images": images, "image_info": image_info},
            params,
            output_image_info=False,
            output_normalized_coordinates=False,
            cast_num_detections_to_float=False,
        )
        v1.train.get_or_create_global_step()
        variables = [
            [v.op.name, v.shape.as_list(), v.dtype.base_dtype.name] for v in v1.global_variables()
        ]
    count = sum(int(np.prod(shape)) for name, shape, _ in variables if name != "global_step")
    return {
        "format": "tpu",
        "model": model_id,
        "source": Path(ROOT).parent.joinpath("COMMIT").read_text().split()[0],
        "config": os.path.relpath(yaml_path, os.path.dirname(ROOT)),
        "num_parameters": count,
        "variables": variables,
    }


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    for model_id in sys.argv[1:] or ["49", "96", "143", "190"]:
        data = table(model_id)
        path = os.path.join(OUT, f"tpu_{model_id}.json.gz")
        with gzip.open(path, "wt") as f:
            json.dump(data, f, indent=0)
        print(path, len(data["variables"]), "variables", data["num_parameters"], "parameters")


if __name__ == "__main__":
    main()
