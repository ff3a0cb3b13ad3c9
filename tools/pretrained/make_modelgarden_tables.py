"""Variable tables of TF Model Garden SpineNet Mask R-CNN checkpoints (run once, by hand).

For each SpineNet model id, builds Model Garden's `maskrcnn_spinenet_coco` experiment model
(91 classes) with that backbone, writes it with `tf.train.Checkpoint(model=model)` (the
layout of a Model Garden training checkpoint's `model/...` keys) to a temporary directory
and records:

- `tests/pretrained/tables/modelgarden_{ID}.json.gz`: every checkpoint key with its shape
  and dtype, and the parameter count (the tests build synthetic checkpoints from these);
- `maskspine/pretrained/modelgarden_backbone_order.json`: for each `block_repeats`, the
  Keras class and creation index of the backbone layer stored as `layer_with_weights-N`.
  Model Garden's SpineNet is a functional tf_keras model whose checkpoint numbers layers in
  the model's (depth-sorted) layer order, not in the order the builder creates them; the
  importer needs this order and cannot compute it without Model Garden.

    /tmp/modelgarden-venv/bin/python tools/pretrained/make_modelgarden_tables.py [49S 49 96 143]
"""

import gzip
import json
import os
import re
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
from official.core import exp_factory  # noqa: E402
from official.vision import registry_imports  # noqa: E402, F401 (registers the experiments)
from official.vision.modeling import factory  # noqa: E402
from official.vision.modeling.backbones.spinenet import SCALING_MAP  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
TABLES = os.path.join(HERE, "..", "..", "tests", "pretrained", "tables")
ORDER = os.path.join(HERE, "..", "..", "maskspine", "pretrained", "modelgarden_backbone_order.json")
SIZE = 256  # variable shapes do not depend on the input size
_AUTO_NAME = re.compile(r"^(.*?)(?:_(\d+))?$")


def build(model_id: str):
    tf_keras.backend.clear_session()  # layer-name counters restart: names = creation indices
    config = exp_factory.get_exp_config("maskrcnn_spinenet_coco")
    config.task.model.backbone.spinenet.model_id = model_id
    config.task.model.input_size = [SIZE, SIZE, 3]
    model = factory.build_maskrcnn(
        tf_keras.layers.InputSpec(shape=[None, SIZE, SIZE, 3]), config.task.model
    )
    images = tf.zeros([1, SIZE, SIZE, 3])
    model(images, image_shape=tf.constant([[SIZE, SIZE]], tf.float32), training=False)
    return model


def backbone_order(model) -> list:
    """[class name, creation index] of each backbone layer with weights, in checkpoint order."""
    order = []
    for layer in model.backbone.layers:
        if not layer.weights:
            continue
        base, index = _AUTO_NAME.match(layer.name).groups()
        order.append([type(layer).__name__, int(index or 0)])
    return order


def main() -> None:
    from importlib import metadata

    os.makedirs(TABLES, exist_ok=True)
    source = "tf-models-nightly " + metadata.version("tf-models-nightly")
    orders = {}
    if os.path.exists(ORDER):
        with open(ORDER) as f:
            orders = json.load(f)["block_repeats"]
    for model_id in sys.argv[1:] or ["49S", "49", "96", "143"]:
        model = build(model_id)
        with tempfile.TemporaryDirectory() as tmp:
            prefix = tf.train.Checkpoint(model=model).write(os.path.join(tmp, "ckpt"))
            reader = tf.train.load_checkpoint(prefix)
            shapes = reader.get_variable_to_shape_map()
            dtypes = reader.get_variable_to_dtype_map()
            variables = [
                [key, list(shapes[key]), dtypes[key].name]
                for key in sorted(shapes)
                if key != "_CHECKPOINTABLE_OBJECT_GRAPH"
            ]
        count = int(sum(np.prod(w.shape) for w in model.weights))
        data = {
            "format": "modelgarden",
            "model": model_id,
            "source": source,
            "experiment": "maskrcnn_spinenet_coco",
            "num_parameters": count,
            "variables": variables,
        }
        path = os.path.join(TABLES, f"modelgarden_{model_id}.json.gz")
        with gzip.open(path, "wt") as f:
            json.dump(data, f, indent=0)
        repeats = str(SCALING_MAP[model_id]["block_repeats"])
        order = backbone_order(model)
        if repeats in orders and orders[repeats] != order:
            raise SystemExit(f"backbone order of {model_id} differs from another model's")
        orders[repeats] = order
        print(path, len(variables), "keys", count, "parameters")
    with open(ORDER, "w") as f:
        json.dump(
            {
                "source": source,
                "doc": "Model Garden SpineNet: [Keras class, creation index] of the backbone "
                "layer saved as layer_with_weights-N, N = list position; by block_repeats. "
                "Written by tools/pretrained/make_modelgarden_tables.py.",
                "block_repeats": dict(sorted(orders.items())),
            },
            f,
        )


if __name__ == "__main__":
    main()
