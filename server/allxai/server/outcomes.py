"""What the gateway's core returns: plain dataclasses, no protobuf."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import numpy.typing as npt

from allxai.explainer.result import ExplanationResult
from allxai.server.backends.base import ModelInfo


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
class ExplainOptions:
    """A request's explanation options; ``None`` means the server's default."""

    num_samples: int | None = None
    top_k: int = 5
    num_features: int = 100000
    positive_only: bool = True
    seed: int | None = None
    target_label: str = ""
    batch_size: int | None = None
    segmentation: str = "quickshift"
    segmentation_params: dict[str, float] = field(default_factory=dict)
    hide_color: tuple[int, int, int] | None = None
    adaptive: bool = False
    composition: str = "auto"


@dataclass
class ExplainOutcome:
    """A classification, its explanation, and the prepared image the explanation is drawn on."""

    model: ModelInfo
    classification: Classification
    explanation: ExplanationResult
    image: npt.NDArray[np.uint8]
    timings: Timings = field(default_factory=Timings)
