"""Drawing instances (ground truth or predictions) on images with matplotlib.

    ax = draw_instances(image, boxes, masks, names=["circle", "square"], scores=[0.9, 0.7])
    ax.figure.savefig("out.png")
    ax = draw_inference_entry(read_image(path), entries[path], score_threshold=0.5)
    written, failures = draw_predictions(load_inference_json("preds.json"), "drawings/")
    pixels = render_inference_entry(frame, entry, score_threshold=0.5)   # a video's frame
    window = FrameWindow("maskspine"); window.show(pixels)               # live frames

Masks are translucent, one colour per class, with an opaque outline; boxes have a dark
halo and labels sit on a patch of the class colour with black or white text, whichever
reads better, so drawings stay legible on dark and on light images. Figures are made
without pyplot (no global state, nothing to close) unless an `ax` is given (the window is
the one user of pyplot). Files are written through `maskspine.files.StagedOutputs`: a
folder of drawings is never left half-replaced, and never holds the images drawn.

Imports: `formats`, `boxes`, `data.images`, `files` and `video` (frames of a video named in
a predictions file); never `maskspine.predict`. No TensorFlow.
"""

from __future__ import annotations

import math
import os
import sys
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.patheffects as patheffects
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from maskspine.boxes import convert_boxes
from maskspine.data.images import read_image
from maskspine.errors import DataError, InferenceError
from maskspine.files import StagedOutputs, check_outputs
from maskspine.formats import entry_instances, parse_frame_key
from maskspine.video import VideoFile

#: Distinct, saturated colours (RGB 0..1) that show on both dark and light backgrounds.
PALETTE: tuple[tuple[float, float, float], ...] = tuple(
    tuple(channel / 255 for channel in rgb)
    for rgb in (
        (230, 25, 75),
        (60, 180, 75),
        (255, 225, 25),
        (0, 130, 200),
        (245, 130, 48),
        (145, 30, 180),
        (70, 240, 240),
        (240, 50, 230),
        (210, 245, 60),
        (250, 190, 212),
        (0, 128, 128),
        (220, 190, 255),
        (170, 110, 40),
        (255, 250, 200),
        (128, 0, 0),
        (170, 255, 195),
        (128, 128, 0),
        (255, 215, 180),
        (0, 0, 128),
        (128, 128, 128),
    )
)

#: Drawings of small images are scaled up by an integer factor to at least this many pixels
#: on the longer side, so that class names and scores stay legible.
MIN_DRAWING_SIZE = 480


def class_colour(key: int | str) -> tuple[float, float, float]:
    """The colour (RGB 0..1) of a class: by contiguous label when an int, else by name."""
    is_label = isinstance(key, (int, np.integer))
    index = int(key) if is_label else zlib.crc32(str(key).encode())
    return PALETTE[index % len(PALETTE)]


def _text_colour(colour: Sequence[float]) -> str:
    """Black or white, whichever contrasts more with `colour` (RGB 0..1) by the WCAG 2
    contrast ratio (relative luminance of the linearised sRGB channels)."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in colour[:3]]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    on_black = (luminance + 0.05) / 0.05
    on_white = 1.05 / (luminance + 0.05)
    return "black" if on_black >= on_white else "white"


def _to_yxyx(boxes: np.ndarray, box_format: str) -> np.ndarray:
    return convert_boxes(np.asarray(boxes, np.float64).reshape(-1, 4), box_format, "yxyx")


def _outline(mask: np.ndarray) -> np.ndarray:
    """bool [h, w]: mask pixels with a 4-neighbour outside the mask."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def _rgba(mask: np.ndarray, colour: Sequence[float], alpha: float) -> np.ndarray:
    """float [h, w, 4]: the colour at `alpha` over the mask, opaque on its outline."""
    layer = np.zeros((*mask.shape, 4), np.float32)
    layer[..., :3] = colour
    layer[..., 3] = np.where(mask, alpha, 0.0)
    layer[_outline(mask), 3] = 0.95
    return layer


def draw_instances(
    image: np.ndarray,
    boxes: np.ndarray | None = None,
    masks: np.ndarray | None = None,
    names: Sequence[str] | None = None,
    scores: Sequence[float] | None = None,
    *,
    labels: Sequence[int] | None = None,
    box_format: str = "yxyx",
    masks_in_boxes: bool = False,
    mask_threshold: float = 0.5,
    alpha: float = 0.45,
    show_boxes: bool = True,
    title: str | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Draws an image with instance masks, boxes and class names (and scores).

    Args:
        image: uint8 [H, W, 3] RGB (or [H, W] grayscale).
        boxes: [N, 4] in image pixels, in `box_format`: "yxyx" (the model's), "xyxy", or
            "xywh" (COCO files'). Needed for labels and for `masks_in_boxes`.
        masks: [N, H, W] bool / 0-1 / probabilities at the image's size, or, with
            `masks_in_boxes`, [N, m, m] each covering its own box (the model's
            `detection_masks` and the pipeline's `gt_masks`). Thresholded at
            `mask_threshold`.
        names: [N] class names written at each box.
        scores: [N] written after the names (predictions).
        labels: [N] contiguous class labels choosing the colours; by name when absent.
        alpha: mask fill opacity.
        show_boxes: draw the boxes (labels are drawn either way when boxes are given).
        title: axes title.
        ax: draw into these axes; a new figure sized to the image otherwise.
    Returns:
        The axes (`ax.figure` is the figure, e.g. for `savefig`).
    """
    image = np.asarray(image)
    height, width = image.shape[:2]
    if ax is None:
        dpi = 100
        scale = max(1.0, MIN_DRAWING_SIZE / max(height, width))
        title_height = 24 if title else 0  # pixels above the image for the title
        figure_height = height * scale + title_height
        figure = Figure(figsize=(width * scale / dpi, figure_height / dpi), dpi=dpi)
        ax = figure.add_axes((0, 0, 1, height * scale / figure_height))
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest")
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)

    count = _count(boxes, masks, names)
    yxyx = _to_yxyx(boxes, box_format) if boxes is not None else None
    colours = [
        class_colour(labels[i] if labels is not None else (names[i] if names else i))
        for i in range(count)
    ]
    if masks is not None and count:
        masks = np.asarray(masks)
        if masks_in_boxes:
            if yxyx is None:
                raise ValueError("masks_in_boxes needs the boxes")
            for i in range(count):
                y1, x1, y2, x2 = yxyx[i]
                if y2 <= y1 or x2 <= x1:
                    continue
                layer = _rgba(masks[i] >= mask_threshold, colours[i], alpha)
                ax.imshow(layer, extent=(x1, x2, y2, y1), interpolation="nearest")
        else:
            overlay = np.zeros((height, width, 4), np.float32)
            for i in range(count):
                layer = _rgba(masks[i] >= mask_threshold, colours[i], alpha)
                drawn = layer[..., 3] > 0
                overlay[drawn] = layer[drawn]
            ax.imshow(overlay, interpolation="nearest")
        # Every imshow resets the limits to its extent.
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)

    if yxyx is not None:
        halo = [
            patheffects.Stroke(linewidth=3.0, foreground="black", alpha=0.6),
            patheffects.Normal(),
        ]
        for i in range(count):
            y1, x1, y2, x2 = yxyx[i]
            if show_boxes:
                rectangle = Rectangle(
                    (x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colours[i], linewidth=1.5
                )
                rectangle.set_path_effects(halo)
                ax.add_patch(rectangle)
            text = names[i] if names is not None else ""
            if scores is not None:
                text = f"{text} {float(scores[i]):.2f}".strip()
            if text:
                ax.text(
                    x1,
                    y1,
                    text,
                    fontsize=8,
                    color=_text_colour(colours[i]),
                    verticalalignment="bottom" if y1 > 12 else "top",
                    bbox={
                        "facecolor": colours[i],
                        "alpha": 0.85,
                        "pad": 1.5,
                        "edgecolor": "none",
                    },
                    clip_on=True,
                )
    return ax


def _count(boxes, masks, names) -> int:
    for values in (boxes, masks, names):
        if values is not None:
            return len(values)
    return 0


def draw_batch_element(
    batch: dict,
    index: int,
    config,
    class_names: Sequence[str],
    *,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Draws one element of a pipeline batch (`maskspine.data.build_dataset`) with its
    ground truth: the image de-normalised, boxes, box-relative masks, class names.

    Args:
        batch: the batch dict (tensors or numpy).
        index: which element.
        config: the config the batch was made with (normalisation).
        class_names: names of labels 1..K (index 0 is label 1).
    """
    from maskspine.data.pipeline import denormalize_images

    image = denormalize_images(np.asarray(batch["images"][index]), config)
    classes = np.asarray(batch["gt_classes"][index])
    valid = classes > 0
    boxes = np.asarray(batch["gt_boxes"][index])[valid]
    masks = np.asarray(batch["gt_masks"][index])[valid]
    labels = classes[valid]
    crowd = np.asarray(batch["gt_is_crowd"][index])[valid]
    names = [
        (class_names[label - 1] if 0 < label <= len(class_names) else str(label))
        + (" (crowd)" if is_crowd else "")
        for label, is_crowd in zip(labels, crowd, strict=True)
    ]
    return draw_instances(
        image,
        boxes,
        masks,
        names,
        labels=[int(label) for label in labels],
        masks_in_boxes=True,
        ax=ax,
        title=title,
    )


# --------------------------------------------------------------------------- predictions


def draw_inference_entry(
    image: np.ndarray,
    entry: Mapping[str, Any],
    *,
    score_threshold: float = 0.0,
    title: str | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Draws one image's predictions (an entry of the inference JSON, `maskspine.formats`)
    with `draw_instances`: translucent masks in a colour per class, boxes, class names and
    scores.

    Args:
        image: uint8 [height, width, 3] RGB, the size the entry gives.
        entry: `{"height", "width", "predictions"}`.
        score_threshold: predictions scoring below this are not drawn.
        title: axes title.
        ax: draw into these axes; a new figure sized to the image otherwise.

    Raises:
        InferenceError: the image's size is not the entry's.
    """
    image = np.asarray(image)
    expected = (int(entry["height"]), int(entry["width"]))
    if tuple(image.shape[:2]) != expected:
        raise InferenceError(
            f"the image is {image.shape[0]}x{image.shape[1]} but its predictions were made "
            f"for {expected[0]}x{expected[1]} (height x width)"
        )
    found = entry_instances(entry, score_threshold)
    return draw_instances(
        image,
        found["boxes"],
        found["masks"],
        found["names"],
        found["scores"],
        labels=found["labels"],
        title=title,
        ax=ax,
    )


def drawing_scale(height: int, width: int) -> int:
    """The integer factor a drawing of a `height` x `width` image is saved at (1 for images
    at least `MIN_DRAWING_SIZE` pixels on their longer side)."""
    return max(1, math.ceil(MIN_DRAWING_SIZE / max(height, width, 1)))


def save_drawing(ax: Axes, path: str | os.PathLike, image_size: tuple[int, int]) -> Path:
    """Saves a `draw_instances` figure (without title) as a PNG of exactly the image's size
    times `drawing_scale`."""
    height, width = image_size
    figure = ax.figure
    scale = drawing_scale(height, width)
    figure_width = figure.get_size_inches()[0]
    # The figure's width in inches times dpi is the PNG's width in pixels.
    figure.savefig(path, dpi=width * scale / figure_width, format="png")
    return Path(path)


def drawing_pixels(ax: Axes, image_size: tuple[int, int], scale: int = 1) -> np.ndarray:
    """A `draw_instances` figure (without title) rendered as pixels, the picture
    `save_drawing` saves: uint8 [height * scale, width * scale, 3] RGB."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    height, width = (int(v) * scale for v in image_size)
    figure = ax.figure
    canvas = FigureCanvasAgg(figure)
    figure.set_dpi(width / figure.get_size_inches()[0])
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    # The canvas' size in pixels is the figure's inches times dpi, rounded: pad or cut the
    # odd pixel row or column so that a video gets exactly its frame size.
    pixels = np.zeros((height, width, 3), np.uint8)
    rows, columns = min(height, rgba.shape[0]), min(width, rgba.shape[1])
    pixels[:rows, :columns] = rgba[:rows, :columns, :3]
    return pixels


def render_inference_entry(
    image: np.ndarray, entry: Mapping[str, Any], *, score_threshold: float = 0.0
) -> np.ndarray:
    """One image's (or video frame's) predictions drawn over it as `maskspine draw` draws
    them (`draw_inference_entry`), at the image's own size.

    Args:
        image: uint8 [height, width, 3] RGB, the size the entry gives.
        entry: `{"height", "width", "predictions"}` of the inference JSON.
        score_threshold: predictions scoring below this are not drawn.

    Returns:
        uint8 [height, width, 3] RGB.
    """
    ax = draw_inference_entry(image, entry, score_threshold=score_threshold)
    return drawing_pixels(ax, np.asarray(image).shape[:2])


def _image_for(key: str, images_dir: Path | None) -> Path:
    if images_dir is not None:
        candidate = images_dir / Path(key).name
        if candidate.is_file():
            return candidate
    return Path(key)


def _unused_name(stem: str, used: set[str]) -> str:
    """`<stem>.png`, or `<stem>_2.png`, `<stem>_3.png`, ... when taken; marked as taken."""
    name, number = f"{stem}.png", 1
    while name in used:
        number += 1
        name = f"{stem}_{number}.png"
    used.add(name)
    return name


def _draw_video_frames(
    video: str,
    frames: Mapping[int, Mapping[str, Any]],
    output: Path,
    folder: Path | None,
    score_threshold: float,
    used: set[str],
    staged: StagedOutputs,
) -> tuple[list[Path], list[tuple[str, str]]]:
    """The frames of one video named in an inference JSON (`{frame index: entry}`), drawn as
    `<video stem>_<index>.png`; reads the video once, up to the last frame wanted."""
    path = _image_for(video, folder)
    written: list[Path] = []
    last = max(frames)
    try:
        with VideoFile(path) as source:
            for frame in source:
                entry = frames.get(frame.index)
                if entry is not None:
                    ax = draw_inference_entry(frame.pixels, entry, score_threshold=score_threshold)
                    name = _unused_name(f"{Path(video).stem}_{frame.index:06d}", used)
                    save_drawing(ax, staged.stage(output / name), frame.pixels.shape[:2])
                    written.append(output / name)
                if frame.index >= last:
                    break
    except FileNotFoundError:
        where = f" (nor in {folder})" if folder is not None else " (use --images DIR)"
        return written, [(video, f"video not found: {path}{where}")]
    except (DataError, InferenceError) as error:
        return written, [(video, str(error))]
    missing = len(frames) - len(written)
    if missing:
        return written, [(video, f"{missing} of its {len(frames)} frame(s) are not in the video")]
    return written, []


def draw_predictions(
    entries: Mapping[str, Mapping[str, Any]],
    output_dir: str | os.PathLike,
    *,
    score_threshold: float = 0.5,
    images_dir: str | os.PathLike | None = None,
) -> tuple[list[Path], list[tuple[str, str]]]:
    """One PNG per image (or video frame) of an inference JSON, its predictions drawn over it.

    Keys of video frames (`"clip.mp4#000123"`, `maskspine.formats.frame_key`) are drawn from
    the video (read once, with PyAV: the `video` extra) as `clip_000123.png`. The PNGs are
    written under temporary names and renamed into `output_dir` when all are drawn: an
    error or an interruption leaves the folder as it was.

    Args:
        entries: `maskspine.formats.load_inference_json(...)`.
        output_dir: folder for `<image name>.png` (created; a name taken by an earlier image
            of the same name from another folder gets `_2`, `_3`, ...). It may not hold any
            of the images (or videos) drawn.
        score_threshold: predictions scoring below this are not drawn.
        images_dir: look for each image (video) here by file name first, then at its path in
            the JSON (for JSON written on another machine or before the images moved).

    Returns:
        (the PNGs written, [(image or video path, reason)] of the images that could not be
        drawn: missing, unreadable, or not the size the predictions were made for).

    Raises:
        DataError: `output_dir` holds images of the JSON, or cannot be written.
    """
    output = Path(output_dir).expanduser()
    folder = Path(images_dir).expanduser() if images_dir is not None else None
    sources = {}
    for key in entries:
        frame = parse_frame_key(key)
        path = _image_for(key, folder)
        if frame is not None and not path.is_file():
            path = _image_for(frame[0], folder)
        if path.is_file():
            sources[key] = path
    check_outputs({}, sources.values(), folders={"--output": output})
    written: list[Path] = []
    failures: list[tuple[str, str]] = []
    used: set[str] = set()
    videos: dict[str, dict[int, Mapping[str, Any]]] = {}
    with StagedOutputs() as staged:
        for key, entry in entries.items():
            path = _image_for(key, folder)
            frame = parse_frame_key(key)
            if frame is not None and not path.is_file():
                videos.setdefault(frame[0], {})[frame[1]] = entry
                continue
            try:
                image = read_image(path)
                ax = draw_inference_entry(image, entry, score_threshold=score_threshold)
            except FileNotFoundError:
                where = f" (nor in {folder})" if folder is not None else " (use --images DIR)"
                failures.append((key, f"image not found: {path}{where}"))
                continue
            except (DataError, InferenceError) as error:
                failures.append((key, str(error)))
                continue
            name = _unused_name(Path(key).stem or "image", used)
            save_drawing(ax, staged.stage(output / name), image.shape[:2])
            written.append(output / name)
        for video, frames in videos.items():
            drawn, failed = _draw_video_frames(
                video, frames, output, folder, score_threshold, used, staged
            )
            written.extend(drawn)
            failures.extend(failed)
    return written, failures


# --------------------------------------------------------------------------- a window


def display_available() -> bool:
    """Whether a window can be shown: a desktop session on macOS / Windows, an X11 or
    Wayland display on Linux."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _interactive_backend() -> bool:
    import matplotlib
    from matplotlib.backends import BackendFilter, backend_registry

    interactive = backend_registry.list_builtin(BackendFilter.INTERACTIVE)
    return matplotlib.get_backend().lower() in interactive


class FrameWindow:
    """A matplotlib window showing drawn frames as they come; closing it stops the run.

    Raises (on the first frame):
        InferenceError: matplotlib has no interactive backend here (no display).
    """

    def __init__(self, title: str = "maskspine"):
        self.title = title
        self._figure: Any = None
        self._image: Any = None

    @staticmethod
    def check_available() -> None:
        """Raises `InferenceError` when no window can be shown (no display, or matplotlib has
        no interactive backend)."""
        import matplotlib

        if not display_available() or not _interactive_backend():
            raise InferenceError(
                "cannot show frames: no display, or matplotlib has no interactive backend here "
                f"({matplotlib.get_backend()}); use --draw or --video-output, or --no-show"
            )

    def show(self, pixels: np.ndarray) -> bool:
        """Shows uint8 [h, w, 3]; False once the user has closed the window."""
        import matplotlib.pyplot as plt

        if self._figure is None:
            self.check_available()
            height, width = pixels.shape[:2]
            self._figure = plt.figure(self.title, figsize=(width / 100, height / 100), dpi=100)
            axes = self._figure.add_axes((0, 0, 1, 1))
            axes.set_axis_off()
            self._image = axes.imshow(pixels)
            plt.show(block=False)
        elif not plt.fignum_exists(self._figure.number):
            return False
        else:
            self._image.set_data(pixels)
        plt.pause(0.001)
        return True

    def close(self) -> None:
        if self._figure is not None:
            import matplotlib.pyplot as plt

            plt.close(self._figure)
            self._figure = None
