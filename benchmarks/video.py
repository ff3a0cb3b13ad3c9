"""Frames per second of `maskspine infer` on a 640x480 video, next to the same frames as PNG files.

    python benchmarks/video.py                                   # both configs, 3 s at 10 frames/s
    python benchmarks/video.py --configs configs/shapes_demo.yaml --seconds 1 --fps 4   # a quick check

For each config: a fresh model (weights do not change the time; `--checkpoint RUN` takes a
trained one, whose config then applies), warmed up on one batch (the trace is not timed), then
timed on the same frames three ways, each through the library call `maskspine infer` makes:

1. video -> JSON (`maskspine.inference.run_inference`: decode, the batched runner,
   post-processing, the JSON written entry by entry);
2. video -> JSON + the drawn video (`--video-output`: every frame drawn as `maskspine draw`
   draws it and encoded as H.264);
3. PNG files of the same decoded frames -> JSON (`maskspine.predict.predict_images` +
   `save_inference_json`: what `maskspine infer --input DIR` does).

The test video (made here with PyAV, H.264 in MP4) shows a few flat-coloured shapes moving
over a grey ground. Batches are `test_batch_size` (or `--batch-size`); predictions are all
kept (`--score-threshold 0`, as `infer` by default), so an untrained model's 100 detections
per frame are pasted and encoded: the post-processing cost of a busy scene.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from maskspine.checkpoints import load_model  # noqa: E402
from maskspine.config import load_config  # noqa: E402
from maskspine.formats import save_inference_json  # noqa: E402
from maskspine.inference import OutputPlan, run_inference  # noqa: E402
from maskspine.inputs import collect_inputs  # noqa: E402
from maskspine.predict import predict_images  # noqa: E402
from maskspine.segmenter import Segmenter  # noqa: E402
from maskspine.video import VideoFile, VideoWriter  # noqa: E402

WIDTH, HEIGHT = 640, 480


def shapes_frame(index: int, fps: float) -> np.ndarray:
    """uint8 [480, 640, 3]: a disc, a square and a triangle moving over a grey ground."""
    t = index / fps
    image = Image.new("RGB", (WIDTH, HEIGHT), (110, 110, 110))
    draw = ImageDraw.Draw(image)
    x = 60 + (t * 120) % (WIDTH - 200)
    draw.ellipse((x, 80, x + 110, 190), fill=(220, 60, 50))
    y = 120 + 100 * math.sin(t * 2.0)
    draw.rectangle((380, y, 500, y + 120), fill=(50, 170, 220))
    x = WIDTH - 160 - (t * 90) % (WIDTH - 220)
    draw.polygon([(x, 440), (x + 140, 440), (x + 70, 310)], fill=(240, 210, 60))
    return np.asarray(image)


def make_video(path: Path, frames: int, fps: float) -> Path:
    with VideoWriter(path, fps, (HEIGHT, WIDTH)) as writer:
        for index in range(frames):
            writer.write(shapes_frame(index, fps))
    return path


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def benchmark(config_path: str, args: argparse.Namespace, folder: Path, video: Path) -> None:
    if args.checkpoint:
        model, config, _ = load_model(args.checkpoint, config_path, args.overrides)
    else:
        from maskspine.modeling.factory import build_mask_rcnn

        config = load_config(config_path, args.overrides)
        if config.classes_from_data:  # the shapes demo: the shapes set's classes
            from maskspine.data.shapes import SHAPE_CLASSES

            config = load_config(
                config_path,
                [
                    f"coco_classes=[background, {', '.join(SHAPE_CLASSES)}]",
                    f"num_classes={len(SHAPE_CLASSES) + 1}",
                    *args.overrides,
                ],
            )
        model = build_mask_rcnn(config)
    batch_size = int(args.batch_size or config.test_batch_size or 1)
    pngs = folder / f"frames_{Path(config_path).stem}"
    pngs.mkdir()
    with VideoFile(video) as source:  # the decoded frames, as PNG files
        for frame in source:
            Image.fromarray(frame.pixels).save(pngs / f"{frame.index:06d}.png")
    images = [found.path for found in collect_inputs([pngs]).images]
    count = len(images)
    # Warm-up: trace the runner at this batch size (shared by the three timed runs).
    predict_images(model, config, images[:batch_size] * batch_size, batch_size=batch_size)

    segmenter = Segmenter(model, config, batch_size=batch_size)
    video_input = collect_inputs([video])

    def run_video(video_output=None):
        plan = OutputPlan(json=folder / "video.json", video_output=video_output)
        run_inference(segmenter, video_input, plan)

    def run_images():
        entries, _ = predict_images(model, config, images, batch_size=batch_size)
        save_inference_json(folder / "images.json", entries)

    seconds = {
        "video -> JSON": timed(run_video),
        "video -> JSON + drawn video": timed(lambda: run_video(folder / "drawn.mp4")),
        "PNG files -> JSON": timed(run_images),
    }
    print(
        f"\n{config_path}: SpineNet-{config.backbone.arch}, input {config.img_height}x"
        f"{config.img_width}, batch {batch_size}, {count} frames of {WIDTH}x{HEIGHT}"
    )
    for name, value in seconds.items():
        print(f"  {name:<28} {count / value:7.2f} frames/s  ({value:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["configs/shapes_demo.yaml", "configs/mask_rcnn_49_640.yaml"],
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="length of the test video")
    parser.add_argument("--fps", type=float, default=10.0, help="its frame rate")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--checkpoint", default=None, help="a run directory (else a fresh model)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    frames = max(1, round(args.seconds * args.fps))
    with tempfile.TemporaryDirectory(prefix="maskspine_video_bench_") as temporary:
        folder = Path(temporary)
        video = make_video(folder / "shapes_640x480.mp4", frames, args.fps)
        print(f"test video: {frames} frames, {WIDTH}x{HEIGHT}, {args.fps:g} frames/s, H.264")
        for config_path in args.configs:
            run_folder = folder / Path(config_path).stem
            run_folder.mkdir()
            benchmark(config_path, args, run_folder, video)


if __name__ == "__main__":
    main()
