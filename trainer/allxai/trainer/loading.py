"""Reading the pixels of indexed samples, and the dataset report.

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

from allxai.contract.preprocessing import ImageError, decode_image, resize_image
from allxai.trainer.datasets import DatasetIndex, Sample

log = logging.getLogger(__name__)


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


def summary(
    index: DatasetIndex, loaded: LoadedImages | None = None, test_loaded: LoadedImages | None = None
) -> dict[str, Any]:
    """The dataset report: counts, duplicates, near-duplicates and the groups they joined, skipped
    files (of the index, of ``loaded`` and of a separate ``test_loaded`` set), notes, sizes and modes."""
    out: dict[str, Any] = {
        "layout": index.layout,
        "classes": index.class_names,
        "counts": index.counts(),
        "test_counts": index.counts(index.test_samples) if index.test_samples else {},
        "groups": len({s.group for s in index.samples}),
        "duplicates_removed": len(index.duplicates),
        "duplicates": [list(d) for d in index.duplicates],
        "skipped": [
            list(s)
            for s in index.skipped
            + (loaded.skipped if loaded else [])
            + (test_loaded.skipped if test_loaded else [])
        ],
        "notes": index.notes,
        "near_duplicates": len(index.near_duplicates),
        "near_duplicate_pairs": [list(p) for p in index.near_duplicates],
        "groups_joined": index.groups_joined,
    }
    if loaded is not None:
        out["modes"] = dict(loaded.modes)
        out["sizes"] = dict(loaded.sizes.most_common(10))
    return out
