"""The images a command names: files, folders (searched recursively) and glob patterns."""

from __future__ import annotations

import glob
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

#: What a folder or a pattern contributes; a file named outright is taken whatever its suffix. The load
#: tester and the LIS watcher take the same suffixes from here.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class InputImage:
    """One image to send, and the name its outputs take (unique among the inputs, without a suffix).

    The name keeps the folders below a folder input (``sub/cell7``), so that outputs of images with the
    same file name in different folders do not overwrite each other.
    """

    path: Path
    name: str

    @property
    def image_id(self) -> str:
        """The id the image is sent with: its output name and its suffix (``sub/cell7.png``)."""
        return f"{self.name}{self.path.suffix}"


@dataclass
class Inputs:
    """The images found, and what could not be found, in words, by the argument that named it."""

    images: list[InputImage]
    problems: list[tuple[str, str]]


def is_image_name(name: str) -> bool:
    """Whether a file name has one of the image suffixes (case-insensitive)."""
    return Path(name.lower()).suffix in IMAGE_SUFFIXES


def _is_image(path: Path) -> bool:
    return path.is_file() and is_image_name(path.name)


def folder_images(folder: Path) -> list[Path]:
    """The image files under ``folder``, searched recursively, in path order (the same on every run)."""
    return sorted(p for p in folder.rglob("*") if _is_image(p))


def _folder(folder: Path) -> list[tuple[Path, str]]:
    return [(p, p.relative_to(folder).with_suffix("").as_posix()) for p in folder_images(folder)]


def _expand_one(spec: str) -> tuple[list[tuple[Path, str]], str]:
    """The images one argument names, each with its output name, or why there are none."""
    path = Path(spec)
    if path.is_dir():
        images = _folder(path)
        return images, "" if images else f"no images ({', '.join(IMAGE_SUFFIXES)}) in this folder"
    if path.exists() or not glob.has_magic(spec):
        # A missing file is left for the reader to report, with the operating system's own words.
        return [(path, path.stem)], ""
    images = []
    for match in sorted(glob.glob(spec, recursive=True)):
        found = Path(match)
        if found.is_dir():
            images += _folder(found)
        elif _is_image(found):
            images.append((found, found.stem))
    return images, "" if images else "no image matches this pattern"


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}-{n}"
    taken.add(candidate)
    return candidate


def expand(specs: Iterable[str]) -> Inputs:
    """Every image the arguments name, in order and once each; a missing file stays, for its reader."""
    inputs = Inputs([], [])
    seen: set[Path] = set()
    taken: set[str] = set()
    for spec in specs:
        images, problem = _expand_one(spec)
        if problem:
            inputs.problems.append((spec, problem))
        for path, name in images:
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                inputs.images.append(InputImage(path, _unique(name, taken)))
    return inputs


def output_path(folder: Path, image: InputImage, suffix: str) -> Path:
    """Where an output of ``image`` goes: ``folder/<name><suffix>``, with the name's folders made."""
    path = folder.joinpath(*PurePosixPath(f"{image.name}{suffix}").parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
