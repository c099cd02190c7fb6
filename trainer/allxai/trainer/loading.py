"""Reading the pixels of indexed samples, and the dataset report.

The images go through the service's own preprocessing (:mod:`allxai.contract.cellview`: the whole
field resized, or the crop around each white cell), so a model sees at training time exactly what the
gateway gives it; what cannot be read is skipped with the reason, never silently.

A cell-centred recipe loads, per field, the crop of its largest white cell into ``images`` (the one the
gateway classifies, so validation, test and calibration score what serving answers) and the crops of
its next cells into ``extra_images`` (owned by the field's row: training adds them, with the field's
label, when the field is in the training split).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from allxai.contract.cellrecipe import CellRecipe
from allxai.contract.cellview import Prepared, cell_views, field_view
from allxai.contract.preprocessing import ImageError, decode_image
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
    #: Cell recipes: the crops of each field's other white cells, and the row of ``images`` owning each.
    extra_images: npt.NDArray[np.uint8] | None = None
    extra_owner: npt.NDArray[np.int64] | None = None
    #: Cell recipes: per field, the scale (µm per pixel) and its source, and its cell's diameter in µm.
    scales: list[tuple[float, str] | None] = field(default_factory=list)
    diameters: list[float | None] = field(default_factory=list)
    #: Cell recipes: fields in which no white cell was found (they train on their centre square).
    no_cell: int = 0
    #: Per field: whether preprocessing puts it outside the domain (no white cell, a scale far off).
    flagged: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, bool))

    def training_rows(
        self, rows: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
        """The images and labels to train on for these rows: their own, then their fields' other cells."""
        x, y = self.images[rows], self.labels[rows]
        if self.extra_images is None or self.extra_owner is None or not len(self.extra_owner):
            return x, y
        chosen = np.isin(self.extra_owner, rows)
        extra = self.extra_images[chosen]
        return np.concatenate([x, extra]), np.concatenate([y, self.labels[self.extra_owner[chosen]]])


#: Below this many files, starting worker processes costs more than it saves.
_PARALLEL_FROM = 64


@dataclass(frozen=True)
class _Field:
    """What training keeps of one prepared file (not the views: they would cross processes for nothing)."""

    inputs: list[npt.NDArray[np.uint8]]
    first: Prepared
    mode: str
    size: str


_Prepared = _Field | str


def _prepare_file(
    path: Path, input_size: tuple[int, int], recipe: CellRecipe | None, cells_per_field: int
) -> _Prepared:
    """One file's model inputs (the largest cell's first), what was found, its mode and size; or why it
    cannot be used."""
    try:
        decoded = decode_image(path.read_bytes())  # first: its errors say in words what is wrong
        with Image.open(path) as probe:
            mode, size = probe.mode, f"{probe.size[0]}x{probe.size[1]}"
        if recipe is None:
            views = [field_view(decoded, input_size, locate=False)]
        else:
            views = cell_views(decoded, input_size, recipe, limit=max(1, cells_per_field))
    except (ImageError, OSError) as exc:
        return str(exc)
    nothing = np.zeros((0, 0), bool)
    first = replace(views[0], view=views[0].input, cell_mask=nothing)
    return _Field([view.input for view in views], first, mode, size)


def _prepared(
    samples: list[Sample], input_size: tuple[int, int], recipe: CellRecipe | None, cells_per_field: int
) -> Iterator[_Prepared]:
    """Every sample prepared, in order; cell recipes on all cores (finding cells is most of the work).

    Worker processes are spawned, not forked: the trainer has TensorFlow loaded by now, whose threads a
    fork would copy in an unknown state; a spawned worker imports only the preprocessing.
    """
    args = (input_size, recipe, cells_per_field)
    workers = min(os.cpu_count() or 1, 8)
    if recipe is None or workers < 2 or len(samples) < _PARALLEL_FROM:
        yield from (_prepare_file(sample.path, *args) for sample in samples)
        return
    paths = [sample.path for sample in samples]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        yield from pool.map(_prepare_file, paths, *([a] * len(paths) for a in args), chunksize=16)


def load_samples(
    samples: list[Sample],
    input_size: tuple[int, int],
    recipe: CellRecipe | None = None,
    cells_per_field: int = 1,
) -> LoadedImages:
    """Decode and prepare through the shared preprocessing; grayscale, RGBA and 16-bit are converted
    (and counted by mode), unreadable files are skipped with the reason. With a ``recipe``, each field
    gives the crops of up to ``cells_per_field`` white cells (largest first)."""
    images: list[npt.NDArray[np.uint8]] = []
    extra: list[npt.NDArray[np.uint8]] = []
    owner: list[int] = []
    kept: list[Sample] = []
    skipped: list[tuple[str, str]] = []
    modes: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    scales: list[tuple[float, str] | None] = []
    diameters: list[float | None] = []
    no_cell = 0
    flagged: list[bool] = []
    every = _prepared(samples, input_size, recipe, cells_per_field)
    for sample, prepared in zip(samples, every, strict=True):
        if isinstance(prepared, str):
            skipped.append((str(sample.path), prepared))
            log.warning("skipped %s: %s", sample.path, prepared)
            continue
        first, mode, size = prepared.first, prepared.mode, prepared.size
        images.append(first.input)
        for crop in prepared.inputs[1:]:
            extra.append(crop)
            owner.append(len(kept))
        scale = first.scale
        scales.append(None if scale is None else (scale.um_per_px, scale.source))
        diameters.append(first.cell_diameter_um)
        no_cell += first.white_cells == 0
        flagged.append(bool(first.notes))
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
        extra_images=np.stack(extra).astype(np.uint8) if extra else None,
        extra_owner=np.asarray(owner, np.int64) if extra else None,
        scales=scales,
        diameters=diameters,
        no_cell=no_cell if recipe is not None else 0,
        flagged=np.asarray(flagged, bool),
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
