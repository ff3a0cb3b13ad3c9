"""`maskspine infer` as a library function: every input through the model, the predictions
JSON, drawings and drawn videos written in the same pass, nothing of the user's overwritten.

    found = collect_inputs(["photos/", "clip.mp4"], recursive=True)        # maskspine.inputs
    plan = OutputPlan(json=Path("p.json"), draw_dir=Path("drawn/"))
    plan.check(found)                       # before the model loads: one error line if unsafe
    seg = maskspine.load("runs/<run>")
    with stop_on_interrupt() as stop:       # maskspine.interrupt
        summary = run_inference(seg, found, plan, stop=stop)

Outputs (`OutputPlan`): the reference's JSON (images keyed by path, video frames by
`"<video>#<frame>"`), one drawn PNG per image under the drawing folder (the name the image
has below the folder it was found in, `.png`), one drawn video per video (`<name>.mp4` in the
drawing folder, or `video_output` for a single video), and a window. Every file is written
through `maskspine.files.StagedOutputs`: under a temporary name, renamed onto its destination
when the run ends. The first Ctrl-C (`stop`) ends the run after the images or frames in
flight and writes everything so far (the JSON and the drawn video hold the same frames); an
exception or a second Ctrl-C leaves every previous output as it was.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from maskspine.errors import InferenceError
from maskspine.files import StagedOutputs, check_outputs
from maskspine.formats import InferenceJsonWriter
from maskspine.inputs import InputFile, Inputs
from maskspine.interrupt import until_stopped
from maskspine.predict import frames_to_run
from maskspine.segmenter import Segmenter
from maskspine.video import FrameSource, VideoWriter, open_source
from maskspine.visualize import (
    FrameWindow,
    draw_inference_entry,
    render_inference_entry,
    save_drawing,
)

#: The container of drawn videos in a drawing folder.
DRAWN_VIDEO_SUFFIX = ".mp4"


@dataclass
class OutputPlan:
    """What a run writes, and how.

    Attributes:
        json: the inference JSON, or None.
        draw_dir: the folder of drawn images and videos, or None.
        video_output: the drawn video of the one video (or camera) input, or None.
        show: show the drawn frames of a video or camera in a window.
        score_threshold: predictions scoring below this are left out of everything.
        draw_threshold: predictions scoring below this are not drawn.
        frame_stride: run the model on every N-th frame of a video.
        max_frames: stop a video or camera after this many frames have been run.
    """

    json: Path | None = None
    draw_dir: Path | None = None
    video_output: Path | None = None
    show: bool = False
    score_threshold: float = 0.0
    draw_threshold: float = 0.5
    frame_stride: int = 1
    max_frames: int | None = None

    @property
    def draws(self) -> bool:
        return self.draw_dir is not None or self.video_output is not None or self.show

    def check(self, inputs: Inputs) -> None:
        """Every check that can fail before the model loads: something is written, the
        video options fit the inputs, no output is an input or holds one, each output can
        be written.

        Raises:
            DataError, InferenceError: one line naming the option, the path and the fix.
        """
        if not (self.json or self.draw_dir or self.video_output or self.show):
            raise InferenceError(
                "nothing would be written: give --output FILE.json for the predictions, "
                "--draw DIR for drawn images and videos, or both"
            )
        has_video = bool(inputs.videos) or inputs.camera is not None
        video_options = {
            "--video-output": self.video_output is not None,
            "--frame-stride": self.frame_stride != 1,
            "--max-frames": self.max_frames is not None,
            "--show": self.show,
        }
        given = [name for name, used in video_options.items() if used]
        if given and not has_video:
            raise InferenceError(
                f"{', '.join(given)} take a video file or camera:N as --input; the inputs "
                "are images (use --draw DIR to draw them)"
            )
        if self.frame_stride < 1:
            raise InferenceError(f"--frame-stride must be at least 1, got {self.frame_stride}")
        if self.max_frames is not None and self.max_frames < 1:
            raise InferenceError(f"--max-frames must be at least 1, got {self.max_frames}")
        if self.video_output is not None and len(inputs.videos) > 1:
            raise InferenceError(
                f"--video-output takes one video and there are {len(inputs.videos)}; use "
                "--draw DIR to draw each video into DIR"
            )
        if self.video_output is not None:
            VideoWriter.check_path(self.video_output)
        if self.show:
            FrameWindow.check_available()
        check_outputs(
            {"--output": self.json, "--video-output": self.video_output},
            [file.path for file in inputs.files],
            folders={"--draw": self.draw_dir},
        )


@dataclass
class InferenceSummary:
    """What `run_inference` did.

    Attributes:
        images: images run.
        frames: video or camera frames run (one JSON entry each).
        frames_read: video or camera frames taken from their sources.
        predictions: instances written to the JSON.
        written: the files written (after the run: in place).
        drawn_images: drawn PNGs written (one per image run, with a drawing folder).
        drawn_videos: (destination, frames written) of each drawn video.
        skipped: (path, reason) of every input left out (found by `collect_inputs` or
            unreadable when read).
        damage: (video, what cut it short) of each damaged video (its earlier frames used).
        stopped: stopped early (Ctrl-C, the window closed).
    """

    images: int = 0
    frames: int = 0
    frames_read: int = 0
    predictions: int = 0
    written: list[Path] = field(default_factory=list)
    drawn_images: int = 0
    drawn_videos: list[tuple[Path, int]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    damage: list[tuple[str, str]] = field(default_factory=list)
    stopped: bool = False


class _Names:
    """Unique output names in the drawing folder (`x.png`, `x_2.png`, ...)."""

    def __init__(self) -> None:
        self._used: set[Path] = set()

    def take(self, name: Path, suffix: str) -> Path:
        stem, number = name.with_suffix(""), 1
        candidate = stem.with_name(stem.name + suffix)
        while candidate in self._used:
            number += 1
            candidate = stem.with_name(f"{stem.name}_{number}{suffix}")
        self._used.add(candidate)
        return candidate


def run_inference(
    segmenter: Segmenter,
    inputs: Inputs,
    plan: OutputPlan,
    *,
    stop: threading.Event | None = None,
    progress: bool = False,
    echo: Callable[[str], None] | None = None,
    open_video: Callable[[str], FrameSource] = open_source,
) -> InferenceSummary:
    """Runs the segmenter over `inputs` and writes what `plan` asks (see the module docstring).

    Args:
        segmenter: `maskspine.load(...)`.
        inputs: `maskspine.inputs.collect_inputs(...)`.
        plan: the outputs, checked already (`OutputPlan.check`).
        stop: set (by the first Ctrl-C) to end after the work in flight, writing it.
        progress: show progress lines.
        echo: where to say what is opened (a video's size and rate), e.g. `typer.echo`.
        open_video: opens a video file or `camera:N` (tests give fake cameras).

    Returns:
        An `InferenceSummary`; the skipped inputs of `inputs` are in it too.
    """
    stop = stop if stop is not None else threading.Event()
    summary = InferenceSummary(skipped=list(inputs.skipped))
    names = _Names()
    with StagedOutputs() as staged:
        writer = (
            InferenceJsonWriter(staged.stage(plan.json), atomic=False)
            if plan.json is not None
            else None
        )
        try:
            if inputs.images:
                _run_images(segmenter, inputs.images, plan, staged, writer, names, summary, stop, progress)  # fmt: skip
            sources = [(video.path, video.name) for video in inputs.videos]
            if inputs.camera is not None:
                sources.append((Path(inputs.camera), Path("camera")))
            for path, name in sources:
                if stop.is_set():
                    break
                spec = inputs.camera if inputs.camera is not None else str(path)
                with open_video(spec) as source:
                    if echo is not None:
                        info = source.info
                        length = f", {info.frame_count} frames" if info.frame_count else ""
                        kind = "camera" if inputs.camera is not None else "video"
                        echo(
                            f"{kind} {spec}: {info.width}x{info.height}, "
                            f"{float(info.frame_rate):.3g} frames/s{length}"
                        )
                    destination = plan.video_output
                    if destination is None and plan.draw_dir is not None:
                        destination = plan.draw_dir / names.take(name, DRAWN_VIDEO_SUFFIX)
                    _run_video(segmenter, source, spec, plan, staged, writer, destination, summary, stop, progress)  # fmt: skip
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        if writer is not None:
            writer.close()
        summary.written = sorted(destination for destination in staged.staged)
    summary.stopped = stop.is_set()
    return summary


def _run_images(
    segmenter: Segmenter,
    images: list[InputFile],
    plan: OutputPlan,
    staged: StagedOutputs,
    writer: InferenceJsonWriter | None,
    names: _Names,
    summary: InferenceSummary,
    stop: threading.Event,
    progress: bool,
) -> None:
    failures: list[tuple[str, str]] = []
    by_path = {image.path: image for image in images}
    paths = until_stopped((image.path for image in images), stop)
    for path, pixels, entry in segmenter.reference_entries(
        paths,
        failures,
        score_threshold=plan.score_threshold,
        progress=progress,
        total=len(images),
    ):
        summary.images += 1
        summary.predictions += len(entry["predictions"])
        if writer is not None:
            writer.add(str(path), entry)
        if plan.draw_dir is not None:  # the PNG `maskspine draw` makes of the entry
            ax = draw_inference_entry(
                pixels, entry, score_threshold=max(plan.draw_threshold, plan.score_threshold)
            )
            destination = plan.draw_dir / names.take(by_path[path].name, ".png")
            save_drawing(ax, staged.stage(destination), pixels.shape[:2])
            summary.drawn_images += 1
    summary.skipped.extend(failures)


def _run_video(
    segmenter: Segmenter,
    source: FrameSource,
    name: str,
    plan: OutputPlan,
    staged: StagedOutputs,
    writer: InferenceJsonWriter | None,
    video_output: Path | None,
    summary: InferenceSummary,
    stop: threading.Event,
    progress: bool,
) -> None:
    """One video or camera: its frames' entries into the JSON, every frame drawn into
    `video_output` (and the window) with the latest predictions."""
    info = source.info
    frames = source
    if plan.max_frames is not None:
        frames = itertools.islice(frames, (plan.max_frames - 1) * plan.frame_stride + 1)
    frames = until_stopped(frames, stop)
    drawn_video = (
        VideoWriter(staged.stage(video_output), info.frame_rate, (info.height, info.width))
        if video_output is not None
        else None
    )
    window = FrameWindow(f"maskspine: {name}") if plan.show else None
    threshold = max(plan.draw_threshold, plan.score_threshold)
    try:
        for result in segmenter.predict_video(
            frames,
            name=info.name,
            stride=plan.frame_stride,
            score_threshold=plan.score_threshold,
            progress=progress,
            num_frames=frames_to_run(
                info.frame_count,
                info.duration_s,
                float(info.frame_rate),
                plan.frame_stride,
                plan.max_frames,
            ),
        ):
            summary.frames_read += 1
            if result.predicted:
                summary.frames += 1
                summary.predictions += len(result.entry["predictions"])
                if writer is not None:
                    writer.add(result.key, result.entry)
            if drawn_video is None and window is None:
                continue
            drawn = render_inference_entry(
                result.frame.pixels, result.entry, score_threshold=threshold
            )
            if drawn_video is not None:
                drawn_video.write(drawn)
            if window is not None and not window.show(drawn):
                stop.set()
    finally:
        if drawn_video is not None:
            drawn_video.close()
            summary.drawn_videos.append((video_output, drawn_video.count))  # type: ignore[arg-type]
        if window is not None:
            window.close()
    damage = getattr(source, "damage", None)
    if damage is not None:
        summary.damage.append((name, damage))
