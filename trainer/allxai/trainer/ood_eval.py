"""How an export's domain gate and classifier behave on development sets of images from elsewhere.

``allxai evaluate --ood DIR ...`` runs every image found under each folder (any layout, unlabelled)
through the export's serving signature, with the service's own preprocessing, beside the labelled
in-domain images of ``--data``. Per folder:

- ``flagged``: the share the gate calls out of domain (score above the card's threshold; a NaN score is
  never in domain);
- ``auroc``: how well the score separates the in-domain images from the folder's (0.5 is chance; ties
  count half);
- ``fpr_at_95_tpr``: with the in-domain images as positives, the share of the folder's images at or below
  the score that accepts 95% of the in-domain ones (its ``ceil(0.95 n)``-th smallest);
- ``calls``: the share called each class; ``confident_blast_unflagged``: called a blast class (not one of
  the card's normal classes) with a probability of at least 0.9 and not flagged, the answer that harms;
  ``flagged_or_normal``: flagged or called a normal class, the answers that do not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from allxai.contract.card import ModelCard
from allxai.contract.cellrecipe import CellRecipe
from allxai.contract.cellview import prepare
from allxai.contract.preprocessing import ImageError

Floats = npt.NDArray[np.float64]

#: What counts as an image in a development folder (the encodings the service takes).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
#: A blast call at or above this probability is a confident one.
CONFIDENT = 0.9
#: The in-domain share accepted for the false-positive rate.
TPR = 0.95


def find_images(folder: Path) -> list[Path]:
    """Every image file under ``folder``, recursively, in order; a ValueError when there is none."""
    if not folder.is_dir():
        raise ValueError(f"--ood {folder}: not a folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise ValueError(f"--ood {folder}: holds no images (files ending {suffixes}, in any sub-folder)")
    return files


def name_sets(folders: Sequence[Path]) -> dict[str, tuple[Path, list[Path]]]:
    """Each folder and its images, by set name: the folder's name, or its whole path where two clash."""
    sets: dict[str, tuple[Path, list[Path]]] = {}
    for folder in folders:
        name = folder.name or str(folder)
        if name in sets:
            name = str(folder)
        if name in sets:
            raise ValueError(f"--ood {folder} is given twice")
        sets[name] = (folder, find_images(folder))
    return sets


@dataclass
class FolderImages:
    """A development folder's images at the model's input size; unreadable files with the reason."""

    images: npt.NDArray[np.uint8]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    #: Images preprocessing already puts outside the domain (no white cell, a scale far off).
    flagged: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, bool))


def load_folder(
    name: str, files: Sequence[Path], size: tuple[int, int], recipe: CellRecipe | None = None
) -> FolderImages:
    """Prepare through :func:`~allxai.contract.cellview.prepare`, as the gateway does (the whole image,
    or a cell model's crop of the largest white cell); a ValueError when no file could be used."""
    images: list[npt.NDArray[np.uint8]] = []
    flagged: list[bool] = []
    skipped: list[tuple[str, str]] = []
    for path in files:
        try:
            prepared = prepare(path.read_bytes(), size, recipe)
        except (ImageError, OSError) as exc:
            skipped.append((str(path), str(exc)))
            continue
        images.append(prepared.input)
        flagged.append(bool(prepared.notes))
    if not images:
        reasons = "; ".join(f"{Path(p).name}: {why}" for p, why in skipped[:3])
        raise ValueError(f"--ood {name}: no usable images, all {len(skipped)} were skipped ({reasons})")
    return FolderImages(np.stack(images), skipped, np.asarray(flagged, bool))


def with_flags(scores: Floats, flagged: npt.NDArray[np.bool_]) -> Floats:
    """Domain scores with the images preprocessing flagged set above any threshold (the gateway's rule)."""
    return np.where(flagged, np.inf, scores) if len(flagged) == len(scores) else scores


def auroc(inside: Floats, outside: Floats) -> float:
    """The probability that an image of ``outside`` scores above one of ``inside`` (ties count half):
    the Mann-Whitney U over the product of the counts. NaN scores count as the highest."""
    inside = np.nan_to_num(np.asarray(inside, np.float64), nan=np.inf)
    outside = np.nan_to_num(np.asarray(outside, np.float64), nan=np.inf)
    if not len(inside) or not len(outside):
        return math.nan
    _, inverse, counts = np.unique(np.concatenate([inside, outside]), return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - counts + (counts + 1) / 2)[inverse]  # 1-based average ranks
    u = ranks[len(inside) :].sum() - len(outside) * (len(outside) + 1) / 2
    return float(u / (len(inside) * len(outside)))


def accepting_score(inside: Floats, tpr: float = TPR) -> float:
    """The lowest score that accepts at least ``tpr`` of the in-domain images (NaN accepts none)."""
    ordered = np.sort(np.nan_to_num(np.asarray(inside, np.float64), nan=np.inf))
    return float(ordered[min(math.ceil(tpr * len(ordered)), len(ordered)) - 1])


def calls(
    probabilities: Floats, scores: Floats, threshold: float, class_names: Sequence[str], normal: Sequence[str]
) -> dict[str, Any]:
    """Flagged share, the share called each class, the confident unflagged blast calls, and the share
    flagged or called a normal class."""
    flagged = ~(np.asarray(scores) <= threshold)
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    normal_call = np.isin(predicted, [class_names.index(n) for n in normal])
    return {
        "images": len(predicted),
        "flagged": float(flagged.mean()),
        "calls": {n: float(np.mean(predicted == i)) for i, n in enumerate(class_names)},
        "confident_blast_unflagged": float(np.mean(~normal_call & (confidence >= CONFIDENT) & ~flagged)),
        "flagged_or_normal": float(np.mean(flagged | normal_call)),
    }


def set_figures(
    probabilities: Floats,
    scores: Floats,
    inside: Floats,
    threshold: float,
    class_names: Sequence[str],
    normal: Sequence[str],
) -> dict[str, Any]:
    """A development set's figures against the in-domain scores ``inside``."""
    figures = calls(probabilities, scores, threshold, class_names, normal)
    figures["auroc"] = auroc(inside, scores)
    figures["fpr_at_95_tpr"] = float(np.mean(np.asarray(scores) <= accepting_score(inside)))
    return figures


def _share(value: object) -> str:
    return "-" if not isinstance(value, float) or math.isnan(value) else f"{value:.1%}"


def table(in_domain: dict[str, Any], sets: dict[str, dict[str, Any]], class_names: Sequence[str]) -> str:
    """A markdown table of the in-domain images and every development set."""
    head = ["set", "images", "flagged", "AUROC", "FPR@95TPR", "blast >=0.9 unflagged", "flagged or normal"]
    head += [f"called {n}" for n in class_names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in [("in-domain (--data)", in_domain), *sets.items()]:
        auc = row.get("auroc")
        cells = [name, str(row["images"]), _share(row["flagged"])]
        cells += ["-" if auc is None or math.isnan(auc) else f"{auc:.3f}", _share(row.get("fpr_at_95_tpr"))]
        cells += [_share(row["confident_blast_unflagged"]), _share(row["flagged_or_normal"])]
        cells += [_share(row["calls"][n]) for n in class_names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def card_with_sets(card: ModelCard, sets: dict[str, dict[str, Any]]) -> ModelCard:
    """A copy of ``card`` whose ``domain.figures.development_sets`` holds ``sets`` (the figures of each
    development folder, against the in-domain images it names)."""
    if card.domain is None:
        raise ValueError("the model card has no domain gate to add development figures to")
    figures = {**card.domain.figures, "development_sets": sets}
    return replace(card, domain=replace(card.domain, figures=figures))
