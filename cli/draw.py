"""`maskspine draw`: one PNG per image of an inference JSON, its predictions drawn over it.

    maskspine draw --predictions predictions.json --output drawings/ --score-threshold 0.5

Masks are translucent in a colour per class, with boxes, class names and scores. Each PNG
has the image's size (small images scaled up by a whole factor to at least 480 pixels on
their longer side, so the labels stay legible). `--images DIR` finds the images by file name
in DIR when the paths in the JSON are not where the images are now.
Frames of a video (keys `clip.mp4#000123`, from `maskspine infer --input clip.mp4`) are drawn
from the video as `clip_000123.png`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from maskspine.cli.common import report_failures, user_errors


@user_errors
def draw_command(
    predictions: Annotated[
        Path, typer.Option("--predictions", help="The JSON written by `maskspine infer`.")
    ] = ...,
    output: Annotated[Path, typer.Option("--output", help="Folder for the PNG files.")] = ...,
    score_threshold: Annotated[
        float,
        typer.Option(
            "--score-threshold", min=0.0, max=1.0, help="Draw predictions scoring at least this."
        ),
    ] = 0.5,
    images: Annotated[
        Path | None,
        typer.Option(
            "--images", help="Look for the images here by file name (before the JSON's paths)."
        ),
    ] = None,
) -> None:
    """Draw predictions (masks, boxes, class names, scores) on their images as PNG files."""
    from maskspine.formats import load_inference_json
    from maskspine.visualize import draw_predictions

    if images is not None and not images.is_dir():
        raise FileNotFoundError(f"images folder not found: {images}")
    entries = load_inference_json(predictions)
    written, failures = draw_predictions(
        entries, output, score_threshold=score_threshold, images_dir=images
    )
    typer.echo(f"Drew {len(written)} image(s) into {output}")
    report_failures(failures, "drawn")
    if failures:
        raise typer.Exit(1)
