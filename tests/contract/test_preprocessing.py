"""The shared preprocessing: formats, modes, limits and clear errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from allxai.contract.preprocessing import ImageError, ImageLimits, decode_image, prepare_image, resize_image
from tests.conftest import png_bytes
from tests.support.images import huge_png

RGB = (np.arange(30 * 40 * 3) % 251).astype(np.uint8).reshape(30, 40, 3)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_lossless_formats_round_trip(fmt: str) -> None:
    assert np.array_equal(decode_image(png_bytes(RGB, fmt)), RGB)


def test_jpeg_decodes_to_rgb() -> None:
    out = decode_image(png_bytes(RGB, "JPEG", quality=95))
    assert out.shape == (30, 40, 3) and out.dtype == np.uint8


def test_grayscale_is_replicated() -> None:
    gray = RGB[..., 0]
    out = decode_image(png_bytes(gray))
    assert np.array_equal(out, np.repeat(gray[..., None], 3, axis=2))


def test_rgba_is_composited_on_black() -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half transparent
    out = decode_image(png_bytes(rgba))
    assert out[0, 0].tolist() == [200, 0, 0]
    assert out[3, 3].tolist() == [0, 0, 0]


def test_sixteen_bit_is_scaled() -> None:
    values = np.array([[0, 257, 65535]], np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    assert decode_image(buffer.getvalue())[0, :, 0].tolist() == [0, 1, 255]


def test_cmyk_jpeg_is_converted() -> None:
    buffer = io.BytesIO()
    Image.fromarray(RGB).convert("CMYK").save(buffer, format="JPEG")
    assert decode_image(buffer.getvalue()).shape == (30, 40, 3)


def test_float_tiff_is_refused() -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.ones((3, 3), np.float32)).save(buffer, format="TIFF")
    with pytest.raises(ImageError, match="floating-point"):
        decode_image(buffer.getvalue())


def test_empty_bytes() -> None:
    with pytest.raises(ImageError, match="empty"):
        decode_image(b"")


def test_not_an_image() -> None:
    with pytest.raises(ImageError, match="not a readable image"):
        decode_image(b"hello, this is not an image")


def test_truncated_png() -> None:
    data = png_bytes(RGB)
    with pytest.raises(ImageError, match="corrupt or truncated"):
        decode_image(data[: len(data) // 2])


def test_gif_is_refused_by_name() -> None:
    buffer = io.BytesIO()
    Image.fromarray(RGB).save(buffer, format="GIF")
    with pytest.raises(ImageError, match="GIF images are not supported"):
        decode_image(buffer.getvalue())


def test_byte_limit() -> None:
    with pytest.raises(ImageError, match="limit is 10 bytes"):
        decode_image(png_bytes(RGB), ImageLimits(max_bytes=10))


def test_ten_thousand_square_png_is_refused_before_decoding() -> None:
    data = huge_png(10_000, 10_000)
    assert len(data) < 1_000_000
    with pytest.raises(ImageError, match="10000x10000 = 100000000 pixels"):
        decode_image(data)


def test_resize_and_prepare() -> None:
    assert resize_image(RGB, (30, 40)) is RGB
    assert prepare_image(png_bytes(RGB), (16, 16)).shape == (16, 16, 3)


def test_real_images_decode(shared_data) -> None:  # type: ignore[no-untyped-def]
    bmp = next((shared_data / "cnmc-sample" / "all").glob("*.bmp"))
    jpg = next((shared_data / "aria-all" / "Original" / "Pro").glob("*.jpg"))
    assert decode_image(bmp.read_bytes()).shape == (450, 450, 3)
    assert decode_image(jpg.read_bytes()).shape == (224, 224, 3)
