"""Image preprocessing shared by training and serving: one module, so no train/serve skew.

Both the trainer and the gateway turn encoded bytes into the model's input with
:func:`prepare_image`: decode, check limits, convert to 8-bit RGB, resize to the model's
input size with bilinear filtering. Scaling and normalisation of pixel values happen inside
the exported graph (the model contract), so this module only ever produces ``uint8``.
It depends on Pillow and NumPy only, never on TensorFlow.

Every input it cannot use raises :class:`ImageError` with a message for a lab engineer:
the size and pixel limits (checked on the header, before any pixel is decoded, against
decompression bombs), the format, multi-page or animated files, pixel formats with no
faithful RGB, and corrupt or truncated data. Nothing else escapes from hostile bytes.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import ExifTags, Image, ImageFile, UnidentifiedImageError

#: The encodings a client may send.
SUPPORTED_FORMATS = frozenset({"PNG", "JPEG", "BMP", "TIFF"})

#: In words, for the model card and GetModelInfo.
DESCRIPTION = (
    "decode PNG/JPEG/BMP/TIFF (one still image; EXIF orientation applied); convert to 8-bit RGB "
    "(grayscale replicated, alpha and transparent colours composited on black, 16-bit scaled by 1/257, "
    "CMYK converted; floating-point and L*a*b* refused); resize to the input size with bilinear filtering "
    "(Pillow); uint8 into the graph, which scales pixels itself"
)

UInt8Image = npt.NDArray[np.uint8]

_SEND = "send PNG, JPEG, BMP or TIFF"

# What Pillow's decoders raise on hostile bytes (found by the fuzz test in tests/server/test_validation.py);
# MemoryError is left out on purpose: within the limits it is the server's problem, not the client's.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError, struct.error)

# Real files carry a few dozen PNG chunks or JPEG segments before the pixels. Pillow walks them in
# Python at a few microseconds each, so 32 MiB of empty ones would cost seconds of CPU per request.
_MAX_SEGMENTS = 1000

# EXIF orientation (tag 274) → the numpy operation that shows the pixels as a viewer does.
_ORIENTATIONS: dict[int, Callable[[UInt8Image], UInt8Image]] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


class ImageError(ValueError):
    """An image that cannot be used, with a message that says why in words a user understands."""


@dataclass(frozen=True)
class ImageLimits:
    """Bounds that protect the service from huge inputs and decompression bombs."""

    max_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 40_000_000


def decode_image(data: bytes, limits: ImageLimits | None = None) -> UInt8Image:
    """Decode ``data`` into an ``[H, W, 3]`` uint8 RGB array, upright as a viewer shows it.

    Raises :class:`ImageError` for anything it cannot use, and nothing else for any bytes.
    """
    limits = limits or ImageLimits()
    if not data:
        raise ImageError("the image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageError(f"the image is {len(data)} bytes; the limit is {limits.max_bytes} bytes")
    if _too_many_segments(data):
        raise ImageError(
            f"the {_signature(data)} file has more than {_MAX_SEGMENTS} metadata blocks before its pixels; "
            "re-export the image"
        )
    with warnings.catch_warnings():
        # Pillow warns about metadata it skips (corrupt EXIF, oversized TIFF tags) and about large
        # images; the checks here say in words what matters, and decoding the pixels decides the rest.
        # catch_warnings swaps process-wide state and decodes run in threads at once: should two
        # blocks interleave, what can outlive them is only this filter, which is harmless.
        warnings.filterwarnings("ignore", module=r"PIL\.")
        image, fmt, orientation = _open(data, limits)
        with image:
            try:
                image.load()
                pixels = _to_rgb(image)
            except ImageError:
                raise
            except _DECODE_ERRORS as exc:
                raise ImageError(f"the {fmt} image is corrupt or truncated: {exc}") from exc
    turn = _ORIENTATIONS.get(orientation)
    return np.ascontiguousarray(turn(pixels)) if turn else pixels


def _open(data: bytes, limits: ImageLimits) -> tuple[ImageFile.ImageFile, str, int]:
    """Parse the header only: the format, size, frame count and orientation, before any pixel."""
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        # Pillow's own bound (about 179 million pixels) fires before ours can see the size.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        declared = f"{found[1]} pixels" if found else "too many pixels"
        raise ImageError(
            f"the image declares {declared}; the limit is {limits.max_pixels} (decompression bomb guard)"
        ) from exc
    except (UnidentifiedImageError, *_DECODE_ERRORS) as exc:
        raise ImageError(_unreadable(data, exc)) from exc
    try:
        fmt = _check_header(image, limits)
        return image, fmt, _orientation(image)
    except BaseException:
        image.close()
        raise


def _too_many_segments(data: bytes) -> bool:
    """True when a PNG or JPEG has more chunks or segments before its pixels than any real file.

    Only counts, up to the bound: anything malformed is left for Pillow to report.
    """
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        at = 8
        for _ in range(_MAX_SEGMENTS):
            if at + 8 > len(data) or data[at + 4 : at + 8] == b"IDAT":
                return False
            at += 12 + int.from_bytes(data[at : at + 4], "big")
        return True
    if data.startswith(b"\xff\xd8"):
        at = 2
        for _ in range(_MAX_SEGMENTS):
            at = data.find(b"\xff", at)
            if at < 0 or at + 4 > len(data) or data[at + 1] == 0xDA:  # start of scan: the pixels follow
                return False
            marker = data[at + 1]
            if marker == 0xFF:  # a fill byte
                at += 1
            elif marker in (0x00, 0x01) or 0xD0 <= marker <= 0xD8:  # markers without a length
                at += 2
            else:
                at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
        return True
    return False


def _check_header(image: ImageFile.ImageFile, limits: ImageLimits) -> str:
    # Many cameras write an MPF index into their JPEGs, which Pillow names MPO; its first picture
    # is the primary image, the others previews, so it is a JPEG here.
    fmt = "JPEG" if image.format == "MPO" else str(image.format)
    if fmt not in SUPPORTED_FORMATS:
        raise ImageError(f"{image.format} images are not supported; {_SEND}")
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(f"the image has no pixels ({width}x{height})")
    if width * height > limits.max_pixels:
        raise ImageError(
            f"the image is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}"
        )
    if fmt != "JPEG" and getattr(image, "is_animated", False):
        # A diagnosis must rest on one unambiguous picture: which page or frame is the cell is not
        # ours to guess (a z-stack, channels, an animation). Seeking to the second one, rather than
        # counting them all, keeps a file with a long chain of pages cheap.
        try:
            image.seek(1)
            image.seek(0)
        except EOFError:
            return fmt  # a link to a next page that is not there: one page after all
        except _DECODE_ERRORS as exc:
            raise ImageError(f"the {fmt} image is corrupt: its list of pages cannot be read ({exc})") from exc
        raise ImageError(
            f"the {fmt} file holds more than one image (pages or animation frames); "
            "send one still image per cell"
        )
    return fmt


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except _DECODE_ERRORS:
        return 1  # unreadable EXIF: the pixels are still good; take them as stored
    return value if isinstance(value, int) and value in _ORIENTATIONS else 1


def _unreadable(data: bytes, exc: Exception) -> str:
    """Why Pillow could not even parse the header, named from the first bytes."""
    fmt = _signature(data)
    if fmt in SUPPORTED_FORMATS:
        # The right magic number, but what follows it is broken.
        detail = "" if isinstance(exc, UnidentifiedImageError) else f": {exc}"
        return f"the bytes are not a readable image: the {fmt} header is corrupt or truncated{detail}"
    if fmt:
        return f"{fmt} images are not supported; {_SEND}"
    return f"the bytes are not a readable image: {_describe(data)}"


def _signature(data: bytes) -> str | None:
    """The image format whose magic number ``data`` starts with, if any."""
    for magic, fmt in (
        (b"\x89PNG\r\n\x1a\n", "PNG"),
        (b"\xff\xd8\xff", "JPEG"),
        (b"BM", "BMP"),
        (b"II*\x00", "TIFF"),
        (b"MM\x00*", "TIFF"),
        (b"GIF8", "GIF"),
    ):
        if data.startswith(magic):
            return fmt
    return "WEBP" if data[:4] == b"RIFF" and data[8:12] == b"WEBP" else None


def _describe(data: bytes) -> str:
    """Name what a client sent instead of an image, and what to do, from its first bytes."""
    head = data[:512]
    for offset, magic, what in (
        (0, b"%PDF", "a PDF document"),
        (0, b"PK\x03\x04", "a ZIP archive (or an Office document)"),
        (0, b"\x1f\x8b", "a gzip archive"),
        (0, b"\x7fELF", "a program (ELF executable)"),
        (4, b"ftypheic", "a HEIC photo"),
        (4, b"ftypavif", "an AVIF photo"),
    ):
        if head[offset : offset + len(magic)] == magic:
            return f"they look like {what}; {_SEND}"
    if head[128:132] == b"DICM":
        return f"they look like a DICOM file; export the image from the viewer and {_SEND}"
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n").lower()
    if len(data) > len(head):
        text = text.rstrip("\ufffd")  # a character cut in two by the 512-byte window
    if text.startswith("<svg") or (text.startswith("<?xml") and "<svg" in text):
        return f"they look like an SVG drawing, a vector format with no pixels; export it and {_SEND}"
    if text.startswith(("data:image/", "ivborw0kggo", "/9j/")):
        return "they look like base64 text; decode it and send the image bytes"
    for prefixes, what in (
        (("<!doctype html", "<html"), "an HTML page"),
        (("{", "["), "JSON text"),
    ):
        if text.startswith(prefixes):
            return f"they look like {what}; {_SEND}"
    if "\ufffd" not in text and all(c.isprintable() or c.isspace() for c in text):
        return f"they look like text; {_SEND}"
    return f"unknown format; {_SEND}"


def _to_rgb(image: Image.Image) -> UInt8Image:
    """Convert any usable Pillow mode to 8-bit RGB, refusing modes that have no sensible RGB."""
    mode = image.mode
    transparent = "transparency" in image.info
    if mode == "RGB" and not transparent:
        return np.asarray(image, dtype=np.uint8)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (transparent and mode in ("P", "L", "RGB")):
        # Segmented cells sit on black (as in C-NMC): composite transparent areas on black.
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return np.asarray(Image.alpha_composite(black, rgba).convert("RGB"), dtype=np.uint8)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image)
        if values.min(initial=0) < 0 or values.max(initial=0) > 65535:
            raise ImageError("32-bit integer images with values outside 0..65535 are not supported")
        gray = (values.astype(np.uint32) // 257).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        raise ImageError("floating-point images are not supported; send 8- or 16-bit images")
    if mode in ("LAB", "HSV"):
        # Pillow copies these channels into RGB without converting the colours: refuse, not mislead.
        raise ImageError(f"{mode} colour images are not supported; export the image as RGB")
    if mode in ("1", "L", "P", "CMYK", "YCbCr", "RGBX"):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    raise ImageError(f"the pixel format {mode!r} is not supported; send 8- or 16-bit grayscale, RGB or CMYK")


def resize_image(image: UInt8Image, size: tuple[int, int]) -> UInt8Image:
    """Resize an ``[H, W, 3]`` uint8 image to ``size`` = (height, width), bilinear, as in training."""
    height, width = size
    if image.shape[0] == height and image.shape[1] == width:
        return image
    resized = Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def prepare_image(data: bytes, size: tuple[int, int], limits: ImageLimits | None = None) -> UInt8Image:
    """Encoded bytes to the model's uint8 input ``[height, width, 3]``: the one path for train and serve."""
    return resize_image(decode_image(data, limits), size)
