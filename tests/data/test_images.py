"""Image files: the one reader whose pixels the graph decoder matches."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from maskspine.data.images import (
    DataError,
    decode_image_bytes,
    read_image,
    read_image_bytes,
)
from maskspine.data.pipeline import decode_image


def _photo(height: int = 120, width: int = 160) -> np.ndarray:
    """Smooth gradients with noise: JPEG's DCT has real work to do."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    picture = np.stack([np.sin(x / 9.0) * 90 + 120, np.cos(y / 5.0) * 80 + 120, (x * y) % 255], -1)
    return np.clip(picture + rng.normal(0, 20, picture.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("subsampling", [0, 2])
def test_jpeg_pixels_of_the_graph_decoder_equal_pils(tmp_path, subsampling):
    # PIL is the independent reference (OpenCV and serving clients decode the same way).
    Image.fromarray(_photo()).save(tmp_path / "p.jpg", quality=85, subsampling=subsampling)
    reference = np.asarray(Image.open(tmp_path / "p.jpg").convert("RGB"))
    np.testing.assert_array_equal(read_image(tmp_path / "p.jpg"), reference)
    encoded, height, width = read_image_bytes(tmp_path / "p.jpg")
    assert encoded == (tmp_path / "p.jpg").read_bytes() and (height, width) == (120, 160)
    np.testing.assert_array_equal(decode_image(tf.constant(encoded)).numpy(), reference)


def test_odd_modes_are_stored_so_that_the_graph_decoder_gives_the_readers_pixels(tmp_path):
    picture = _photo(40, 50)
    cases = {
        "cmyk.jpg": Image.fromarray(picture).convert("CMYK"),
        "gray16.png": Image.fromarray(picture[..., 0].astype(np.uint16) * 257),
        "rgba.png": Image.fromarray(picture).convert("RGBA"),
        "palette.png": Image.fromarray(picture).convert("P"),
    }
    for name, image in cases.items():
        image.save(tmp_path / name)
        pixels = read_image(tmp_path / name)
        assert pixels.shape == (40, 50, 3) and pixels.dtype == np.uint8
        encoded, _, _ = read_image_bytes(tmp_path / name)
        np.testing.assert_array_equal(decode_image(tf.constant(encoded)).numpy(), pixels)
    # 16-bit grayscale keeps the high byte: 257 * v >> 8 == v
    np.testing.assert_array_equal(read_image(tmp_path / "gray16.png")[..., 1], picture[..., 0])


def test_unreadable_images_name_the_file_with_the_reason_as_a_field(tmp_path):
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(DataError) as raised:
        read_image(tmp_path / "text.png")
    assert raised.value.path == str(tmp_path / "text.png")
    assert "cannot read the image" in raised.value.reason and "BytesIO" not in str(raised.value)
    buffer = io.BytesIO()
    Image.fromarray(_photo()).save(buffer, format="PNG")
    with pytest.raises(DataError, match="cut.png"):
        decode_image_bytes(buffer.getvalue()[:300], "cut.png")
    with pytest.raises(FileNotFoundError, match="absent.png"):
        read_image(tmp_path / "absent.png")


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("RGB", "JPEG"),
        ("L", "JPEG"),
        ("CMYK", "JPEG"),
        ("RGB", "PNG"),
        ("L", "PNG"),
        ("RGBA", "PNG"),
        ("LA", "PNG"),
        ("P", "PNG"),
        ("I;16", "PNG"),
        ("RGB", "BMP"),
    ],
)
def test_every_image_mode_reads_as_rgb(tmp_path, mode, fmt):
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))
    if mode == "P":
        image = rgb.convert("P", palette=Image.ADAPTIVE, colors=8)
    elif mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, (12, 16), dtype=np.uint16))
    else:
        image = rgb.convert(mode)
    path = tmp_path / f"image.{fmt.lower()}"
    image.save(path, format=fmt)
    encoded, height, width = read_image_bytes(path)
    assert (height, width) == (12, 16)
    decoded = decode_image(tf.constant(encoded)).numpy()
    # Reference: PIL's own conversion to RGB of the file as stored.
    expected = np.asarray(Image.open(io.BytesIO(path.read_bytes())).convert("RGB"))
    if mode == "I;16":  # 16-bit grayscale: the high byte of each value
        expected = np.repeat((np.asarray(image, np.int64) >> 8)[..., None], 3, axis=-1)
    assert decoded.shape == (12, 16, 3)
    np.testing.assert_array_equal(decoded, expected)  # JPEG too: the accurate integer DCT
    np.testing.assert_array_equal(read_image(path), expected)  # the host reader agrees
