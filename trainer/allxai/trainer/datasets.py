"""Datasets laid out as one sub-folder per class, loaded through the shared preprocessing.

Nothing is dropped silently: every file that cannot be used is listed in the report with
the reason, and empty class folders or a missing root are errors that say what is wrong.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from allxai.trainer.preprocessing import ImageError, prepare_image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})


class DatasetError(ValueError):
    """A dataset that cannot be used as given."""


@dataclass
class LoadedDataset:
    """Images at one input size, their labels, and what was skipped and why."""

    images: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.int64]
    class_names: list[str]
    paths: list[Path]
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Images per class, in class order."""
        return {name: int((self.labels == i).sum()) for i, name in enumerate(self.class_names)}


def list_folder_dataset(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted sub-folder names) and (path, label) pairs of every image file."""
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist or is not a folder")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(class_dirs) < 2:
        raise DatasetError(f"{root} needs at least two class sub-folders; found {len(class_dirs)}")
    items: list[tuple[Path, int]] = []
    for label, folder in enumerate(class_dirs):
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DatasetError(f"class folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        items.extend((p, label) for p in files)
    return [p.name for p in class_dirs], items


def load_images(
    items: list[tuple[Path, int]], class_names: list[str], input_size: tuple[int, int]
) -> LoadedDataset:
    """Read and prepare every image; unreadable ones go to ``skipped`` with the reason."""
    images: list[npt.NDArray[np.uint8]] = []
    labels: list[int] = []
    paths: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for path, label in items:
        try:
            images.append(prepare_image(path.read_bytes(), input_size))
        except (ImageError, OSError) as exc:
            skipped.append((path, str(exc)))
            log.warning("skipped %s: %s", path, exc)
            continue
        labels.append(label)
        paths.append(path)
    if not images:
        raise DatasetError("no usable images: every file was skipped")
    stack = np.stack(images).astype(np.uint8)
    return LoadedDataset(stack, np.asarray(labels, np.int64), class_names, paths, skipped)
