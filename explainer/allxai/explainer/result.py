"""What an explanation is, independent of how it was computed."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Quality:
    """How far to trust an explanation.

    ``r2``: the surrogate's weighted R², None where it is undefined (fewer than two samples).
    ``local_prediction`` against ``model_prediction``: the surrogate's and the model's probability of
    the label for the unperturbed image. ``stability``: mean Jaccard overlap of the top-k superpixels
    refitted on random halves of the samples (1.0: the same top-k every time), None where it was not
    measured (fewer than :data:`MIN_STABILITY_SAMPLES` samples). ``no_evidence``: no weight stands
    clear of the model's numerical noise (:data:`NOISE_FLOOR`), so nothing in the image moved the
    answer; such an explanation has no top superpixels. The ``*_share`` fields split the positive weight by
    where its superpixels lie: on the cell, on the background, in the image corners (squares of
    15% of the shorter side, where the Aria images carry a scale bar; a superpixel covering a
    fifth of one counts as corner); weight on the background or corners points at a shortcut.
    """

    r2: float | None
    local_prediction: float
    model_prediction: float
    stability: float | None
    cell_share: float
    background_share: float
    corner_share: float
    no_evidence: bool = False

    def warnings(self) -> list[str]:
        """What a reader must know about this explanation's evidence, in words; empty when nothing."""
        out = []
        if self.no_evidence:
            out.append(
                f"no evidence: no superpixel moves the model's answer by more than {NOISE_FLOOR:g} "
                "(the model's own numerical noise), so no superpixels are shown; the image may be "
                "blank, or too few samples were drawn"
            )
        if self.r2 is None:
            out.append("the surrogate's R² is undefined (fewer than two samples): the fit says nothing")
        elif self.r2 < MIN_R2:
            out.append(
                f"the surrogate fits the model poorly here (R² {self.r2:.2f}, below {MIN_R2}): "
                "the weights are a rough guide to what the model looked at, not a faithful one"
            )
        if self.stability is None and not self.no_evidence:
            out.append(
                f"stability was not measured (fewer than {MIN_STABILITY_SAMPLES} samples): "
                "the top superpixels may change with another seed"
            )
        if (
            self.cell_share + self.background_share + self.corner_share > 0
            and self.cell_share < MIN_CELL_SHARE
        ):
            out.append(
                f"the evidence sits mostly off the white cells ({self.cell_share:.0%} of the positive "
                f"weight on them, {self.background_share:.0%} on the background, "
                f"{self.corner_share:.0%} in the corners): "
                "the answer may rest on something other than the cell"
            )
        return out


#: Below this weighted R² the surrogate is said to fit poorly.
MIN_R2 = 0.3
#: Below this share of the positive weight on white cells the evidence is said to sit off them.
MIN_CELL_SHARE = 0.5
#: Below this many samples the stability is not measured: halves of fewer than 10 rows say nothing.
MIN_STABILITY_SAMPLES = 20
#: A weight is a change in the label's probability. float32 probabilities carry about 7 significant
#: digits, and the same image scored in another batch differs in the 7th or 8th: when no weight is
#: larger than this, nothing in the image moved the answer (a blank image gives weights near 1e-9).
NOISE_FLOOR = 1e-6


@dataclass
class ExplanationResult:
    """LIME's answer for one label, with what is needed to draw it."""

    label_index: int
    weights: list[tuple[int, float]]
    top_segments: list[int]
    segments: npt.NDArray[np.int32] | npt.NDArray[np.int64]
    intercept: float
    score: float
    local_prediction: float
    num_samples: int
    seed: int
    quality: Quality | None = None
    stopped_early: bool = False
    composition: str = "gateway"
    probabilities: npt.NDArray[np.float32] = field(default_factory=lambda: np.zeros(0, np.float32))


def top_segments(weights: list[tuple[int, float]], k: int, positive_only: bool) -> list[int]:
    """The k strongest superpixels (lime's ``get_image_and_mask`` order), positive ones only if asked."""
    chosen = [(s, w) for s, w in weights if w > 0] if positive_only else weights
    return [s for s, _ in chosen[:k]]
