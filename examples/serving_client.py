"""A small TF Serving client for a `maskspine export`: builds the request bodies for images and,
when a server is named, sends them and prints the detections.

    # Build the two REST bodies (uint8 `instances`, and {"b64": ...} encoded bytes):
    python examples/serving_client.py photo.jpg --write-bodies requests/

    # Send them to TF Serving's REST port, naming classes with the export's labels:
    python examples/serving_client.py photo.jpg --rest http://localhost:8501 --model maskspine \\
        --labels exports/maskspine/1/assets/labels.json

    # The same over gRPC (needs `pip install tensorflow-serving-api`):
    python examples/serving_client.py photo.jpg --grpc localhost:8500 --model maskspine

Needs numpy and Pillow; gRPC needs `tensorflow-serving-api` (and so TensorFlow). It does not
import maskspine: a serving client needs only the export's signatures, which are:
`serving_default` (input `images`, uint8 [batch, height, width, 3]), `serving_image_bytes`
(input `image_bytes`, string [batch]) and `serving_tf_example` (input `examples`); outputs
`num_detections`, `detection_boxes` (ymin, xmin, ymax, xmax in original pixels),
`detection_scores`, `detection_classes` (category ids), `detection_masks`, `image_info` and,
for a `--full-masks` export, `detection_masks_image`.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MODEL = "maskspine"
IMAGE_TENSOR_SIGNATURE = "serving_default"
IMAGE_BYTES_SIGNATURE = "serving_image_bytes"
#: Outputs not printed and not requested over REST by default (large).
MASK_OUTPUTS = ("detection_masks", "detection_masks_image")


# --------------------------------------------------------------------------- request bodies


def load_image(path: str | Path) -> np.ndarray:
    """An image file as uint8 [height, width, 3] RGB."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def encode_png(image: np.ndarray) -> bytes:
    """uint8 [height, width, 3] -> PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def rest_image_tensor_body(
    images: Sequence[np.ndarray], signature: str = IMAGE_TENSOR_SIGNATURE
) -> dict[str, Any]:
    """The REST `:predict` body for the uint8 image signature (row format).

    Args:
        images: uint8 [height, width, 3] arrays of ONE size (one batch tensor).

    Returns:
        `{"signature_name": ..., "instances": [image as nested lists of ints, ...]}`.
    """
    shapes = {np.shape(image) for image in images}
    if len(shapes) != 1:
        raise ValueError(
            f"images of one request must share a size, got {sorted(shapes)}: send them in "
            "separate requests, or use the image bytes signature"
        )
    return {
        "signature_name": signature,
        "instances": [np.asarray(image, np.uint8).tolist() for image in images],
    }


def rest_image_bytes_body(
    encoded_images: Sequence[bytes], signature: str = IMAGE_BYTES_SIGNATURE
) -> dict[str, Any]:
    """The REST `:predict` body for the encoded-image signature: each JPEG / PNG file's bytes
    as `{"b64": base64}`, which TF Serving decodes into the string input. Sizes may differ."""
    return {
        "signature_name": signature,
        "instances": [{"b64": base64.b64encode(data).decode("ascii")} for data in encoded_images],
    }


def rest_url(server: str, model: str, version: int | None = None) -> str:
    """`http://host:8501/v1/models/<model>[/versions/<n>]:predict`."""
    path = f"/v1/models/{model}" + (f"/versions/{version}" if version is not None else "")
    return server.rstrip("/") + path + ":predict"


def rest_predict(
    server: str,
    model: str,
    body: Mapping[str, Any],
    *,
    version: int | None = None,
    timeout: float = 60.0,
) -> list[dict[str, np.ndarray]]:
    """POSTs `body` to TF Serving's REST API; returns one dict of numpy outputs per image."""
    request = urllib.request.Request(
        rest_url(server, model, version),
        data=json.dumps(body).encode("utf-8"),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        reply = json.loads(response.read().decode("utf-8"))
    if "error" in reply:
        raise RuntimeError(f"TF Serving answered: {reply['error']}")
    predictions = reply["predictions"]
    return [
        {name: np.asarray(value) for name, value in prediction.items()}
        for prediction in predictions
    ]


# --------------------------------------------------------------------------- gRPC


def grpc_predict_request(
    model: str,
    *,
    images: Sequence[np.ndarray] | None = None,
    encoded_images: Sequence[bytes] | None = None,
    version: int | None = None,
):
    """A `tensorflow_serving.apis.predict_pb2.PredictRequest` for uint8 images (one size,
    `serving_default`) or encoded images (`serving_image_bytes`)."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    if (images is None) == (encoded_images is None):
        raise ValueError("give images or encoded_images")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    if images is not None:
        request.model_spec.signature_name = IMAGE_TENSOR_SIGNATURE
        batch = np.stack([np.asarray(image, np.uint8) for image in images])
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(batch, dtype=tf.uint8))
    else:
        request.model_spec.signature_name = IMAGE_BYTES_SIGNATURE
        request.inputs["image_bytes"].CopyFrom(
            tf.make_tensor_proto(list(encoded_images), dtype=tf.string)
        )
    return request


def grpc_predict(target: str, request, *, timeout: float = 60.0) -> list[dict[str, np.ndarray]]:
    """Sends a PredictRequest to TF Serving's gRPC port (`host:8500`); one dict per image."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    options = [("grpc.max_receive_message_length", 256 * 1024 * 1024)]
    with grpc.insecure_channel(target, options=options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, timeout=timeout)
    outputs = {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}
    batch = len(outputs["num_detections"])
    return [{name: value[index] for name, value in outputs.items()} for index in range(batch)]


# --------------------------------------------------------------------------- printing


def load_labels(path: str | Path | None) -> dict[int, str]:
    """{category id: class name} from an export's `assets/labels.json` (empty without one)."""
    if path is None:
        return {}
    return {int(item["category_id"]): item["name"] for item in json.loads(Path(path).read_text())}


def describe(outputs: Mapping[str, np.ndarray], names: Mapping[int, str]) -> list[str]:
    """One line per detection of one image: class, score and box (x, y, w, h)."""
    count = int(np.asarray(outputs["num_detections"]))
    lines = []
    for index in range(count):
        ymin, xmin, ymax, xmax = (float(v) for v in np.asarray(outputs["detection_boxes"])[index])
        category = int(np.asarray(outputs["detection_classes"])[index])
        score = float(np.asarray(outputs["detection_scores"])[index])
        lines.append(
            f"  {names.get(category, category)!s:>12}  {score:.3f}  "
            f"x={xmin:.1f} y={ymin:.1f} w={xmax - xmin:.1f} h={ymax - ymin:.1f}"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", type=Path, help="JPEG / PNG files.")
    parser.add_argument("--rest", help="TF Serving REST address, e.g. http://localhost:8501")
    parser.add_argument("--grpc", help="TF Serving gRPC address, e.g. localhost:8500")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="The served model's name.")
    parser.add_argument("--version", type=int, help="A model version (default: the latest).")
    parser.add_argument("--labels", type=Path, help="The export's assets/labels.json.")
    parser.add_argument("--write-bodies", type=Path, help="Write the REST bodies here as JSON.")
    args = parser.parse_args(argv)

    try:
        encoded = [path.read_bytes() for path in args.images]
        images = [load_image(path) for path in args.images]
    except OSError as error:  # missing file, or not an image PIL can read
        print(f"error: {error}", file=sys.stderr)
        return 2
    bodies = {"image_bytes": rest_image_bytes_body(encoded)}
    if len({image.shape for image in images}) == 1:
        bodies["image_tensor"] = rest_image_tensor_body(images)
    else:
        print("images differ in size: no uint8 tensor body (use the bytes signature)")
    for name, body in bodies.items():
        size = len(json.dumps(body))
        print(f"REST body {name}: signature {body['signature_name']}, {size / 1e3:.1f} kB")
        if args.write_bodies is not None:
            args.write_bodies.mkdir(parents=True, exist_ok=True)
            (args.write_bodies / f"{name}.json").write_text(json.dumps(body))

    names = load_labels(args.labels)
    answers: list[tuple[str, list[dict[str, np.ndarray]]]] = []
    if args.rest:
        for name, body in bodies.items():
            answers.append(
                (f"REST {name}", rest_predict(args.rest, args.model, body, version=args.version))
            )
    if args.grpc:
        request = grpc_predict_request(args.model, encoded_images=encoded, version=args.version)
        answers.append(("gRPC image_bytes", grpc_predict(args.grpc, request)))
    for label, outputs in answers:
        print(label)
        for path, image_outputs in zip(args.images, outputs):
            print(f" {path}: {int(np.asarray(image_outputs['num_detections']))} detections")
            print("\n".join(describe(image_outputs, names)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
