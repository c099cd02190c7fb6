"""What the gateway's core returns: plain dataclasses, no protobuf."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import numpy.typing as npt

from allxai.explainer.result import ExplanationResult
from allxai.server.backends.base import ModelInfo
from allxai.server.explain_options import Picture


@dataclass
class Timings:
    """Seconds spent per stage of one request."""

    preprocess: float = 0.0
    model: float = 0.0
    explain: float = 0.0
    total: float = 0.0


@dataclass(frozen=True)
class Finding:
    """What preprocessing found in an image: its scale, its white cells, the region the model looked at."""

    #: Micrometres per pixel of the image as sent; None when nothing could be measured.
    scale: float | None
    #: "red_cells" or "white_cell"; empty without a scale.
    scale_source: str
    white_cells: int
    #: (top, left, bottom, right) in the image's own pixels.
    region: tuple[int, int, int, int]
    #: Why the image counts as outside the training domain, besides its score (no cell, scale, size).
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class Classification:
    """Scores in the model's class order, the top class, and what the model's calibration says of them.

    ``in_domain``, ``domain_score`` and ``domain_threshold`` are None when the model makes no domain check;
    ``prediction_set`` is empty and ``coverage`` None when it carries no conformal calibration.
    """

    class_names: tuple[str, ...]
    scores: tuple[float, ...]
    in_domain: bool | None = None
    domain_score: float | None = None
    domain_threshold: float | None = None
    prediction_set: tuple[str, ...] = ()
    coverage: float | None = None
    finding: Finding | None = None

    @cached_property  # read several times per answer (label, confidence, the reply, the audit record)
    def label_index(self) -> int:
        """Index of the most probable class."""
        return int(np.argmax(self.scores))

    @property
    def label(self) -> str:
        """Name of the most probable class."""
        return self.class_names[self.label_index]

    @property
    def confidence(self) -> float:
        """Probability of the most probable class."""
        return self.scores[self.label_index]


@dataclass
class ClassifyOutcome:
    """One classified image."""

    model: ModelInfo
    classification: Classification
    timings: Timings


@dataclass
class SpecimenSummary:
    """What a specimen's cells add up to (see :func:`allxai.server.gate.summarise`)."""

    counts: dict[str, int]
    blast_fraction: float
    review_first: list[int]
    out_of_domain: int = 0
    ambiguous: int = 0
    counted: int = 0
    needs_review: bool = False
    review_reason: str = ""


@dataclass
class SpecimenOutcome:
    """All cells of one specimen, and its summary."""

    model: ModelInfo
    cells: list[Classification]
    summary: SpecimenSummary
    timings: Timings


@dataclass
class ExplainOutcome:
    """A classification, its explanation, the prepared image the explanation is drawn on, and the
    pictures the request asked for (drawn by the transport)."""

    model: ModelInfo
    classification: Classification
    explanation: ExplanationResult
    image: npt.NDArray[np.uint8]
    pictures: tuple[Picture, ...] = ("overlay",)
    timings: Timings = field(default_factory=Timings)
    #: What the reader must know, in words (an image outside the training domain, ...).
    warnings: tuple[str, ...] = ()
