"""The typed results both clients return, their error, and the options of an explanation."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from allxai.v1 import diagnosis_pb2 as pb

#: An image as the clients take it: encoded bytes, or the path of an image file.
ImageInput = bytes | str | Path

#: ``progress(samples_done, samples_total)`` while an explanation runs.
ProgressFn = Callable[[int, int], None]

PICTURE_KINDS = {
    "overlay": pb.PICTURE_KIND_OVERLAY,
    "mask": pb.PICTURE_KIND_MASK,
    "heatmap": pb.PICTURE_KIND_HEATMAP,
    "figure": pb.PICTURE_KIND_FIGURE,
}

# The gateway names a bad specimen image by its index in the request ("images[3].data: ...").
IMAGE_FIELD = re.compile(r"^images\[(\d+)\]")


def finite(value: float | None) -> float | None:
    """``value``, or None when it is missing or not a finite number (JSON has no NaN or infinity)."""
    return value if value is not None and math.isfinite(value) else None


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinite float, however deeply nested, made None (null in JSON)."""
    if isinstance(value, float):
        return finite(value)
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def safe_dict(record: dict[str, Any]) -> dict[str, Any]:
    """A dictionary made JSON-safe with :func:`json_safe`."""
    return {key: json_safe(item) for key, item in record.items()}


class AllxaiClientError(Exception):
    """A call that failed, with the gRPC status code name and the server's message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def image_index(self) -> int | None:
        """For a specimen the gateway refused over one image: that image's index in the caller's list."""
        match = IMAGE_FIELD.match(self.message)
        return int(match.group(1)) if match else None


@dataclass(frozen=True)
class ClassifyResult:
    """One classified image, and how far the model is entitled to judge it.

    ``in_domain`` says whether the image is like the images the model was trained on (its
    ``domain_score`` is at most the ``domain_threshold`` calibrated at export); it is None when the model
    carries no domain check, and then no check was made: the answer is not known to be in the domain.
    A label outside the domain is not for diagnosis, however confident.

    ``prediction_set`` holds the classes that stay plausible at the level ``coverage`` (1 - alpha, e.g.
    0.95; split-conformal), most probable first. ``coverage`` is None when the model carries no conformal
    calibration, and the set is then empty; with a coverage, an empty set means no class was needed to
    reach the level. A set of more than one class is an ambiguous answer.

    ``estimated_scale`` is the image's micrometres per pixel as the gateway measured it (from its red cells,
    ``scale_source`` "red_cells", or from its white cell, "white_cell"), None when nothing could be
    measured; ``white_cells`` is how many white cells it found; ``domain_reasons`` say in words why the
    image counts as outside the training domain besides its score (no white cell, a scale far off).
    """

    label: str
    confidence: float
    scores: dict[str, float]
    model: str
    version: int
    request_id: str
    image_id: str = ""
    in_domain: bool | None = None
    domain_score: float | None = None
    domain_threshold: float | None = None
    prediction_set: list[str] = field(default_factory=list)
    coverage: float | None = None
    estimated_scale: float | None = None
    scale_source: str = ""
    white_cells: int = 0
    domain_reasons: list[str] = field(default_factory=list)

    @property
    def domain_checked(self) -> bool:
        """Whether a domain check was made (the model carries one)."""
        return self.in_domain is not None

    @property
    def out_of_domain(self) -> bool:
        """Whether the check found the image outside the training domain (False when none was made)."""
        return self.in_domain is False

    @property
    def ambiguous(self) -> bool:
        """Whether the prediction set holds more than one class."""
        return len(self.prediction_set) > 1

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (no NaN: a missing or non-finite number is None)."""
        return safe_dict(
            {
                "image_id": self.image_id,
                "label": self.label,
                "confidence": self.confidence,
                "scores": self.scores,
                "model": self.model,
                "version": self.version,
                "request_id": self.request_id,
                "in_domain": self.in_domain,
                "domain_score": self.domain_score,
                "domain_threshold": self.domain_threshold,
                "prediction_set": list(self.prediction_set),
                "coverage": self.coverage,
                "estimated_scale": self.estimated_scale,
                "scale_source": self.scale_source,
                "white_cells": self.white_cells,
                "domain_reasons": list(self.domain_reasons),
            }
        )


@dataclass(frozen=True)
class SpecimenResult:
    """All cells of a specimen, in the order given, and its summary.

    ``review_first`` holds indices into ``cells``, the cells to look at first: those outside the training
    domain, then the least confident.
    ``counts`` covers every cell, but ``blast_fraction`` only the ``counted`` ones: those inside the
    training domain (all cells when the model has no domain check). ``out_of_domain`` cells were found
    outside it; ``ambiguous`` cells have a prediction set of more than one class. When ``needs_review``,
    a person must review the specimen before its numbers are used, for the ``review_reason`` given.
    """

    cells: list[ClassifyResult]
    counts: dict[str, int]
    blast_fraction: float
    review_first: list[int]
    specimen_id: str = ""
    out_of_domain: int = 0
    ambiguous: int = 0
    counted: int | None = None
    needs_review: bool = False
    review_reason: str = ""

    @property
    def counted_cells(self) -> int:
        """The cells the blast fraction counts (all of them when ``counted`` was not given)."""
        return len(self.cells) if self.counted is None else self.counted

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (no NaN)."""
        return safe_dict(
            {
                "specimen_id": self.specimen_id,
                "cells": [c.to_dict() for c in self.cells],
                "counts": self.counts,
                "blast_fraction": self.blast_fraction,
                "review_first": self.review_first,
                "out_of_domain": self.out_of_domain,
                "ambiguous": self.ambiguous,
                "counted": self.counted_cells,
                "needs_review": self.needs_review,
                "review_reason": self.review_reason,
            }
        )


@dataclass(frozen=True)
class ExplainResult:
    """A classification with its LIME explanation and pictures (PNG bytes by kind)."""

    classification: ClassifyResult
    label: str
    weights: list[tuple[int, float]]
    top_segments: list[int]
    seed: int
    num_samples: int
    score: float
    pictures: dict[str, bytes] = field(default_factory=dict)
    quality: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False
    #: What the reader must know, in words (the image lies outside the training domain, the surrogate
    #: fits poorly, ...); empty when there is nothing to say.
    warnings: list[str] = field(default_factory=list)
    #: No weight stands clear of the model's numerical noise: ``top_segments`` is empty (a warning says so).
    no_evidence: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (no NaN); the pictures are left out (they are PNG bytes)."""
        return safe_dict(
            {
                "classification": self.classification.to_dict(),
                "label": self.label,
                "weights": [list(w) for w in self.weights],
                "top_segments": self.top_segments,
                "seed": self.seed,
                "num_samples": self.num_samples,
                "score": self.score,
                "quality": self.quality,
                "stopped_early": self.stopped_early,
                "no_evidence": self.no_evidence,
                "warnings": list(self.warnings),
            }
        )


@dataclass(frozen=True)
class ModelDescription:
    """A served model as GetModelInfo describes it."""

    name: str
    version: int
    class_names: list[str]
    input_size: tuple[int, int]
    card: dict[str, Any]
    normal_class_names: list[str] = field(default_factory=list)
    available_versions: list[int] = field(default_factory=list)

    def display_name(self, label: str) -> str:
        """The human name of a class, from the model card when it gives one."""
        names = self.card.get("display_names", {})
        return str(names.get(label, label))

    @property
    def alphas(self) -> list[float]:
        """The miscoverage levels (alpha) the model's prediction sets were calibrated for, smallest first.

        They are the keys of the card's ``conformal.qhat``; empty when the model carries no calibration.
        """
        conformal = self.card.get("conformal")
        levels = conformal.get("qhat") if isinstance(conformal, dict) else None
        if not isinstance(levels, dict):
            return []
        found = []
        for key in levels:
            try:
                found.append(float(key))
            except ValueError:
                continue
        return sorted(found)


class ExplainParams(TypedDict, total=False):
    """How to explain; each key left out takes the default named here."""

    #: Perturbed samples to draw; 0 (the default) means the server's default, 1,000.
    num_samples: int
    #: The random seed; ``None`` (the default) lets the server draw one, which the result reports.
    seed: int | None
    #: Superpixels in the mask (default 5).
    top_k: int
    #: Show only superpixels that speak for the label (default ``True``).
    positive_only: bool
    #: Pictures to return, of ``PICTURE_KINDS`` (default: the overlay only).
    pictures: Iterable[str]
    #: The class to explain (default: the predicted one).
    target_label: str
    #: Stop sampling once the top superpixels are stable; ``num_samples`` is then the bound (default off).
    adaptive: bool
    #: The image id echoed back (default: a path's file name, else empty).
    image_id: str | None
    #: An opaque specimen id, echoed back and audited (default empty).
    specimen_id: str
    #: The miscoverage level of the prediction set, one the model was calibrated for (``alphas`` of
    #: :class:`ModelDescription`); ``None`` (the default) means the server's, 0.05.
    alpha: float | None
