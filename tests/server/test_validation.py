"""Input validation: a corpus of malformed and hostile images, and a bounded fuzz test.

Every input either becomes the model's ``uint8 [H, W, 3]`` input or is refused with an
:class:`ImageError` whose message says what is wrong in a lab engineer's words; through the
gateway that is INVALID_ARGUMENT with a ``google.rpc.BadRequest`` naming the field, and the
gateway goes on serving. The corpus is built here, so no binary files are committed.
"""

from __future__ import annotations

import base64
import gzip
import io
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from allxai.contract.preprocessing import ImageError, ImageLimits, decode_image, prepare_image
from allxai.v1 import diagnosis_pb2 as pb
from allxai.v1 import diagnosis_pb2_grpc as pb_grpc
from tests.conftest import INPUT_SIZE, RunningGateway, png_bytes
from tests.support.images import huge_png
from tests.support.status import bad_request

SIZE = (INPUT_SIZE, INPUT_SIZE)
RGB = (np.arange(30 * 40 * 3) % 251).astype(np.uint8).reshape(30, 40, 3)
SEND = "send PNG, JPEG, BMP or TIFF"


def encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def rgb(mode: str = "RGB") -> Image.Image:
    return Image.fromarray(RGB).convert(mode)


def chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_declaring(width: int, height: int, ihdr_crc: int | None = None) -> bytes:
    """A PNG whose header declares width x height over a few bytes of pixel data: a bomb's shape."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header, ihdr_crc) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def bmp_declaring(width: int, height: int) -> bytes:
    """A 24-bit BMP header declaring width x height, followed by a few pixels."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    pixels = b"\x00" * 64
    return b"BM" + struct.pack("<IHHI", 14 + 40 + len(pixels), 0, 0, 54) + info + pixels


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real JPEG with its frame header (SOF0) patched to declare width x height."""
    data = bytearray(encode(rgb(), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def png_with_bad_crc(kind: bytes) -> bytes:
    data = bytearray(png_bytes(RGB))
    at = data.index(kind)
    length = struct.unpack(">I", data[at - 4 : at])[0]
    data[at + 4 + length] ^= 0xFF  # first byte of the chunk's CRC
    return bytes(data)


def tiff_with_dangling_next_page() -> bytes:
    """A one-page TIFF whose pointer to the next page leads past the end of the file."""
    data = bytearray(encode(rgb(), "TIFF"))
    first = struct.unpack("<I", data[4:8])[0]
    entries = struct.unpack("<H", data[first : first + 2])[0]
    at = first + 2 + 12 * entries
    data[at : at + 4] = struct.pack("<I", len(data) + 10_000)
    return bytes(data)


def with_exif(image: Image.Image, fmt: str, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, fmt, exif=exif)


def jpeg_with_corrupt_exif() -> bytes:
    data = encode(rgb(), "JPEG")
    payload = b"Exif\x00\x00II*\x00\xff\xff\xff\x7f" + b"\x01" * 8  # first IFD far past the end
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:]


def dicom() -> bytes:
    return b"\x00" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00" + b"\x00" * 64


def zip_of_png() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("cell.png", png_bytes(RGB))
    return buffer.getvalue()


def gray16(dtype: str) -> Image.Image:
    return Image.fromarray((RGB[..., 0].astype(np.uint32) * 257).astype(dtype))


@dataclass(frozen=True)
class Refused:
    """The input must be refused with a message containing ``message``."""

    message: str


@dataclass(frozen=True)
class Converted:
    """The input must become the model input; ``check`` looks at the full-size decode."""

    check: Callable[[np.ndarray], bool] = lambda out: True


def broken_header(fmt: str) -> Refused:
    return Refused(f"not a readable image: the {fmt} header is corrupt or truncated")


PNG = png_bytes(RGB)
JPEG = encode(rgb(), "JPEG", quality=95)
BMP = encode(rgb(), "BMP")
TIFF = encode(rgb(), "TIFF")
WEBP = encode(rgb(), "WEBP")
GIF = encode(rgb(), "GIF")

# id → (the bytes, made on demand so collection stays fast; what must happen)
CORPUS: dict[str, tuple[Callable[[], bytes], Refused | Converted]] = {
    # not images at all
    "empty": (lambda: b"", Refused("the image is empty (0 bytes)")),
    "one-byte": (lambda: b"\x89", Refused("not a readable image: unknown format")),
    "random-4k": (
        lambda: np.random.default_rng(7).bytes(4096),
        Refused(f"not a readable image: unknown format; {SEND}"),
    ),
    "text": (lambda: b"patient 42, slide 3\n", Refused("they look like text")),
    "html": (lambda: b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>", Refused("an HTML page")),
    "json": (lambda: b'{"image": "cell.png"}', Refused("JSON text")),
    "base64-png": (lambda: base64.b64encode(PNG), Refused("base64 text; decode it and send the image bytes")),
    "data-url": (lambda: b"data:image/png;base64," + base64.b64encode(PNG), Refused("base64 text")),
    "pdf": (lambda: b"%PDF-1.7\n1 0 obj <<>> endobj\n%%EOF\n", Refused("a PDF document")),
    "zip": (zip_of_png, Refused("a ZIP archive")),
    "gzip-png": (lambda: gzip.compress(PNG), Refused("a gzip archive")),
    "elf": (lambda: b"\x7fELF\x02\x01\x01" + b"\x00" * 57, Refused("a program")),
    "dicom": (dicom, Refused("a DICOM file; export the image from the viewer and send PNG")),
    "svg": (
        lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"><circle r="4"/></svg>',
        Refused(f"an SVG drawing, a vector format with no pixels; export it and {SEND}"),
    ),
    "svg-xml-prolog": (
        lambda: b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>',
        Refused("an SVG drawing"),
    ),
    # formats Pillow knows but the service does not take
    "gif": (lambda: GIF, Refused(f"GIF images are not supported; {SEND}")),
    "animated-gif": (
        lambda: encode(rgb(), "GIF", save_all=True, append_images=[rgb("L")]),
        Refused("GIF images are not supported"),
    ),
    "webp": (lambda: WEBP, Refused("WEBP images are not supported")),
    "ico": (lambda: encode(rgb(), "ICO"), Refused("ICO images are not supported")),
    "eps": (lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 9 9\n", Refused("EPS images are not")),
    # truncated or corrupt supported formats
    "png-signature-only": (
        lambda: PNG[:8],
        broken_header("PNG"),
    ),
    "png-cut-in-ihdr": (
        lambda: PNG[:20],
        broken_header("PNG"),
    ),
    "png-cut-in-idat": (lambda: PNG[: len(PNG) // 2], Refused("the PNG image is corrupt or truncated")),
    "png-bad-ihdr-crc": (
        lambda: png_with_bad_crc(b"IHDR"),
        broken_header("PNG"),
    ),
    "jpeg-soi-only": (
        lambda: JPEG[:3],
        broken_header("JPEG"),
    ),
    "jpeg-cut-in-header": (lambda: JPEG[:300], Refused("corrupt or truncated")),
    "jpeg-cut-in-scan": (
        lambda: JPEG[: len(JPEG) * 2 // 3],
        Refused("the JPEG image is corrupt or truncated"),
    ),
    "bmp-cut-in-header": (
        lambda: BMP[:20],
        broken_header("BMP"),
    ),
    "bmp-cut-in-pixels": (lambda: BMP[: len(BMP) // 2], Refused("the BMP image is corrupt or truncated")),
    "tiff-cut-in-header": (
        lambda: TIFF[:10],
        broken_header("TIFF"),
    ),
    "tiff-cut-in-pixels": (lambda: TIFF[: len(TIFF) // 2], Refused("the TIFF image is corrupt or truncated")),
    "tiff-dangling-page": (tiff_with_dangling_next_page, Refused("the TIFF image is corrupt")),
    "gif-cut": (lambda: GIF[:20], Refused("GIF images are not supported")),
    "webp-cut": (lambda: WEBP[:20], Refused("WEBP images are not supported")),
    # sizes: decompression bombs, limits, degenerate shapes
    "png-declares-1e10-pixels": (
        lambda: png_declaring(100_000, 100_000),
        Refused("the image declares 10000000000 pixels; the limit is 40000000"),
    ),
    "png-declares-7000x7000": (
        lambda: png_declaring(7000, 7000),
        Refused("7000x7000 = 49000000 pixels; the limit is 40000000"),
    ),
    "png-real-10000x10000": (
        lambda: huge_png(10_000, 10_000),
        Refused("10000x10000 = 100000000 pixels; the limit is 40000000"),
    ),
    "bmp-declares-60000x60000": (lambda: bmp_declaring(60_000, 60_000), Refused("the image declares")),
    "jpeg-declares-65000x65000": (lambda: jpeg_declaring(65_000, 65_000), Refused("the image declares")),
    "over-byte-limit": (
        lambda: PNG + b"\x00" * (32 * 1024 * 1024),
        Refused("bytes; the limit is 33554432 bytes"),
    ),
    "png-zero-width": (
        lambda: png_declaring(0, 10),
        broken_header("PNG"),
    ),
    "bmp-zero-height": (lambda: bmp_declaring(10, 0), broken_header("BMP")),
    "png-2000-empty-chunks": (
        lambda: PNG[:33] + chunk(b"zzZz", b"") * 2000 + PNG[33:],
        Refused("the PNG file has more than 1000 metadata blocks before its pixels"),
    ),
    "jpeg-2000-comments": (
        lambda: JPEG[:2] + b"\xff\xfe\x00\x02" * 2000 + JPEG[2:],
        Refused("the JPEG file has more than 1000 metadata blocks before its pixels"),
    ),
    "png-200-text-chunks": (
        lambda: PNG[:33] + chunk(b"tEXt", b"Comment\x00slide 3") * 200 + PNG[33:],
        Converted(lambda out: np.array_equal(out, RGB)),
    ),
    "jpeg-200-comments": (
        lambda: JPEG[:2] + b"\xff\xfe\x00\x05abc" * 200 + JPEG[2:],
        Converted(lambda out: out.shape == (30, 40, 3)),
    ),
    "png-1x1": (lambda: png_bytes(RGB[:1, :1]), Converted(lambda out: out.shape == (1, 1, 3))),
    "png-1x20000": (
        lambda: png_bytes(np.zeros((1, 20_000, 3), np.uint8)),
        Converted(lambda out: out.shape == (1, 20_000, 3)),
    ),
    "png-20000x1": (
        lambda: png_bytes(np.zeros((20_000, 1, 3), np.uint8)),
        Converted(lambda out: out.shape == (20_000, 1, 3)),
    ),
    # more than one picture: which one is the cell is not the service's to guess
    "apng-2-frames": (
        lambda: encode(rgb(), "PNG", save_all=True, append_images=[rgb().rotate(90)]),
        Refused("the PNG file holds more than one image (pages or animation frames); send one still"),
    ),
    "tiff-3-pages": (
        lambda: encode(rgb(), "TIFF", save_all=True, append_images=[rgb(), rgb()]),
        Refused("the TIFF file holds more than one image"),
    ),
    "camera-jpeg-with-mpf": (  # Pillow calls it MPO; the first picture is the primary image
        lambda: encode(rgb(), "MPO", save_all=True, append_images=[rgb("L").convert("RGB")]),
        Converted(lambda out: out.shape == (30, 40, 3) and abs(int(out[5, 5, 0]) - int(RGB[5, 5, 0])) < 12),
    ),
    # pixel formats: converted to 8-bit RGB, or refused where no faithful RGB exists
    "png-16bit-gray": (
        lambda: encode(gray16("uint16"), "PNG"),
        Converted(lambda out: np.array_equal(out, np.repeat(RGB[..., :1], 3, axis=2))),
    ),
    "tiff-16bit-little-endian": (
        lambda: encode(gray16("<u2"), "TIFF"),
        Converted(lambda out: np.array_equal(out[..., 0], RGB[..., 0])),
    ),
    "tiff-16bit-big-endian": (
        lambda: encode(gray16(">u2"), "TIFF"),
        Converted(lambda out: np.array_equal(out[..., 0], RGB[..., 0])),
    ),
    "tiff-32bit-int-in-16bit-range": (
        lambda: encode(gray16("<i4"), "TIFF"),
        Converted(lambda out: np.array_equal(out[..., 0], RGB[..., 0])),
    ),
    "tiff-32bit-int-negative": (
        lambda: encode(Image.fromarray(np.full((3, 3), -5, np.int32)), "TIFF"),
        Refused("32-bit integer images with values outside 0..65535 are not supported"),
    ),
    "tiff-float": (
        lambda: encode(Image.fromarray(np.ones((3, 3), np.float32)), "TIFF"),
        Refused("floating-point images are not supported; send 8- or 16-bit images"),
    ),
    "tiff-lab": (lambda: encode(rgb("LAB"), "TIFF"), Refused("LAB colour images are not supported")),
    "jpeg-cmyk": (
        lambda: encode(rgb("CMYK"), "JPEG", quality=95),
        Converted(lambda out: np.abs(out.astype(int) - RGB).max() < 40),
    ),
    "tiff-cmyk": (lambda: encode(rgb("CMYK"), "TIFF"), Converted(lambda out: np.array_equal(out, RGB))),
    "tiff-ycbcr-jpeg": (lambda: encode(rgb(), "TIFF", compression="jpeg"), Converted()),
    "jpeg-gray": (
        lambda: encode(rgb("L"), "JPEG"),
        Converted(lambda out: np.array_equal(out[..., 0], out[..., 2])),
    ),
    "jpeg-progressive": (lambda: encode(rgb(), "JPEG", progressive=True), Converted()),
    "png-1bit": (lambda: encode(rgb("1"), "PNG"), Converted(lambda out: set(np.unique(out)) <= {0, 255})),
    "tiff-1bit-group4": (
        lambda: encode(rgb("1"), "TIFF", compression="group4"),
        Converted(lambda out: set(np.unique(out)) <= {0, 255}),
    ),
    "png-la": (lambda: encode(rgb("LA"), "PNG"), Converted()),
    "png-rgba-transparent": (
        lambda: png_bytes(np.dstack([RGB, np.zeros((30, 40), np.uint8)])),
        Converted(lambda out: not out.any()),  # fully transparent: composited on black
    ),
    "png-palette-with-transparency": (
        lambda: encode(rgb("P"), "PNG", transparency=int(rgb("P").getpixel((0, 0)))),  # type: ignore[arg-type]
        Converted(lambda out: out[0, 0].tolist() == [0, 0, 0]),
    ),
    "png-gray-with-colour-key": (
        lambda: encode(rgb("L"), "PNG", transparency=int(rgb("L").getpixel((0, 0)))),  # type: ignore[arg-type]
        Converted(lambda out: out[0, 0].tolist() == [0, 0, 0] and out[10, 10].any()),
    ),
    "bmp-palette": (lambda: encode(rgb("P"), "BMP"), Converted()),
    "png-bad-idat-crc": (  # Pillow does not check IDAT CRCs; zlib's own checksum guards the pixels
        lambda: png_with_bad_crc(b"IDAT"),
        Converted(lambda out: np.array_equal(out, RGB)),
    ),
    "png-trailing-garbage": (
        lambda: PNG + b"\x00garbage" * 100,
        Converted(lambda out: np.array_equal(out, RGB)),
    ),
    # orientation: shown as a viewer shows it
    "jpeg-exif-rotated-90": (
        lambda: with_exif(rgb(), "JPEG", 6),
        Converted(lambda out: out.shape == (40, 30, 3)),
    ),
    "jpeg-corrupt-exif": (jpeg_with_corrupt_exif, Converted(lambda out: out.shape == (30, 40, 3))),
}

GATEWAY_CASES = [
    "random-4k",
    "svg",
    "pdf",
    "png-bad-ihdr-crc",
    "jpeg-cut-in-scan",
    "png-declares-1e10-pixels",
    "png-real-10000x10000",
    "over-byte-limit",
    "apng-2-frames",
    "gif",
    "tiff-float",
    "tiff-lab",
    "dicom",
]


def test_the_corpus_is_large_and_mixed() -> None:
    refused = [name for name, (_, outcome) in CORPUS.items() if isinstance(outcome, Refused)]
    assert len(CORPUS) >= 30 and len(refused) >= 30 and len(CORPUS) - len(refused) >= 15
    assert all(isinstance(CORPUS[name][1], Refused) for name in GATEWAY_CASES)


@pytest.mark.parametrize("name", list(CORPUS))
def test_corpus(name: str) -> None:
    make, outcome = CORPUS[name]
    data = make()
    if isinstance(outcome, Refused):
        with pytest.raises(ImageError) as info:
            prepare_image(data, SIZE)
        assert outcome.message in str(info.value)
    else:
        assert outcome.check(decode_image(data)), "decoded, but not to the expected pixels"
        prepared = prepare_image(data, SIZE)
        assert prepared.shape == (*SIZE, 3) and prepared.dtype == np.uint8 and prepared.flags.c_contiguous


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(orientation: int) -> None:
    data = with_exif(rgb(), "PNG", orientation)  # lossless, so the pixels compare exactly
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert np.array_equal(decode_image(data), upright)


def test_limits_are_the_callers() -> None:
    with pytest.raises(ImageError, match="40x30 = 1200 pixels; the limit is 1000"):
        decode_image(PNG, ImageLimits(max_pixels=1000))
    with pytest.raises(ImageError, match=f"the image is {len(PNG)} bytes; the limit is 100 bytes"):
        decode_image(PNG, ImageLimits(max_bytes=100))
    assert decode_image(PNG, ImageLimits(max_bytes=len(PNG), max_pixels=1200)).shape == (30, 40, 3)


# --- the same, through the real gateway -------------------------------------------------------------


@pytest.fixture
def stub(gateway: RunningGateway) -> Iterator[pb_grpc.DiagnosisServiceStub]:
    with grpc.insecure_channel(gateway.target) as channel:
        yield pb_grpc.DiagnosisServiceStub(channel)


@pytest.mark.parametrize("name", GATEWAY_CASES)
def test_gateway_refuses_with_bad_request_and_goes_on(
    stub: pb_grpc.DiagnosisServiceStub, cell_png: bytes, name: str
) -> None:
    make, outcome = CORPUS[name]
    assert isinstance(outcome, Refused)
    with pytest.raises(grpc.RpcError) as info:
        stub.Classify(pb.ClassifyRequest(image=pb.Image(data=make())), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("image.data: ")
    assert outcome.message in info.value.details()
    violations = bad_request(info.value)
    assert list(violations) == ["image.data"] and outcome.message in violations["image.data"]
    assert stub.Classify(pb.ClassifyRequest(image=pb.Image(data=cell_png)), timeout=30).classification.label


def test_gateway_names_the_bad_image_of_a_specimen(
    stub: pb_grpc.DiagnosisServiceStub, cell_png: bytes
) -> None:
    make, outcome = CORPUS["png-declares-1e10-pixels"]
    assert isinstance(outcome, Refused)
    images = [pb.Image(data=cell_png), pb.Image(data=make()), pb.Image(data=cell_png)]
    with pytest.raises(grpc.RpcError) as info:
        stub.ClassifySpecimen(pb.ClassifySpecimenRequest(images=images), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = bad_request(info.value)
    assert list(violations) == ["images[1].data"] and outcome.message in violations["images[1].data"]


@pytest.mark.parametrize(
    "name", ["png-16bit-gray", "jpeg-cmyk", "jpeg-exif-rotated-90", "camera-jpeg-with-mpf"]
)
def test_gateway_classifies_converted_images(stub: pb_grpc.DiagnosisServiceStub, name: str) -> None:
    make, _ = CORPUS[name]
    reply = stub.Classify(pb.ClassifyRequest(image=pb.Image(data=make())), timeout=30)
    assert sum(s.score for s in reply.classification.scores) == pytest.approx(1.0, abs=1e-4)


# --- property-based: any bytes give the model input or an ImageError, nothing else --------------------

SMALL = rgb().resize((12, 9))
SEEDS = [
    encode(SMALL, "PNG"),
    encode(SMALL, "JPEG"),
    encode(SMALL, "JPEG", progressive=True),
    encode(SMALL, "BMP"),
    encode(SMALL.convert("P"), "BMP"),
    encode(SMALL, "TIFF"),
    encode(SMALL, "TIFF", compression="tiff_lzw"),
    encode(SMALL.convert("L"), "PNG", transparency=3),
    encode(Image.fromarray(np.arange(108, dtype=np.uint16).reshape(9, 12) * 600), "PNG"),
    encode(SMALL.convert("CMYK"), "JPEG"),
    with_exif(SMALL, "JPEG", 8),
]
# Keep the fuzzing cheap: a mutated header can declare up to the limit, and decoding 40 million
# pixels is legitimate work, but not work this test needs to repeat.
FUZZ_LIMITS = ImageLimits(max_bytes=1 << 20, max_pixels=1 << 20)
FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def prepared_or_refused(data: bytes) -> None:
    try:
        out = prepare_image(data, (16, 16), FUZZ_LIMITS)
    except ImageError as exc:
        refusal = str(exc)
    else:
        assert out.shape == (16, 16, 3) and out.dtype == np.uint8
        return
    # A refusal says why, in words: never empty, never a Python object's repr.
    assert refusal.strip() and " object at 0x" not in refusal


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid seed image with bit flips, byte overwrites, truncations and splices from another seed."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "byte", "cut", "splice", "insert"]))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            data[at] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF]))
        elif kind == "cut":
            data = data[: max(at, 1)]
        elif kind == "splice":
            other = draw(st.sampled_from(SEEDS))
            data = data[:at] + other[draw(st.integers(0, len(other) - 1)) :]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


@pytest.mark.timeout(60)
@FUZZ
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_are_prepared_or_refused(data: bytes) -> None:
    prepared_or_refused(data)


@pytest.mark.timeout(60)
@FUZZ
@given(
    st.sampled_from(SEEDS[:6]).flatmap(
        lambda seed: st.binary(max_size=256).map(lambda tail: seed[:24] + tail)
    )
)
def test_valid_headers_with_arbitrary_bodies_are_prepared_or_refused(data: bytes) -> None:
    prepared_or_refused(data)


@pytest.mark.timeout(60)
@FUZZ
@given(mutated())
def test_mutated_images_are_prepared_or_refused(data: bytes) -> None:
    prepared_or_refused(data)
