"""Image files: finding them, and the one reader (PIL) that turns them into RGB pixels.

    pixels = read_image("photos/a.jpg")       # uint8 [height, width, 3] RGB

Every file is decoded here, on the host, exactly once: `infer` and `draw` read the pixels
with `read_image`; preparing a data set stores `read_image_bytes` (the file's own bytes
when TensorFlow decodes them to the same pixels, else a PNG of them), which the tf.data
pipeline and the serving signatures decode with `maskspine.data.pipeline.decode_image`.
The two agree pixel for pixel: JPEGs are decoded by libjpeg's accurate integer DCT in both
(TensorFlow's default, a faster DCT, differs from PIL and OpenCV by up to 4 levels).

Images in any mode are read as RGB: grayscale replicated, RGBA without its alpha, palette
expanded, CMYK converted, 16-bit kept at its high byte. Pixel rows are taken as stored: the
EXIF orientation is not applied, as COCO's annotations expect. Nothing here imports
TensorFlow.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from maskspine.errors import DataError

#: File name endings (case-insensitive) of the images of a data set's folder that its
#: labels.json should list (`maskspine.data.coco`). Inputs of `infer` are sorted by their
#: content instead (`maskspine.inputs`).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

#: PIL modes whose JPEG / PNG files `decode_image` (TensorFlow) reads to the same RGB pixels
#: as `read_image`; other files are stored as PNG by `read_image_bytes`.
_TF_READABLE = {"JPEG": {"RGB", "L"}, "PNG": {"RGB", "RGBA", "L", "LA", "P"}}
_SIXTEEN_BIT = ("I", "I;16", "I;16B", "I;16L")


def _open(data: bytes, name: str | os.PathLike) -> Image.Image:
    """The decoded image of `data` (decoded in full, so a damaged file fails here)."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except UnidentifiedImageError:
        raise DataError("cannot read the image (not a format PIL reads)", path=name) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise DataError(f"cannot read the image ({error})", path=name) from None
    return image


def _rgb(image: Image.Image) -> Image.Image:
    """`image` in RGB; 16-bit grayscale keeps its high byte (as TensorFlow does for 16-bit
    RGB PNGs)."""
    if image.mode in _SIXTEEN_BIT:
        values = np.asarray(image).astype(np.int64)
        image = Image.fromarray((values >> 8 if values.max() > 255 else values).astype(np.uint8))
    return image.convert("RGB")


def decode_image_bytes(data: bytes, name: str | os.PathLike = "<bytes>") -> np.ndarray:
    """Encoded image bytes (JPEG, PNG, or anything PIL reads) -> uint8 [h, w, 3] RGB.

    Raises:
        DataError: not an image, or damaged; naming `name`.
    """
    with _open(data, name) as image:
        return np.asarray(_rgb(image))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as uint8 [height, width, 3] RGB (see the module docstring).

    Raises:
        FileNotFoundError: the file does not exist.
        DataError: not an image, damaged, or unreadable (a folder, no permission); naming it.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    except OSError as error:
        raise DataError(f"cannot read the file ({error.strerror or error})", path=path) from None
    return decode_image_bytes(data, path)


def read_image_bytes(path: str | os.PathLike) -> tuple[bytes, int, int]:
    """An image file as bytes for storing in a prepared data set, with its size.

    The file is decoded in full once (so a damaged file is caught here, not in training).
    JPEG and PNG in ordinary modes are kept byte for byte (`decode_image` reads them to the
    pixels `read_image` gives); anything else (CMYK JPEG, 16-bit PNG, BMP, TIFF, ...) is
    stored as a PNG of `read_image`'s pixels.

    Returns:
        (encoded bytes, height, width).

    Raises:
        FileNotFoundError: the file does not exist.
        DataError: not an image, or damaged; naming the file.
    """
    path = Path(path)
    data = path.read_bytes()
    with _open(data, path) as image:
        width, height = image.size
        if image.mode in _TF_READABLE.get(image.format or "", ()):
            return data, height, width
        converted = _rgb(image)
    buffer = io.BytesIO()
    converted.save(buffer, format="PNG")
    return buffer.getvalue(), height, width
