"""COCO-format folders: labels.json, the images beside it, polygons and RLE, categories.

Two layouts are read:

- the reference's split folder: `<split>/data/*.jpg|png` and `<split>/labels.json`
  (`CocoSource.from_split_folder`);
- plain COCO: any images folder and any annotations file (`CocoSource(images, annotations)`).

Category ids may have gaps; they are mapped to contiguous labels 1..K in the order of
`categories` sorted by id (0 is background), and the data set's own ids and names are kept
for output. Masks are decoded with pycocotools exactly as `COCO.annToMask` does for valid
input; what `annToMask` would silently get wrong is dropped here with a warning that names
the annotation (a polygon with fewer than 3 points, which pycocotools reads as a box; a box
with zero width or height; an RLE whose size is not the image's).

This is the only module that knows about files; everything after it sees arrays.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from maskspine.boxes import xywh_to_yxyx
from maskspine.data.images import IMAGE_SUFFIXES, read_image_bytes
from maskspine.errors import DataError
from maskspine.threads import host_cores

logger = logging.getLogger(__name__)

LABELS_FILE = "labels.json"
IMAGES_FOLDER = "data"

#: Problems printed one by one before the rest are only counted.
_MAX_LOGGED_PROBLEMS = 20


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class CocoSource:
    """An images folder and its COCO annotations file.

    Attributes:
        images_dir: folder holding the files named by `images[].file_name`.
        annotations_file: the COCO JSON (`labels.json` in the reference's layout).
    """

    images_dir: Path
    annotations_file: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "images_dir", Path(self.images_dir).expanduser())
        object.__setattr__(self, "annotations_file", Path(self.annotations_file).expanduser())

    @classmethod
    def from_split_folder(cls, folder: str | Path) -> CocoSource:
        """The reference's layout: `folder/data/` and `folder/labels.json`.

        Raises:
            FileNotFoundError: naming the missing folder or file.
        """
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"data folder not found: {folder}")
        source = cls(folder / IMAGES_FOLDER, folder / LABELS_FILE)
        source.check_exists()
        return source

    @property
    def name(self) -> str:
        """A short human name: the split folder, or the annotations file."""
        if self.annotations_file.name == LABELS_FILE:
            return str(self.annotations_file.parent)
        return str(self.annotations_file)

    def check_exists(self) -> None:
        """Raises FileNotFoundError naming the images folder or annotations file if missing."""
        if not self.annotations_file.is_file():
            raise FileNotFoundError(
                f"annotations file not found: {self.annotations_file} (a COCO-format folder "
                f"holds {IMAGES_FOLDER}/ with the images and {LABELS_FILE})"
            )
        if not self.images_dir.is_dir():
            raise FileNotFoundError(
                f"images folder not found: {self.images_dir} (expected beside "
                f"{self.annotations_file.name})"
            )


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Problem:
    """Something wrong in the data, found while reading it.

    Attributes:
        kind: a short key (`missing_image`, `corrupt_image`, `zero_size_box`, ...).
        subject: what it is about (`image 000012.jpg`, `annotation 17`).
        message: what is wrong and what happens to it.
    """

    kind: str
    subject: str
    message: str

    def __str__(self) -> str:
        return f"{self.subject}: {self.message}"


@dataclass
class Instance:
    """One decoded annotation.

    Attributes:
        annotation_id: the annotation's `id` in the file.
        category_id: the data set's category id (not the contiguous label).
        box: float32 [4] yxyx in original image pixels (clipped to the image).
        is_crowd: COCO `iscrowd`.
        mask: uint8 [H, W] with values 0 / 1, at the image's size.
    """

    annotation_id: int
    category_id: int
    box: np.ndarray
    is_crowd: bool
    mask: np.ndarray


@dataclass
class ImageExample:
    """One image ready to store: its encoded bytes and decoded instances.

    Attributes:
        image_id: the data set's image id.
        file_name: as in labels.json.
        encoded: `maskspine.data.images.read_image_bytes` of the file (what
            `maskspine.data.pipeline.decode_image` reads as RGB).
        height, width: pixels.
        instances: the usable annotations, in file order.
    """

    image_id: int
    file_name: str
    encoded: bytes
    height: int
    width: int
    instances: list[Instance] = field(default_factory=list)


# --------------------------------------------------------------------------- labels.json


class CocoLabels:
    """A parsed COCO annotations file.

    Attributes:
        path: the file.
        categories: (category_id, name) sorted by id.
        images: the `images` records, in file order.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"annotations file not found: {self.path}")
        try:
            with open(self.path, encoding="utf-8") as file:
                data = json.load(file)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DataError(f"not valid JSON: {error}", path=self.path) from None
        if not isinstance(data, dict):
            raise DataError("the top level must be a COCO object", path=self.path)
        for key in ("images", "categories"):
            if not isinstance(data.get(key), list):
                raise DataError(
                    f"no '{key}' list (is this a COCO annotations file?)", path=self.path
                )
        annotations = data.get("annotations", [])
        if not isinstance(annotations, list):
            raise DataError("'annotations' must be a list", path=self.path)
        try:
            categories = sorted((int(c["id"]), str(c["name"])) for c in data["categories"])
        except (KeyError, TypeError, ValueError):
            raise DataError(
                "every category needs an integer 'id' and a 'name'", path=self.path
            ) from None
        duplicates = [cid for cid, count in Counter(c for c, _ in categories).items() if count > 1]
        if duplicates:
            raise DataError(f"category ids {duplicates} appear more than once", path=self.path)
        self.categories: list[tuple[int, str]] = categories
        self.images: list[dict[str, Any]] = data["images"]
        for record in self.images:
            if not isinstance(record, dict) or "id" not in record or "file_name" not in record:
                raise DataError("every image needs an 'id' and a 'file_name'", path=self.path)
        self._annotations: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        for annotation in annotations:
            if not isinstance(annotation, dict) or "image_id" not in annotation:
                raise DataError(
                    f"annotation {_annotation_name(annotation)} has no 'image_id'", path=self.path
                )
            self._annotations[annotation["image_id"]].append(annotation)
        self.num_annotations = len(annotations)

    def annotations_for(self, image_id: Any) -> list[dict[str, Any]]:
        """The annotations of one image, in file order."""
        return self._annotations.get(image_id, [])

    def unknown_category_annotations(self) -> list[tuple[Any, Any]]:
        """(annotation id, category_id) of annotations whose category is not in `categories`."""
        known = {category_id for category_id, _ in self.categories}
        unknown = []
        for records in self._annotations.values():
            for annotation in records:
                category = annotation.get("category_id")
                if not isinstance(category, int) or category not in known:
                    unknown.append((annotation.get("id"), category))
        return unknown

    def orphan_annotations(self) -> list[Any]:
        """Ids of annotations whose image_id names no image."""
        image_ids = {record["id"] for record in self.images}
        return [
            annotation.get("id")
            for image_id, annotations in self._annotations.items()
            if image_id not in image_ids
            for annotation in annotations
        ]

    def check_categories(self) -> None:
        """Raises DataError naming the annotations whose category_id is unknown."""
        unknown = self.unknown_category_annotations()
        if unknown:
            shown = ", ".join(f"annotation {a} (category_id {c})" for a, c in unknown[:10])
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            known = ", ".join(str(cid) for cid, _ in self.categories)
            raise DataError(
                f"unknown category_id in {shown}{more}; the file's categories have ids "
                f"{known}. Add the category to 'categories' or fix the annotation.",
                path=self.path,
            )


def load_coco_categories(annotations_file: str | Path) -> list[tuple[int, str]]:
    """(category_id, name) of a COCO annotations file, sorted by id."""
    return CocoLabels(annotations_file).categories


# --------------------------------------------------------------------------- decoding


def decode_segmentation(
    segmentation: Any, height: int, width: int
) -> tuple[np.ndarray | None, str | None]:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) as a mask.

    Polygon parts with fewer than 3 points (or an odd number of coordinates) are left out;
    pycocotools would read a 2-point polygon as a box.

    Args:
        segmentation: the annotation's `segmentation` value.
        height, width: the image size in pixels.
    Returns:
        (mask uint8 [height, width] of 0 / 1, None), or (None, reason) when nothing usable
        is left; a mask with a non-None reason means some polygon parts were left out.
    """
    if isinstance(segmentation, list):
        parts, bad = [], 0
        for part in segmentation:
            if (
                isinstance(part, list)
                and len(part) >= 6
                and len(part) % 2 == 0
                and all(isinstance(v, (int, float)) for v in part)
            ):
                parts.append([float(v) for v in part])
            else:
                bad += 1
        note = f"{bad} polygon part(s) with fewer than 3 points left out" if bad else None
        if not parts:
            return None, "polygon with fewer than 3 points" if bad else "empty segmentation"
        rle = mask_utils.merge(mask_utils.frPyObjects(parts, height, width))
        return mask_utils.decode(rle).astype(np.uint8), note
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        size = [int(v) for v in segmentation["size"]]
        if size != [height, width]:
            return None, f"RLE size {size[0]}x{size[1]} is not the image's {height}x{width}"
        counts = segmentation["counts"]
        if isinstance(counts, list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        elif isinstance(counts, (str, bytes)):
            rle = {"size": size, "counts": counts.encode() if isinstance(counts, str) else counts}
        else:
            return None, "RLE counts must be a list or a string"
        try:
            mask = mask_utils.decode(rle)
        except Exception as error:  # pycocotools raises plain Exceptions on bad counts
            return None, f"RLE does not decode ({error})"
        return mask.astype(np.uint8), None
    return None, "no segmentation (polygons or RLE)"


def decode_annotation(
    annotation: dict[str, Any], height: int, width: int
) -> tuple[Instance | None, list[Problem]]:
    """One annotation as an `Instance`, or None with the problems that dropped it.

    The box is the annotation's `bbox` (xywh) clipped to the image, or the mask's box when
    `bbox` is missing. Dropped: zero width or height, a box outside the image, no usable
    segmentation.
    """
    subject = f"annotation {_annotation_name(annotation)}"
    problems: list[Problem] = []
    mask, reason = decode_segmentation(annotation.get("segmentation"), height, width)
    if mask is None:
        kind = "degenerate_polygon" if reason and "fewer than 3" in reason else "bad_segmentation"
        return None, [Problem(kind, subject, f"{reason}; dropped")]
    if reason:
        problems.append(Problem("degenerate_polygon", subject, reason))
    bbox = annotation.get("bbox")
    if bbox is None:
        bbox = mask_utils.toBbox(mask_utils.encode(np.asfortranarray(mask))).tolist()
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return None, [*problems, Problem("bad_box", subject, f"bbox {bbox!r} is not [x, y, w, h]")]
    if not (w > 0 and h > 0):
        return None, [
            *problems,
            Problem("zero_size_box", subject, f"box has zero width or height ({w}x{h}); dropped"),
        ]
    limits = [height, width, height, width]
    y1, x1, y2, x2 = (float(v) for v in np.clip(xywh_to_yxyx([x, y, w, h]), 0.0, limits))
    if not (y2 > y1 and x2 > x1):
        return None, [
            *problems,
            Problem("box_outside", subject, "box lies outside the image; dropped"),
        ]
    try:
        category_id = int(annotation["category_id"])
    except (KeyError, TypeError, ValueError):
        return None, [*problems, Problem("unknown_category", subject, "no integer category_id")]
    instance = Instance(
        annotation_id=int(annotation.get("id", -1)),
        category_id=category_id,
        box=np.array([y1, x1, y2, x2], np.float32),
        is_crowd=bool(annotation.get("iscrowd", 0)),
        mask=mask,
    )
    return instance, problems


# --------------------------------------------------------------------------- reading a source


@dataclass
class ReadSummary:
    """What reading a source found, besides the examples.

    Attributes:
        problems: every problem, in file order.
        skipped_images: (file name, reason) of the images left out.
        dropped_annotations: how many annotations were left out.
    """

    problems: list[Problem] = field(default_factory=list)
    skipped_images: list[tuple[str, str]] = field(default_factory=list)
    dropped_annotations: int = 0


def iter_examples(
    source: CocoSource,
    summary: ReadSummary | None = None,
    *,
    labels: CocoLabels | None = None,
    decode_images: bool = True,
    strict_categories: bool = True,
    num_threads: int | None = None,
) -> Iterator[ImageExample]:
    """Reads a source image by image, in labels.json order, leaving out what cannot be used.

    Missing, unreadable and mis-sized images are skipped; annotations that cannot be decoded
    are dropped; both are recorded in `summary`.

    Args:
        source: the folder and annotations file.
        summary: filled with what was skipped and why.
        labels: the parsed annotations file, if already read.
        decode_images: read each image file (when False, `encoded` is empty and the sizes
            come from labels.json; for a quick look at the annotations only).
        strict_categories: an unknown category_id is an error (DataError) before anything is
            read; when False such annotations are dropped and recorded as problems.
        num_threads: threads that read and decode in parallel (default: CPU count, at most 8).
    Raises:
        FileNotFoundError: the annotations file or images folder is missing.
        DataError: unreadable labels.json, or an unknown category_id when strict.
    """
    source.check_exists()
    labels = labels or CocoLabels(source.annotations_file)
    if strict_categories:
        labels.check_categories()
    summary = summary if summary is not None else ReadSummary()
    known = {category_id for category_id, _ in labels.categories}
    workers = num_threads or min(8, host_cores())  # a container's CPU quota counts

    def load(record: dict[str, Any]) -> _Loaded:
        return _load_example(source, labels, record, known, decode_images)

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        # A bounded look-ahead keeps memory flat on large sets while threads overlap reads.
        pending: list[concurrent.futures.Future] = []
        for record in labels.images:
            pending.append(pool.submit(load, record))
            if len(pending) >= 4 * workers:
                yield from _collect(pending.pop(0).result(), summary)
        while pending:
            yield from _collect(pending.pop(0).result(), summary)


@dataclass
class _Loaded:
    example: ImageExample | None
    problems: list[Problem]
    dropped: int
    skipped: tuple[str, str] | None = None


def _collect(loaded: _Loaded, summary: ReadSummary) -> Iterator[ImageExample]:
    summary.problems.extend(loaded.problems)
    summary.dropped_annotations += loaded.dropped
    if loaded.skipped is not None:
        summary.skipped_images.append(loaded.skipped)
    if loaded.example is not None:
        yield loaded.example


def _load_example(
    source: CocoSource,
    labels: CocoLabels,
    record: dict[str, Any],
    known_categories: set[int],
    decode_images: bool,
) -> _Loaded:
    file_name = str(record["file_name"])
    path = source.images_dir / file_name
    annotations = labels.annotations_for(record["id"])

    def skip(kind: str, reason: str) -> _Loaded:
        problem = Problem(kind, f"image {file_name}", f"{reason}; skipped")
        return _Loaded(None, [problem], len(annotations), (file_name, reason))

    if not path.is_file():
        return skip("missing_image", f"file not found: {path}")
    height, width = record.get("height"), record.get("width")
    encoded = b""
    if decode_images or height is None or width is None:
        try:
            encoded, file_height, file_width = read_image_bytes(path)
        except DataError as error:
            return skip("corrupt_image", error.reason)
        if (
            height is not None
            and width is not None
            and (int(height), int(width))
            != (
                file_height,
                file_width,
            )
        ):
            return skip(
                "size_mismatch",
                f"labels.json says {height}x{width} but the file is "
                f"{file_height}x{file_width} (height x width)",
            )
        height, width = file_height, file_width
        if not decode_images:
            encoded = b""
    problems: list[Problem] = []
    instances, dropped = [], 0
    for annotation in annotations:
        if annotation.get("category_id") not in known_categories:
            problems.append(
                Problem(
                    "unknown_category",
                    f"annotation {_annotation_name(annotation)}",
                    f"category_id {annotation.get('category_id')!r} is not in 'categories'; dropped",
                )
            )
            dropped += 1
            continue
        instance, found = decode_annotation(annotation, int(height), int(width))
        problems.extend(found)
        if instance is None:
            dropped += 1
        else:
            instances.append(instance)
    example = ImageExample(
        image_id=int(record["id"]),
        file_name=file_name,
        encoded=encoded,
        height=int(height),
        width=int(width),
        instances=instances,
    )
    return _Loaded(example, problems, dropped)


def log_problems(problems: Sequence[Problem], source_name: str) -> None:
    """Logs problems as warnings, one line each up to a limit, then a count."""
    for problem in problems[:_MAX_LOGGED_PROBLEMS]:
        logger.warning("%s: %s", source_name, problem)
    if len(problems) > _MAX_LOGGED_PROBLEMS:
        logger.warning(
            "%s: ... and %d more problems (run `maskspine data inspect` to list them all)",
            source_name,
            len(problems) - _MAX_LOGGED_PROBLEMS,
        )


def _annotation_name(annotation: Any) -> str:
    if isinstance(annotation, dict) and "id" in annotation:
        return str(annotation["id"])
    return "<without id>"


# --------------------------------------------------------------------------- inspect


@dataclass
class InspectReport:
    """What `maskspine data inspect` prints.

    Attributes:
        source: the source's name.
        categories: (category_id, name) sorted by id.
        num_images_listed: images in labels.json.
        num_images_usable: images that can be read.
        instances_per_class: category_id -> non-crowd instances.
        crowd_per_class: category_id -> crowd instances.
        image_heights, image_widths: of the usable images.
        instance_sides: sqrt(box area) per usable instance, pixels.
        instances_per_image: per usable image.
        problems: everything found, in file order.
        fatal: problems that make the data set unusable (unknown category ids, no images).
        unlisted_files: image files in the folder that labels.json does not mention.
    """

    source: str
    categories: list[tuple[int, str]]
    num_images_listed: int = 0
    num_images_usable: int = 0
    instances_per_class: Counter = field(default_factory=Counter)
    crowd_per_class: Counter = field(default_factory=Counter)
    image_heights: list[int] = field(default_factory=list)
    image_widths: list[int] = field(default_factory=list)
    instance_sides: list[float] = field(default_factory=list)
    instances_per_image: list[int] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    fatal: list[str] = field(default_factory=list)
    unlisted_files: int = 0

    @property
    def usable(self) -> bool:
        """True when training / evaluation can run on this data."""
        return not self.fatal and self.num_images_usable > 0

    def format(self) -> str:
        """The report as text."""
        lines = [f"source: {self.source}"]
        lines.append(
            f"images: {self.num_images_usable} usable of {self.num_images_listed} listed"
            + (
                f" ({self.unlisted_files} files in the folder not listed)"
                if self.unlisted_files
                else ""
            )
        )
        if self.image_heights:
            heights, widths = self.image_heights, self.image_widths
            lines.append(
                f"image size (h x w): min {min(heights)}x{min(widths)}, "
                f"median {int(np.median(heights))}x{int(np.median(widths))}, "
                f"max {max(heights)}x{max(widths)}"
            )
        if self.instances_per_image:
            counts = np.asarray(self.instances_per_image)
            lines.append(
                f"instances per image: min {counts.min()}, mean {counts.mean():.1f}, "
                f"max {counts.max()}; images without instances: {int((counts == 0).sum())}"
            )
        if self.instance_sides:
            sides = np.asarray(self.instance_sides)
            small, large = int((sides < 32).sum()), int((sides >= 96).sum())
            lines.append(
                f"instance size (sqrt box area, px): min {sides.min():.1f}, "
                f"median {np.median(sides):.1f}, max {sides.max():.1f}; small (<32) {small}, "
                f"medium {len(sides) - small - large}, large (>=96) {large}"
            )
        total = sum(self.instances_per_class.values())
        crowd = sum(self.crowd_per_class.values())
        lines.append(f"categories: {len(self.categories)}; instances {total}, crowd {crowd}")
        width = max([len(name) for _, name in self.categories] + [4])
        lines.append(f"  {'id':>4}  {'name':<{width}}  {'instances':>9}  {'crowd':>5}")
        for category_id, name in self.categories:
            lines.append(
                f"  {category_id:>4}  {name:<{width}}  "
                f"{self.instances_per_class[category_id]:>9}  {self.crowd_per_class[category_id]:>5}"
            )
        if self.problems:
            kinds = Counter(problem.kind for problem in self.problems)
            lines.append(
                f"problems: {len(self.problems)} ("
                + ", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items()))
                + ")"
            )
            lines.extend(f"  {problem}" for problem in self.problems)
        else:
            lines.append("problems: none")
        for message in self.fatal:
            lines.append(f"error: {message}")
        lines.append("usable: yes" if self.usable else "usable: NO")
        return "\n".join(lines)


def inspect_source(source: CocoSource, *, decode_images: bool = True) -> InspectReport:
    """Reads a whole source and reports its statistics and every problem found.

    Raises:
        FileNotFoundError: the annotations file or images folder is missing.
        DataError: labels.json cannot be parsed.
    """
    source.check_exists()
    labels = CocoLabels(source.annotations_file)
    report = InspectReport(
        source=source.name, categories=labels.categories, num_images_listed=len(labels.images)
    )
    for annotation_id in labels.orphan_annotations():
        report.problems.append(
            Problem(
                "orphan_annotation", f"annotation {annotation_id}", "its image_id names no image"
            )
        )
    listed = {str(record["file_name"]) for record in labels.images}
    report.unlisted_files = sum(
        1
        for path in source.images_dir.iterdir()
        if path.suffix.lower() in IMAGE_SUFFIXES and path.name not in listed
    )
    summary = ReadSummary()
    examples = iter_examples(
        source, summary, labels=labels, decode_images=decode_images, strict_categories=False
    )
    for example in examples:
        report.num_images_usable += 1
        report.image_heights.append(example.height)
        report.image_widths.append(example.width)
        report.instances_per_image.append(len(example.instances))
        for instance in example.instances:
            counter = report.crowd_per_class if instance.is_crowd else report.instances_per_class
            counter[instance.category_id] += 1
            y1, x1, y2, x2 = instance.box
            report.instance_sides.append(float(np.sqrt((y2 - y1) * (x2 - x1))))
    report.problems.extend(summary.problems)
    unknown = sum(problem.kind == "unknown_category" for problem in summary.problems)
    if unknown:
        report.fatal.append(
            f"{unknown} annotation(s) with an unknown category_id (listed above); add the "
            "categories to labels.json or fix the annotations"
        )
    if report.num_images_usable == 0:
        report.fatal.append("no usable images")
    return report
