"""What the gateway's core returns: plain dataclasses, no protobuf."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import numpy.typing as npt

from allxai.explainer.result import ExplanationResult
from allxai.server.backends.base import ModelInfo
from allxai.server.options import Picture


@dataclass
class Timings:
    """Seconds spent per stage of one request."""

    preprocess: float = 0.0
    model: float = 0.0
    explain: float = 0.0
    total: float = 0.0


@dataclass(frozen=True)
class Classification:
    """Scores in the model's class order, and the top class."""

    class_names: tuple[str, ...]
    scores: tuple[float, ...]

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
class SpecimenOutcome:
    """All cells of one specimen, and its summary."""

    model: ModelInfo
    cells: list[Classification]
    counts: dict[str, int]
    blast_fraction: float
    review_first: list[int]
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
