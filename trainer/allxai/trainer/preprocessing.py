"""Image preprocessing shared by training and serving: one module, so no train/serve skew.

Both the trainer and the gateway turn encoded bytes into the model's input with
:func:`prepare_image`: decode, check limits, convert to 8-bit RGB, resize to the model's
input size with bilinear filtering. Scaling and normalisation of pixel values happen inside
the exported graph (the model contract), so this module only ever produces ``uint8``.
It depends on Pillow and NumPy only, never on TensorFlow.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

#: The encodings a client may send.
SUPPORTED_FORMATS = frozenset({"PNG", "JPEG", "BMP", "TIFF"})

#: In words, for the model card and GetModelInfo.
DESCRIPTION = (
    "decode PNG/JPEG/BMP/TIFF; convert to 8-bit RGB (grayscale replicated, alpha composited on black, "
    "16-bit scaled by 1/257, CMYK converted); resize to the input size with bilinear filtering (Pillow); "
    "uint8 into the graph, which scales pixels itself"
)

UInt8Image = npt.NDArray[np.uint8]


class ImageError(ValueError):
    """An image that cannot be used, with a message that says why in words a user understands."""


@dataclass(frozen=True)
class ImageLimits:
    """Bounds that protect the service from huge inputs and decompression bombs."""

    max_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 40_000_000


def decode_image(data: bytes, limits: ImageLimits | None = None) -> UInt8Image:
    """Decode ``data`` into an ``[H, W, 3]`` uint8 RGB array, or raise :class:`ImageError`."""
    limits = limits or ImageLimits()
    if not data:
        raise ImageError("the image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageError(f"the image is {len(data)} bytes; the limit is {limits.max_bytes} bytes")
    try:
        # Pillow's own bomb check warns (or raises) in open(); our limit below is stricter
        # and gives a clearer message, so silence Pillow's warning here.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise ImageError("the bytes are not a readable image; send PNG, JPEG, BMP or TIFF") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"the image header is corrupt or truncated: {exc}") from exc
    with image:
        if image.format not in SUPPORTED_FORMATS:
            raise ImageError(f"{image.format} images are not supported; send PNG, JPEG, BMP or TIFF")
        width, height = image.size
        if width < 1 or height < 1:
            raise ImageError(f"the image has no pixels ({width}x{height})")
        if width * height > limits.max_pixels:
            raise ImageError(
                f"the image is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}"
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image.load()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise ImageError(f"the {image.format} image is corrupt or truncated: {exc}") from exc
        return _to_rgb(image)


def _to_rgb(image: Image.Image) -> UInt8Image:
    """Convert any usable Pillow mode to 8-bit RGB, refusing modes that have no sensible RGB."""
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image, dtype=np.uint8)
    if mode in ("RGBA", "LA", "PA", "RGBa") or (mode == "P" and "transparency" in image.info):
        # Segmented cells sit on black (as in C-NMC): composite transparent areas on black.
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return np.asarray(Image.alpha_composite(black, rgba).convert("RGB"), dtype=np.uint8)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image)
        if values.min(initial=0) < 0 or values.max(initial=0) > 65535:
            raise ImageError(f"32-bit integer images with values outside 0..65535 are not supported ({mode})")
        gray = (values.astype(np.uint32) // 257).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        raise ImageError("floating-point images are not supported; send 8- or 16-bit images")
    if mode in ("1", "L", "P", "CMYK", "YCbCr", "LAB", "HSV"):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    raise ImageError(f"images in Pillow mode {mode!r} are not supported")


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
