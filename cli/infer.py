"""`maskspine infer`: a checkpoint run over images, videos or a camera; the predictions as the
reference's JSON, and drawn images and videos in the same pass.

    maskspine infer --checkpoint runs/<run> --input photos/ --output predictions.json \\
        --draw drawn/ --score-threshold 0.3
    maskspine infer --checkpoint runs/<run> --input 'shots/*.webp' --input extra.jpg \\
        --input archive/ --recursive --draw drawn/
    maskspine infer --checkpoint runs/<run> --input clip.mp4 --output clip.json \\
        --video-output clip_drawn.mp4 --frame-stride 2
    maskspine infer --checkpoint runs/<run> --input camera:0 --output live.json --max-frames 300

Inputs (`--input`, repeatable): files, folders (`--recursive`: their sub-folders too), glob
patterns, or camera:N. Every file is sorted by its content: what Pillow reads is an image
(JPEG, PNG, WebP, BMP, TIFF, a one-frame GIF, ...), an animated GIF or what FFmpeg reads as a
video is a video (the `video` extra). Each file left out is named on stderr with the reason,
then a count, and the exit code is 1; the others are still run and written.

Outputs: `--output` (the JSON: images keyed by path, frames by `<video>#<frame>`), `--draw
DIR` (one drawn PNG per image, as `maskspine draw` draws it, and one drawn `.mp4` per
video), `--video-output` (the drawn video of a single video or camera). No output may be an
input or a folder holding the inputs; all are checked, with their folders' permissions,
before the model loads. Existing outputs are replaced only when the run has written the new
ones whole (temporary files, renamed at the end).

Ctrl-C stops after the images or frames in flight and writes everything so far (the JSON and
the drawn video hold the same frames; exit 0 for a camera, 1 otherwise); a second Ctrl-C
aborts and leaves every previous output as it was. A video cut short or damaged keeps the
frames before the damage, names it on stderr and exits with 1.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer

from maskspine.cli.common import (
    CHECKPOINT_HELP,
    CONFIG_HELP,
    JIT_HELP,
    PRECISION_HELP,
    SET_HELP,
    JitCompile,
    Precision,
    compute_overrides,
    report_failures,
    user_errors,
)
from maskspine.video import open_source

INPUT_HELP = (
    "An image or video file, a folder, a glob pattern ('photos/*.jpg'), or camera:N for "
    "camera device N (/dev/videoN). Repeat for several. Files are sorted into images and "
    "videos by their content."
)


@user_errors
def infer_command(
    config: Annotated[Path | None, typer.Argument(help=CONFIG_HELP, show_default=False)] = None,
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help=CHECKPOINT_HELP)] = ...,
    inputs: Annotated[list[str], typer.Option("--input", help=INPUT_HELP)] = ...,
    recursive: Annotated[
        bool, typer.Option("--recursive", help="Search the sub-folders of folders too.")
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option("--output", help="The predictions JSON to write (the reference's format)."),
    ] = None,
    draw: Annotated[
        Path | None,
        typer.Option(
            "--draw",
            help="Folder for drawn results: a PNG per image (as `maskspine draw` draws it) and "
            "an .mp4 per video, with the run's class names and --draw-threshold.",
        ),
    ] = None,
    score_threshold: Annotated[
        float,
        typer.Option(
            "--score-threshold",
            min=0.0,
            max=1.0,
            help="Leave out predictions scoring below this (the config's "
            "test_cfg.rcnn.score_thr applies first).",
        ),
    ] = 0.0,
    draw_threshold: Annotated[
        float,
        typer.Option(
            "--draw-threshold",
            min=0.0,
            max=1.0,
            help="Draw predictions scoring at least this (--draw, --video-output, --show).",
        ),
    ] = 0.5,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size", min=1, help="Images or frames per model call (default: config)."
        ),
    ] = None,
    video_output: Annotated[
        Path | None,
        typer.Option(
            "--video-output",
            help="One video or camera input: write every frame with its predictions drawn to "
            "this video, at the source's size and frame rate (.mp4 / .mov / .mkv: H.264, "
            ".webm: VP9, .avi: MPEG-4, .gif).",
        ),
    ] = None,
    frame_stride: Annotated[
        int,
        typer.Option(
            "--frame-stride",
            min=1,
            help="Video input: run the model on every N-th frame (frames 0, N, 2N, ...); the "
            "drawn video still gets every frame, with the latest predictions.",
        ),
    ] = 1,
    max_frames: Annotated[
        int | None,
        typer.Option(
            "--max-frames", min=1, help="Video input: stop after this many frames have been run."
        ),
    ] = None,
    show: Annotated[
        bool | None,
        typer.Option(
            "--show/--no-show",
            help="Video input: show the drawn frames in a window (default: for a camera, "
            "when a display exists). Closing the window stops.",
            show_default=False,
        ),
    ] = None,
    precision: Annotated[Precision | None, typer.Option("--precision", help=PRECISION_HELP)] = None,
    jit_compile: Annotated[JitCompile | None, typer.Option("--jit-compile", help=JIT_HELP)] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help=SET_HELP)] = None,
) -> None:
    """Predict instances in images, videos or a camera: the JSON keyed by image path or by
    frame, as the reference writes it, and drawn images and videos in the same pass."""
    from maskspine.inference import OutputPlan
    from maskspine.inputs import collect_inputs
    from maskspine.segmenter import load
    from maskspine.visualize import FrameWindow, display_available

    found = collect_inputs(inputs, recursive=recursive)
    camera = found.camera is not None
    if show is None:
        show = camera and display_available()
        if show:
            try:
                FrameWindow.check_available()
            except Exception as error:  # a display, but no GUI toolkit for matplotlib
                typer.echo(f"not showing the frames: {error}", err=True)
                show = False
    plan = OutputPlan(
        json=output,
        draw_dir=draw,
        video_output=video_output,
        show=bool(show),
        score_threshold=score_threshold,
        draw_threshold=draw_threshold,
        frame_stride=frame_stride,
        max_frames=max_frames,
    )
    plan.check(found)  # before the model loads: fails in a second
    with contextlib.ExitStack() as stack:
        # A camera is opened before the model loads too (a missing one fails at once).
        source = stack.enter_context(open_source(found.camera)) if camera else None
        segmenter = load(
            checkpoint,
            config,
            overrides=[*(overrides or []), *compute_overrides(precision, jit_compile)],
            batch_size=batch_size,
        )
        _run(segmenter, found, plan, source)


def _run(segmenter, found, plan, source) -> None:
    """The run and its report (see the module docstring)."""
    from maskspine.inference import run_inference
    from maskspine.interrupt import stop_on_interrupt

    camera = found.camera is not None
    counts = [f"{len(found.images)} image(s)"] if found.images else []
    counts += [f"{len(found.videos)} video(s)"] if found.videos else []
    counts += [found.camera] if camera else []
    precision_used = getattr(segmenter.model, "precision", "float32")
    typer.echo(f"Loaded {segmenter.weights} ({precision_used}); {', '.join(counts)}")
    if camera and not plan.show and plan.max_frames is None:
        typer.echo("Press Ctrl-C to stop.")
    with stop_on_interrupt(lambda text: typer.echo(text, err=True)) as stop:
        summary = run_inference(
            segmenter,
            found,
            plan,
            stop=stop,
            progress=True,
            echo=typer.echo,
            open_video=(lambda spec: source) if source is not None else open_source,
        )
    runs = [f"{summary.images} image(s)"] if found.images else []
    runs += [f"{summary.frames} frame(s)"] if found.videos or camera else []
    if plan.json is not None:
        typer.echo(
            f"Wrote {summary.predictions} predictions for {' and '.join(runs)} to {plan.json}"
        )
    if summary.drawn_images:
        typer.echo(f"Drew {summary.drawn_images} image(s) into {plan.draw_dir}")
    for path, frames in summary.drawn_videos:
        typer.echo(f"Wrote {frames} drawn frame(s) to {path}")
    if summary.stopped:
        typer.echo("Stopped early; everything so far is written")
    report_failures(summary.skipped, "read as an image or a video", unit="file")
    for video, damage in summary.damage:
        typer.echo(f"error: {video}: {damage}; the frames before it were used", err=True)
    if summary.skipped or summary.damage or (summary.stopped and not camera):
        raise typer.Exit(1)
