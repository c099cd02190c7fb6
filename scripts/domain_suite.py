"""Build the development suite of the domain gate: one folder of images per kind of input from elsewhere.

    python scripts/domain_suite.py --out /tmp/suite [--aria ../shared/data/aria-all/Original]
    allxai evaluate --model M --data TEST --ood /tmp/suite/*

Each sub-folder of ``--out`` is one development set, built from what is here; what is absent is skipped
with the reason:

- ``natural/``: photographs and drawings bundled with scikit-image (astronaut, a cat, coffee, a camera man,
  coins, a rocket, ...), PNG;
- ``blank/``: white and black images; ``flat/``: flat greys and colours (the smear's pink among them);
  ``noise/``: uniform and Gaussian noise, in colour and grey;
- ``bccd-fields/``: BCCD's smear fields (another laboratory, microscope, magnification and stain; MIT);
- ``bccd-wbc/``: BCCD's white cells, cropped from its Pascal VOC boxes (``WBC``) with a margin;
- ``wbc-seg-1/``, ``wbc-seg-2/``: single normal white cells of two more laboratories (Zheng et al. 2018,
  GPL-3.0; dataset 2 from the CellaVision blog);
- ``cnmc/``: the C-NMC sample (segmented single cells on black);
- with ``--aria DIR`` (Aria images the model did not train on, e.g. its test blocks), synthetic shifts:
  ``aria-stain-hed/`` (more haematoxylin, less eosin), ``aria-colour-hsv/`` (hue turned, saturation
  lowered), ``aria-zoom-x2/`` (the central half, enlarged: cells twice as large), ``aria-zoom-x0.5/`` (four
  fields shrunk by half into one: cells half as large), ``aria-cell-crops/`` (the most prominent stained cell,
  cropped and enlarged to the field's size, as single-cell images from other laboratories show it).

Every folder gets a ``SOURCE.txt`` saying what it holds. The script reads the shared data (``--shared``,
default ``../shared/data``) and writes only under ``--out``, never into the repository.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})

#: scikit-image's bundled pictures (no download), by the name of their function in ``skimage.data``.
NATURAL = (
    "astronaut", "chelsea", "coffee", "camera", "coins", "rocket", "brick", "grass", "gravel", "horse",
    "clock", "moon", "page", "text", "logo", "retina", "hubble_deep_field", "immunohistochemistry",
    "colorwheel", "checkerboard", "cell", "microaneurysms",
)  # fmt: skip

Pixels = npt.NDArray[np.uint8]


class Skipped(Exception):
    """A set that cannot be built from what is here, with the reason."""


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _spread(items: Sequence[Path], limit: int | None) -> list[Path]:
    """At most ``limit`` of ``items``, evenly spread over them (all when ``limit`` is None)."""
    if limit is None or len(items) <= limit:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def _uint8(image: npt.NDArray[np.generic]) -> Pixels:
    """A scikit-image picture as uint8: booleans to 0/255, floats in [0, 1] scaled."""
    array = np.asarray(image)
    if array.dtype == np.bool_:
        return (array * 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        return (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    return array.astype(np.uint8)


def _rgb(path: Path) -> Pixels | None:
    """The pixels of an image file, or None where it cannot be read (left out of the set)."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError) as exc:
        print(f"left out {path}: {exc}", file=sys.stderr)
        return None


def _save(image: Pixels, path: Path) -> None:
    Image.fromarray(image).save(path)


# Generated sets: each yields (file name, pixels).
def natural(seed: int) -> Iterator[tuple[str, Pixels]]:
    try:
        from skimage import data  # noqa: PLC0415
    except ImportError as exc:
        raise Skipped("scikit-image is not installed") from exc
    for name in NATURAL:
        try:
            yield f"{name}.png", _uint8(getattr(data, name)())
        except Exception:  # noqa: BLE001  (a picture this version lacks or would download: left out)
            continue


def blank(seed: int) -> Iterator[tuple[str, Pixels]]:
    for value, word in ((255, "white"), (0, "black")):
        for h, w in ((224, 224), (480, 640), (64, 64)):
            yield f"{word}-{w}x{h}.png", np.full((h, w, 3), value, np.uint8)


def flat(seed: int) -> Iterator[tuple[str, Pixels]]:
    for value in (32, 64, 96, 128, 160, 192, 224):
        yield f"grey-{value}.png", np.full((224, 224, 3), value, np.uint8)
    colours = {
        "red": (200, 30, 30), "green": (40, 170, 60), "blue": (40, 60, 200), "yellow": (230, 210, 60),
        "cyan": (60, 200, 210), "magenta": (200, 50, 190), "smear-pink": (232, 205, 210),
        "stain-purple": (110, 60, 150), "pale-blue": (200, 210, 235),
    }  # fmt: skip
    for name, rgb in colours.items():
        yield f"{name}.png", np.full((224, 224, 3), rgb, np.uint8)


def noise(seed: int) -> Iterator[tuple[str, Pixels]]:
    rng = np.random.default_rng(seed)
    for i in range(4):
        yield f"uniform-rgb-{i}.png", rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
        grey = rng.integers(0, 256, (224, 224, 1), dtype=np.uint8)
        yield f"uniform-grey-{i}.png", np.repeat(grey, 3, axis=2)
        sd = (20, 40, 60, 80)[i]
        gaussian = rng.normal(128, sd, (224, 224, 3))
        yield f"gaussian-rgb-sd{sd}.png", np.clip(gaussian, 0, 255).astype(np.uint8)
        # Gaussian noise about the smear's pink: the colour right, nothing else.
        pink = rng.normal((232, 205, 210), sd / 2, (224, 224, 3))
        yield f"gaussian-pink-sd{sd // 2}.png", np.clip(pink, 0, 255).astype(np.uint8)


# Sets built from the shared data: each copies or crops into ``folder`` and returns how many it wrote.
def copy_images(source: Path, limit: int | None, *, pattern: str = "") -> Callable[[Path], int]:
    def build(folder: Path) -> int:
        if not source.is_dir():
            raise Skipped(f"{source} is absent")
        files = [p for p in _images(source) if not pattern or p.match(pattern)]
        if not files:
            raise Skipped(f"{source} holds no images")
        for path in _spread(files, limit):
            relative = path.relative_to(source)
            target = folder / ("_".join(relative.parts) if len(relative.parts) > 1 else relative.name)
            shutil.copyfile(path, target)
        return len(_spread(files, limit))

    return build


def _wbc_boxes(annotation: Path) -> list[tuple[int, int, int, int]]:
    """The ``WBC`` boxes (xmin, ymin, xmax, ymax) of one Pascal VOC file."""
    boxes = []
    for obj in ET.parse(annotation).getroot().iter("object"):
        box = obj.find("bndbox")
        if (obj.findtext("name") or "").strip() != "WBC" or box is None:
            continue
        try:
            boxes.append(tuple(int(float(box.findtext(k) or "")) for k in ("xmin", "ymin", "xmax", "ymax")))
        except ValueError:
            continue
    return boxes  # type: ignore[return-value]


def bccd_wbc(bccd: Path, limit: int | None, margin: float = 0.1) -> Callable[[Path], int]:
    def build(folder: Path) -> int:
        annotations, images = bccd / "Annotations", bccd / "JPEGImages"
        if not annotations.is_dir() or not images.is_dir():
            raise Skipped(f"{bccd} has no Annotations/ and JPEGImages/")
        written = 0
        for annotation in _spread(sorted(annotations.glob("*.xml")), limit):
            field = images / f"{annotation.stem}.jpg"
            if not field.is_file():
                continue
            pixels = _rgb(field)
            if pixels is None:
                continue
            h, w = pixels.shape[:2]
            for k, (x0, y0, x1, y1) in enumerate(_wbc_boxes(annotation)):
                pad_x, pad_y = math.ceil(margin * (x1 - x0)), math.ceil(margin * (y1 - y0))
                x0, x1 = max(0, x0 - pad_x), min(w, x1 + pad_x)
                y0, y1 = max(0, y0 - pad_y), min(h, y1 + pad_y)
                if x1 - x0 < 8 or y1 - y0 < 8:  # a box outside the field, or upside down
                    continue
                _save(pixels[y0:y1, x0:x1], folder / f"{annotation.stem}_wbc{k}.png")
                written += 1
        if not written:
            raise Skipped(f"{annotations} gives no usable WBC box")
        return written

    return build


# Synthetic shifts of Aria images: each maps the selected fields to (file name, pixels).
def _hed(image: Pixels) -> Pixels:
    from skimage.color import hed2rgb, rgb2hed  # noqa: PLC0415

    hed = rgb2hed(image)
    hed[..., 0] *= 1.6  # more haematoxylin
    hed[..., 1] *= 0.4  # less eosin
    return _uint8(hed2rgb(hed))


def _hsv(image: Pixels) -> Pixels:
    hsv = np.asarray(Image.fromarray(image).convert("HSV"), np.float64)
    hsv[..., 0] = (hsv[..., 0] + 0.12 * 256) % 256  # hue turned by about 43 degrees
    hsv[..., 1] *= 0.6
    turned = Image.fromarray(np.clip(hsv, 0, 255).astype(np.uint8), "HSV").convert("RGB")
    return np.asarray(turned, np.uint8)


def _resize(image: Pixels, height: int, width: int) -> Pixels:
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC), np.uint8)


def _zoom_in(image: Pixels) -> Pixels:
    h, w = image.shape[:2]
    return _resize(image[h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2], h, w)


def _zoom_out(fields: Sequence[Pixels]) -> Pixels:
    h, w = fields[0].shape[:2]
    half = [_resize(f, h // 2, w // 2) for f in fields]
    mosaic = np.vstack([np.hstack(half[:2]), np.hstack(half[2:])])
    return _resize(mosaic, h, w) if mosaic.shape[:2] != (h, w) else mosaic


def cell_crop(image: Pixels, enlarge: float = 1.8, min_radius: float = 5.0) -> Pixels | None:
    """The most prominent stained cell, cropped (a square of ``enlarge`` times its diameter) and enlarged
    to the field's size; None when the field shows no stained cell. The cell's centre is the deepest point
    of the stained pixels (distance transform), so touching cells do not merge into one."""
    from scipy import ndimage  # noqa: PLC0415

    x = image.astype(np.float64) / 255
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    brightest, darkest = x.max(axis=-1), x.min(axis=-1)
    saturation = (brightest - darkest) / (brightest + 1e-3)
    stained = ndimage.binary_opening((saturation > 0.2) & ((r + b) / 2 - g > 0.08))
    depth = ndimage.distance_transform_edt(stained)
    radius = float(depth.max())
    if radius < min_radius:
        return None
    cy, cx = np.unravel_index(int(np.argmax(depth)), depth.shape)
    h, w = image.shape[:2]
    side = int(min(h, w, max(24, 2 * radius * enlarge)))
    y0 = int(np.clip(cy - side / 2, 0, h - side))
    x0 = int(np.clip(cx - side / 2, 0, w - side))
    return _resize(image[y0 : y0 + side, x0 : x0 + side], h, w)


def aria_shifts(files: Sequence[Path]) -> dict[str, tuple[str, Callable[[Path], int]]]:
    """The synthetic shifts of ``files``, by folder name, with what each holds."""

    def each(shift: Callable[[Pixels], Pixels | None]) -> Callable[[Path], int]:
        def build(folder: Path) -> int:
            written = 0
            for path in files:
                pixels = _rgb(path)
                shifted = None if pixels is None else shift(pixels)
                if shifted is not None:
                    _save(shifted, folder / f"{path.stem}.png")
                    written += 1
            if not written:
                raise Skipped(
                    "no Aria image could be read"
                    + (" or showed a stained cell" if shift is cell_crop else "")
                )
            return written

        return build

    def mosaics(folder: Path) -> int:
        read = [(p, f) for p in files if (f := _rgb(p)) is not None]
        if not read:
            raise Skipped("no Aria image could be read")
        h, w = read[0][1].shape[:2]
        fields = [f if f.shape[:2] == (h, w) else _resize(f, h, w) for _, f in read]
        for i, (path, _) in enumerate(read):
            _save(_zoom_out([fields[(i + k) % len(fields)] for k in range(4)]), folder / f"{path.stem}.png")
        return len(read)

    return {
        "aria-stain-hed": (
            "Aria fields, stain shifted in HED space (haematoxylin x1.6, eosin x0.4)",
            each(_hed),
        ),
        "aria-colour-hsv": ("Aria fields, hue turned by about 43 degrees and saturation x0.6", each(_hsv)),
        "aria-zoom-x2": (
            "Aria fields' central half enlarged to the field's size: cells twice as large",
            each(_zoom_in),
        ),
        "aria-zoom-x0.5": (
            "four Aria fields (this one and the next three) shrunk by half into one: cells half as large",
            mosaics,
        ),
        "aria-cell-crops": (
            "the most prominent stained cell of each Aria field, cropped and enlarged to the field's size",
            each(cell_crop),
        ),
    }


def plan(
    shared: Path, aria: Path | None, limit: int | None, aria_limit: int | None, seed: int
) -> dict[str, tuple[str, Callable[[Path], int]]]:
    """Every set: its folder name, what it holds, and how to build it."""

    def generated(make: Callable[[int], Iterator[tuple[str, Pixels]]]) -> Callable[[Path], int]:
        def build(folder: Path) -> int:
            written = 0
            for name, pixels in make(seed):
                _save(pixels, folder / name)
                written += 1
            if not written:
                raise Skipped("nothing could be drawn")
            return written

        return build

    bccd, wbc_seg = shared / "bccd" / "BCCD", shared / "wbc-seg"
    sets: dict[str, tuple[str, Callable[[Path], int]]] = {
        "natural": ("photographs and drawings bundled with scikit-image (skimage.data)", generated(natural)),
        "blank": ("white and black images of several sizes", generated(blank)),
        "flat": (
            "flat greys and colours, the smear's pink and the stain's purple among them",
            generated(flat),
        ),
        "noise": ("uniform and Gaussian noise, in colour, grey and about the smear's pink", generated(noise)),
        "bccd-fields": (
            "BCCD smear fields (another laboratory; MIT licence, ../shared/data/bccd)",
            copy_images(bccd / "JPEGImages", limit),
        ),
        "bccd-wbc": (
            "BCCD white cells cropped from the VOC boxes (WBC) with a 10% margin (MIT licence)",
            bccd_wbc(bccd, limit),
        ),
        "wbc-seg-1": (
            "Zheng et al. 2018 dataset 1: normal white cells, Jiangxi Tecom, 120x120 (GPL-3.0)",
            copy_images(wbc_seg / "dataset1", limit, pattern="*.bmp"),
        ),
        "wbc-seg-2": (
            "Zheng et al. 2018 dataset 2: normal white cells, 300x300, from the CellaVision blog (GPL-3.0)",
            copy_images(wbc_seg / "dataset2", limit, pattern="*.bmp"),
        ),
        "cnmc": (
            "the C-NMC 2019 sample: segmented single cells on black, blasts (all) and normal (hem)",
            copy_images(shared / "cnmc-sample", limit),
        ),
    }
    if aria is not None:
        if not aria.is_dir():
            raise ValueError(f"--aria {aria}: not a folder")
        files = _spread(_images(aria), aria_limit)
        if not files:
            raise ValueError(f"--aria {aria}: holds no images")
        sets.update(aria_shifts(files))
    return sets


def build_suite(
    out: Path,
    shared: Path = SHARED,
    aria: Path | None = None,
    limit: int | None = None,
    aria_limit: int | None = 100,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, int | str]:
    """Build every set under ``out``; the number of images of each, or why it was skipped."""
    if out.resolve().is_relative_to(ROOT):
        raise ValueError(f"--out {out} is inside the repository; write the suite elsewhere (e.g. /tmp/suite)")
    results: dict[str, int | str] = {}
    for name, (description, build) in plan(shared, aria, limit, aria_limit, seed).items():
        folder = out / name
        try:
            if folder.exists() and any(folder.iterdir()):
                if not overwrite:
                    raise Skipped(f"{folder} exists and is not empty (--overwrite replaces it)")
                shutil.rmtree(folder)
            folder.mkdir(parents=True, exist_ok=True)
            try:
                results[name] = build(folder)
            except Skipped:
                shutil.rmtree(folder)
                raise
            (folder / "SOURCE.txt").write_text(description + "\n")
        except Skipped as exc:
            results[name] = f"skipped: {exc}"
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="where the sets go, one sub-folder each")
    parser.add_argument("--shared", type=Path, default=SHARED, help=f"the shared data (default {SHARED})")
    parser.add_argument("--aria", type=Path, help="Aria images to shift (ones the model did not train on)")
    parser.add_argument("--limit", type=int, help="at most this many images per set of real data (spread)")
    parser.add_argument("--aria-limit", type=int, default=100, help="Aria images to shift (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise images")
    parser.add_argument("--overwrite", action="store_true", help="replace sets that exist already")
    args = parser.parse_args(argv)
    for flag in ("limit", "aria_limit"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    try:
        results = build_suite(
            args.out, args.shared, args.aria, args.limit, args.aria_limit, args.seed, args.overwrite
        )
    except (OSError, ValueError) as exc:
        parser.exit(2, f"domain_suite: {exc}\n")
    width = max(map(len, results))
    for name, result in results.items():
        print(f"{name:<{width}}  {result if isinstance(result, str) else f'{result} images'}")
    built = [str(args.out / name) for name, result in results.items() if isinstance(result, int)]
    print(
        f"{len(built)} sets under {args.out}; then: allxai evaluate --model M --data TEST --ood {args.out}/*"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
