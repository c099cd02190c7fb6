"""Datasets as they come: C-NMC 2019, the Aria et al. 4-class set, and any folder-per-class layout.

Every sample carries a *group*, the unit a split must keep together: the patient id of a C-NMC
file name, a block of contiguous file numbers for Aria (which has no patient ids, and whose
consecutive numbers come from the same smear), or the file itself. Exact duplicates are
removed by content hash before any split. Aria near-duplicates (difference hash) join their groups
before any split, so a smear that crosses a block boundary cannot straddle train and test
(:mod:`allxai.trainer.neardup`). Nothing is dropped silently: every file that cannot be used is in
the report with the reason. Reading the pixels and the dataset report are in
:mod:`allxai.trainer.loading`.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from allxai.contract import names as contract
from allxai.trainer.neardup import WINDOW, join_near_duplicate_groups

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
ARIA_CLASSES = ("Benign", "Early", "Pre", "Pro")
Layout = Literal["auto", "cnmc", "aria", "folder"]
Task = Literal["native", "binary"]

_CNMC_NAME = re.compile(r"^UID_(?P<patient>H?\d+)_", re.IGNORECASE)
_NUMBER = re.compile(r"(\d+)(?!.*\d)")


class DatasetError(ValueError):
    """A dataset that cannot be used as given, with what to do about it."""


@dataclass(frozen=True)
class Sample:
    """One image file with its label, split group and (for C-NMC) its organisers' fold."""

    path: Path
    label: int
    group: str
    fold: str = ""


@dataclass
class DatasetIndex:
    """The files of a dataset, before any pixel is read, and what happened to the rest."""

    layout: str
    class_names: list[str]
    samples: list[Sample]
    test_samples: list[Sample] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Near-duplicate pairs ``(name, name, hash distance)`` found within a class (Aria only).
    near_duplicates: list[tuple[str, str, int]] = field(default_factory=list)
    #: Groups merged because near-duplicates sat in both: new name -> the groups it replaced.
    groups_joined: dict[str, list[str]] = field(default_factory=dict)

    def counts(self, samples: list[Sample] | None = None) -> dict[str, int]:
        """Images per class, in class order."""
        found = Counter(s.label for s in (self.samples if samples is None else samples))
        return {name: found.get(i, 0) for i, name in enumerate(self.class_names)}


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def detect_layout(root: Path) -> str:
    """``cnmc`` (fold folders or all/hem with UID_ names), ``aria`` (Benign/Early/Pre/Pro) or ``folder``."""
    names = {p.name for p in _class_dirs(root)}
    if names & {"C-NMC_training_data", "fold_0", "fold_1", "fold_2"}:
        return "cnmc"
    if names and names <= set(ARIA_CLASSES):
        return "aria"
    if names == {"all", "hem"} and any(
        _CNMC_NAME.match(p.name) for d in _class_dirs(root) for p in _images_in(d)
    ):
        return "cnmc"
    return "folder"


def index_dataset(
    root: Path,
    layout: Layout = "auto",
    task: Task = "native",
    block_size: int = 20,
    near_duplicate_distance: int = 6,
) -> DatasetIndex:
    """List a dataset's images with labels and groups, deduplicated by content.

    For the Aria layout, images whose 64-bit difference hashes differ in at most
    ``near_duplicate_distance`` bits (each compared with the next few in number order, within its
    class) have their groups merged; a negative distance turns this off. That step decodes a
    thumbnail of each image; nothing else here decodes pixels.
    """
    if not root.exists():
        raise DatasetError(f"dataset folder {root} does not exist")
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder")
    chosen = detect_layout(root) if layout == "auto" else layout
    index = _index_cnmc(root) if chosen == "cnmc" else _index_folders(root, chosen, block_size)
    if task == "binary":
        index = _to_binary(index)
    _dedupe(index)
    if chosen == "aria" and near_duplicate_distance >= 0:
        _join_near_duplicates(index, near_duplicate_distance)
    return index


def _join_near_duplicates(index: DatasetIndex, max_distance: int) -> None:
    joined = join_near_duplicate_groups(index.samples, max_distance)
    index.samples = joined.samples
    index.near_duplicates = joined.pairs
    index.groups_joined = joined.merged
    note = (
        f"near-duplicates (difference hash within {max_distance} bits, each image against the next "
        f"{WINDOW} in number order within its class): {len(joined.pairs)} pairs"
    )
    if joined.merged:
        note += f"; {len(joined.merged)} groups joined across block boundaries: {', '.join(joined.merged)}"
    index.notes.append(note)


def _index_folders(root: Path, layout: str, block_size: int) -> DatasetIndex:
    class_dirs = _class_dirs(root)
    if len(class_dirs) < 2:
        raise DatasetError(f"{root} needs at least two class sub-folders; found {len(class_dirs)}")
    index = DatasetIndex(layout, [d.name for d in class_dirs], [])
    for label, folder in enumerate(class_dirs):
        files = _images_in(folder)
        others = sorted(
            p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() not in IMAGE_SUFFIXES
        )
        index.skipped.extend(
            (str(folder / n), "not an image file name (.png .jpg .bmp .tif)") for n in others
        )
        if not files:
            raise DatasetError(f"class folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        for path in files:
            if layout == "aria":
                # No patient ids: contiguous file numbers stand in for a smear (near-duplicates sit
                # within a few numbers of each other), so a block of numbers is one group.
                number = _NUMBER.search(path.stem)
                group = (
                    f"{folder.name}:{int(number.group(1)) // block_size}"
                    if number
                    else f"{folder.name}:{path.stem}"
                )
            else:
                group = f"{folder.name}/{path.name}"
            index.samples.append(Sample(path, label, group))
    if layout == "aria":
        index.notes.append(
            f"groups: blocks of {block_size} contiguous file numbers per class (no patient ids)"
        )
    return index


def _index_cnmc(root: Path) -> DatasetIndex:
    """C-NMC 2019 as distributed: ``C-NMC_training_data/fold_*/{all,hem}``, the preliminary test set with
    its label CSV, or a plain ``all``/``hem`` folder. The patient id in each file name is its group."""
    base = root / "C-NMC_training_data" if (root / "C-NMC_training_data").is_dir() else root
    folds = sorted(p for p in base.iterdir() if p.is_dir() and p.name.startswith("fold_"))
    class_names = ["all", "hem"]
    index = DatasetIndex("cnmc", class_names, [])
    for fold_dir in folds or [base]:
        for label, name in enumerate(class_names):
            folder = fold_dir / name
            if not folder.is_dir():
                raise DatasetError(f"C-NMC folder {folder} is missing (expected all/ and hem/)")
            for path in _images_in(folder):
                match = _CNMC_NAME.match(path.name)
                if match is None:
                    index.skipped.append((str(path), "file name has no C-NMC patient id (UID_<patient>_...)"))
                    continue
                fold = fold_dir.name if folds else ""
                index.samples.append(Sample(path, label, f"patient:{match['patient']}", fold))
    if not index.samples:
        raise DatasetError(f"no C-NMC images under {root}")
    spans = _groups_across_folds(index.samples)
    if spans:
        index.notes.append(f"{len(spans)} subjects span several organiser folds: {', '.join(spans[:10])}")
    index.test_samples = _cnmc_prelim_test(root, index)
    return index


def _groups_across_folds(samples: list[Sample]) -> list[str]:
    folds: dict[str, set[str]] = {}
    for s in samples:
        folds.setdefault(s.group, set()).add(s.fold)
    return sorted(g for g, f in folds.items() if len(f) > 1)


def _cnmc_prelim_test(root: Path, index: DatasetIndex) -> list[Sample]:
    folder = root / "C-NMC_test_prelim_phase_data"
    if not folder.is_dir():
        return []
    tables = sorted(root.glob("*prelim*label*.csv")) + sorted(folder.glob("*label*.csv"))
    if not tables:
        index.notes.append(f"{folder} has no label CSV; its images are not used")
        return []
    with tables[0].open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    samples = []
    images = {p.name: p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES}
    for row in rows:
        name_key = next((k for k in row if "name" in k.lower()), None)
        label_key = next((k for k in row if "label" in k.lower()), None)
        patient_key = next((k for k in row if "patient" in k.lower()), None)
        if name_key is None or label_key is None or row[name_key] not in images:
            index.skipped.append((str(tables[0]), f"row without a matching image: {row}"))
            continue
        label = 0 if str(row[label_key]).strip() in ("1", "all", "ALL") else 1  # 1 = ALL in C-NMC's CSV
        patient = row[patient_key] if patient_key else row[name_key]
        samples.append(Sample(images[row[name_key]], label, f"patient:{patient}", "prelim_test"))
    return samples


def _to_binary(index: DatasetIndex) -> DatasetIndex:
    """ALL against normal: every normal class becomes ``normal``, every other one ``ALL``."""
    if index.class_names == ["all", "hem"]:
        return index
    normal = {i for i, n in enumerate(index.class_names) if n in contract.NORMAL_CLASS_NAMES}
    if not normal or len(normal) == len(index.class_names):
        raise DatasetError(
            f"the binary task needs a normal class ({', '.join(sorted(contract.NORMAL_CLASS_NAMES))}) "
            f"and another; classes are {', '.join(index.class_names)}"
        )

    def relabel(samples: list[Sample]) -> list[Sample]:
        return [Sample(s.path, 1 if s.label in normal else 0, s.group, s.fold) for s in samples]

    index.notes.append(f"binary task: {', '.join(index.class_names[i] for i in sorted(normal))} -> normal")
    return DatasetIndex(
        index.layout,
        ["ALL", "normal"],
        relabel(index.samples),
        relabel(index.test_samples),
        index.skipped,
        index.duplicates,
        index.notes,
    )


def _dedupe(index: DatasetIndex) -> None:
    """Drop exact duplicates (same SHA-256) everywhere, keeping the first by path; report them.

    Copies filed under different labels are all dropped: which label is right cannot be told,
    and keeping the first would train on a guess.
    """
    digests: dict[str, list[Sample]] = {}
    parts: list[tuple[str, Sample]] = []
    for part, samples in (("train", index.samples), ("test", index.test_samples)):
        for sample in samples:
            try:
                digest = hashlib.sha256(sample.path.read_bytes()).hexdigest()
            except OSError as exc:
                index.skipped.append((str(sample.path), f"unreadable: {exc}"))
                continue
            digests.setdefault(digest, []).append(sample)
            parts.append((part, sample))
    kept: dict[str, list[Sample]] = {"train": [], "test": []}
    keep: set[Path] = set()
    conflicts = 0
    for copies in digests.values():
        first = copies[0]
        labels = {s.label for s in copies}
        if len(labels) > 1:
            conflicts += 1
            named = ", ".join(f"{s.path.name} ({index.class_names[s.label]})" for s in copies)
            index.duplicates.extend(
                (str(s.path), f"same bytes under different labels: {named}; all copies dropped")
                for s in copies
            )
            continue
        keep.add(first.path)
        index.duplicates.extend((str(s.path), f"same bytes as {first.path.name}") for s in copies[1:])
    for part, sample in parts:
        if sample.path in keep:
            kept[part].append(sample)
    index.samples, index.test_samples = kept["train"], kept["test"]
    if conflicts:
        index.notes.append(f"same bytes under different labels for {conflicts} image(s): every copy dropped")


def check_trainable(index: DatasetIndex, min_per_class: int) -> None:
    """Refuse classes too small to split: a stratified k-fold needs ``min_per_class`` images each."""
    small = {n: c for n, c in index.counts().items() if c < min_per_class}
    if small:
        listed = ", ".join(f"{n} has {c}" for n, c in small.items())
        raise DatasetError(f"too few images to split ({listed}); each class needs at least {min_per_class}")
