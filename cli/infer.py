"""`maskspine infer`: a checkpoint run over image files, a video or a camera, written as the
reference's JSON.

    maskspine infer --checkpoint runs/260101_MaskRCNN_shapes_256x256 --input photos/ \
        --output predictions.json --score-threshold 0.3
    maskspine infer --checkpoint runs/<run> --input clip.mp4 --output clip.json \
        --video-output clip_drawn.mp4 --frame-stride 2
    maskspine infer --checkpoint runs/<run> --input camera:0 --output live.json \
        --video-output live.mp4 --max-frames 300

Images: every JPEG / PNG in the folder's top level (or the one file given) is read; an image
that cannot be read is named on stderr and skipped, the others are still written, and the
exit code is then 1.

Videos (any other file: MP4, MOV, WebM, MKV, AVI, animated GIF, ... as FFmpeg reads them;
the `video` extra) and cameras (`camera:N`): one JSON entry per frame run, keyed
`<input>#<frame number, 6 digits>` with the frame's time in seconds (`maskspine.formats`).
A video cut short or damaged keeps the frames before the damage, names it on stderr and exits
with 1. Ctrl-C stops after the frames in flight and writes everything so far (exit 0 for a
camera, 1 for a file); a second Ctrl-C aborts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from maskspine.cli.common import (
    CHECKPOINT_HELP,
    CONFIG_HELP,
    PRECISION_HELP,
    SET_HELP,
    Precision,
    precision_override,
    report_failures,
    user_errors,
)

INPUT_HELP = (
    "An image file or a folder of JPEG / PNG images; a video file (.mp4, .mov, .webm, .mkv, "
    ".avi, .gif, ...: whatever FFmpeg reads); or camera:N for camera device N (/dev/videoN)."
)


@user_errors
def infer_command(
    config: Annotated[Path | None, typer.Argument(help=CONFIG_HELP, show_default=False)] = None,
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help=CHECKPOINT_HELP)] = ...,
    input: Annotated[str, typer.Option("--input", help=INPUT_HELP)] = ...,
    output: Annotated[Path, typer.Option("--output", help="The JSON file to write.")] = ...,
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
            help="Video input: write every frame with its predictions drawn (as `maskspine "
            "draw` draws them) to this video, at the source's size and frame rate "
            "(.mp4 / .mov / .mkv: H.264, .webm: VP9, .avi: MPEG-4, .gif).",
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
    draw_threshold: Annotated[
        float,
        typer.Option(
            "--draw-threshold",
            min=0.0,
            max=1.0,
            help="Video input: draw predictions scoring at least this.",
        ),
    ] = 0.5,
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
    overrides: Annotated[list[str] | None, typer.Option("--set", help=SET_HELP)] = None,
) -> None:
    """Predict instances in images, a video or a camera: JSON keyed by image path or by frame,
    as the reference writes it."""
    from maskspine.errors import InferenceError
    from maskspine.files import check_writable
    from maskspine.video import is_camera, is_video_file

    check_writable(output, "predictions")
    if not is_camera(input) and not Path(input).expanduser().exists():
        raise FileNotFoundError(
            f"input not found: {input} (give an image file, a folder of images, a video file "
            "or camera:N)"
        )
    if is_camera(input) or is_video_file(input):
        _infer_video(
            config, checkpoint, input, output, score_threshold, batch_size, overrides,
            video_output, frame_stride, max_frames, draw_threshold, show,
        )  # fmt: skip
        return
    video_options = {
        "--video-output": video_output is not None,
        "--frame-stride": frame_stride != 1,
        "--max-frames": max_frames is not None,
        "--show": bool(show),
    }
    given = [name for name, used in video_options.items() if used]
    if given:
        raise InferenceError(
            f"{', '.join(given)} take a video file or camera:N as --input, not images ({input})"
        )

    from maskspine.checkpoints import load_model
    from maskspine.data.images import find_images
    from maskspine.formats import save_inference_json
    from maskspine.predict import predict_images

    images = find_images(input)
    overrides = [*(overrides or []), *precision_override(precision)]
    model, model_config, weights = load_model(checkpoint, config, overrides)
    typer.echo(f"Loaded {weights}; {len(images)} image(s) from {input}")
    entries, failures = predict_images(
        model,
        model_config,
        images,
        batch_size=batch_size,
        score_threshold=score_threshold,
        progress=True,
    )
    save_inference_json(output, entries)
    count = sum(len(entry["predictions"]) for entry in entries.values())
    typer.echo(f"Wrote {count} predictions for {len(entries)} image(s) to {output}")
    report_failures(failures, "read")
    if failures:
        raise typer.Exit(1)


def _infer_video(
    config: Path | None,
    checkpoint: Path,
    input: str,
    output: Path,
    score_threshold: float,
    batch_size: int | None,
    overrides: list[str] | None,
    video_output: Path | None,
    frame_stride: int,
    max_frames: int | None,
    draw_threshold: float,
    show: bool | None,
) -> None:
    """A video file or a camera through the model (`maskspine.video.infer_video`)."""
    from maskspine.checkpoints import load_model
    from maskspine.errors import InferenceError
    from maskspine.video import (
        FrameWindow,
        VideoWriter,
        display_available,
        infer_video,
        is_camera,
        open_source,
        stop_on_interrupt,
    )

    camera = is_camera(input)
    if video_output is not None:  # an unwritable path or unknown ending fails before the model
        VideoWriter.check_path(video_output)
    if show:
        FrameWindow.check_available()
    with open_source(input) as source:
        info = source.info
        model, model_config, weights = load_model(checkpoint, config, overrides or [])
        length = f", {info.frame_count} frames" if info.frame_count else ""
        typer.echo(
            f"Loaded {weights}; {'camera' if camera else 'video'} {input}: "
            f"{info.width}x{info.height}, {float(info.frame_rate):.3g} frames/s{length}"
        )
        if show is None:
            show = camera and display_available()
            if show:
                try:
                    FrameWindow.check_available()
                except InferenceError as error:  # a display, but no GUI toolkit for matplotlib
                    typer.echo(f"not showing the frames: {error}", err=True)
                    show = False
        if camera and not show and max_frames is None:
            typer.echo("Press Ctrl-C to stop.")
        with stop_on_interrupt(lambda text: typer.echo(text, err=True)) as stop:
            summary = infer_video(
                model,
                model_config,
                source,
                output,
                video_output=video_output,
                frame_stride=frame_stride,
                max_frames=max_frames,
                batch_size=batch_size,
                score_threshold=score_threshold,
                draw_threshold=draw_threshold,
                progress=True,
                window=FrameWindow(f"maskspine: {input}") if show else None,
                stop=stop,
            )
    typer.echo(
        f"Wrote {summary.predictions} predictions for {summary.frames_predicted} frame(s) "
        f"to {output}"
    )
    if summary.video_output is not None:
        typer.echo(f"Wrote {summary.frames_written} drawn frame(s) to {summary.video_output}")
    if summary.stopped:
        typer.echo(f"Stopped after {summary.frames_read} frame(s); everything so far is written")
    if summary.damage is not None:
        typer.echo(
            f"error: {input}: {summary.damage}; the {summary.frames_read} frame(s) before it "
            "were used",
            err=True,
        )
        raise typer.Exit(1)
    if summary.stopped and not camera:
        raise typer.Exit(1)
