"""Reading the pixels of indexed samples, near-duplicate detection, and the dataset report.

The images go through the service's own preprocessing (``decode_image`` and ``resize_image``), so a
model sees at training time exactly what the gateway gives it; what cannot be read is skipped with
the reason, never silently.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from allxai.trainer.datasets import DatasetIndex, Sample
from allxai.trainer.preprocessing import ImageError, decode_image, resize_image

log = logging.getLogger(__name__)


def near_duplicates(paths: list[Path], max_distance: int = 2) -> list[tuple[str, str, int]]:
    """Pairs of images whose 64-bit difference hashes differ in at most ``max_distance`` bits.

    Compares each image with the next 5 in file order, where Aria's near-duplicates sit; cheap
    enough for whole datasets. Reported, not removed: the grouped split already keeps them together.
    """
    hashes: list[int | None] = []
    for path in paths:
        try:
            with Image.open(path) as image:
                small = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.BILINEAR), np.int16)
            bits = (small[:, 1:] > small[:, :-1]).ravel()
            hashes.append(int("".join("1" if b else "0" for b in bits), 2))
        except OSError:
            hashes.append(None)
    pairs = []
    for i, a in enumerate(hashes):
        for j in range(i + 1, min(i + 6, len(hashes))):
            b = hashes[j]
            if a is not None and b is not None and (d := (a ^ b).bit_count()) <= max_distance:
                pairs.append((paths[i].name, paths[j].name, d))
    return pairs


@dataclass
class LoadedImages:
    """Pixels of some samples at one input size; what could not be read is in ``skipped``."""

    images: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.int64]
    groups: list[str]
    paths: list[Path]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    modes: Counter[str] = field(default_factory=Counter)
    sizes: Counter[str] = field(default_factory=Counter)


def load_samples(samples: list[Sample], input_size: tuple[int, int]) -> LoadedImages:
    """Decode and resize through the shared preprocessing; grayscale, RGBA and 16-bit are converted
    (and counted by mode), unreadable files are skipped with the reason."""
    images: list[npt.NDArray[np.uint8]] = []
    kept: list[Sample] = []
    skipped: list[tuple[str, str]] = []
    modes: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for sample in samples:
        try:
            data = sample.path.read_bytes()
            decoded = decode_image(data)  # first: its errors say in words what is wrong
            with Image.open(sample.path) as probe:
                mode, size = probe.mode, f"{probe.size[0]}x{probe.size[1]}"
            images.append(resize_image(decoded, input_size))
        except (ImageError, OSError) as exc:
            skipped.append((str(sample.path), str(exc)))
            log.warning("skipped %s: %s", sample.path, exc)
            continue
        modes[mode] += 1
        sizes[size] += 1
        kept.append(sample)
    h, w = input_size
    stack = np.stack(images).astype(np.uint8) if images else np.zeros((0, h, w, 3), np.uint8)
    return LoadedImages(
        stack,
        np.asarray([s.label for s in kept], np.int64),
        [s.group for s in kept],
        [s.path for s in kept],
        skipped,
        modes,
        sizes,
    )


def summary(index: DatasetIndex, loaded: LoadedImages | None = None) -> dict[str, Any]:
    """The dataset report: counts, duplicates, skipped files, notes, sizes and modes."""
    out: dict[str, Any] = {
        "layout": index.layout,
        "classes": index.class_names,
        "counts": index.counts(),
        "test_counts": index.counts(index.test_samples) if index.test_samples else {},
        "groups": len({s.group for s in index.samples}),
        "duplicates_removed": len(index.duplicates),
        "duplicates": [list(d) for d in index.duplicates],
        "skipped": [list(s) for s in index.skipped + (loaded.skipped if loaded else [])],
        "notes": index.notes,
    }
    if loaded is not None:
        out["modes"] = dict(loaded.modes)
        out["sizes"] = dict(loaded.sizes.most_common(10))
    return out
