"""What the gateway may say of an image: the domain check and the prediction set, and a specimen's summary.

Plain functions over the model's rows (probabilities, then the domain score where the model has a gate) and
its card's calibration; no gRPC. The policy (``ALLXAI_DOMAIN_POLICY``):

- ``flag`` answers every image and says whether it lies inside the training domain;
- ``refuse`` answers an out-of-domain image with FAILED_PRECONDITION, saying why, instead of a class
  (Classify and Explain; a specimen is still answered, since its summary already leaves such cells out).

A specimen's blast fraction counts only the cells inside the domain; it needs review when the share of
cells outside passes ``ALLXAI_SPECIMEN_REVIEW_SHARE``, or when no cell could be judged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

from allxai.contract.calibration import CalibrationError
from allxai.contract.conformal import uniform_from_bytes
from allxai.explainer.result import Quality
from allxai.server.backends.base import ModelInfo, split_rows
from allxai.server.errors import FailedPrecondition, InvalidInput
from allxai.server.outcomes import Classification, Finding, SpecimenSummary

Policy = Literal["flag", "refuse"]


def level(model: ModelInfo, alpha: float | None) -> float | None:
    """The calibrated miscoverage level a request asks for (0 or None: the default); None without sets."""
    if model.conformal is None:
        if alpha:
            raise InvalidInput(
                "alpha", f"model {model.name!r} carries no conformal calibration: it gives no prediction sets"
            )
        return None
    try:
        return model.conformal.level(alpha)
    except CalibrationError as exc:
        raise InvalidInput("alpha", str(exc)) from exc


def classify_rows(
    model: ModelInfo,
    rows: npt.NDArray[np.float32],
    images: Sequence[bytes],
    alpha: float | None,
    findings: Sequence[Finding | None] | None = None,
) -> list[Classification]:
    """One :class:`Classification` per row, with the domain check and the set at level ``alpha``.

    ``images`` are the request's encoded bytes: each set's randomisation is drawn from them, so the same
    image always gets the same set. ``findings`` are what preprocessing found in each image: an image it
    gave reasons for (no white cell, a scale or cell size far from the training images') is outside the
    domain whatever its score says.
    """
    probabilities, scores = split_rows(model, rows)
    gate, sets = model.domain, model.conformal
    out = []
    for i, p in enumerate(probabilities):
        in_domain = score = threshold = coverage = None
        members: tuple[str, ...] = ()
        if scores is not None and gate is not None:
            raw = float(scores[i])
            in_domain, threshold = gate.in_domain(raw), gate.threshold
            # A NaN score (a broken model) is reported as outside, and never as a number in JSON.
            score = raw if np.isfinite(raw) else None
        if alpha is not None and sets is not None:
            chosen = sets.members(p, alpha, uniform_from_bytes(images[i]))
            members, coverage = tuple(model.class_names[k] for k in chosen), round(1.0 - alpha, 6)
        finding = findings[i] if findings is not None else None
        if finding is not None and finding.reasons:
            in_domain = False
        scores_ = tuple(p.astype(float).tolist())
        out.append(
            Classification(
                model.class_names, scores_, in_domain, score, threshold, members, coverage, finding
            )
        )
    return out


def enforce(policy: Policy, model: ModelInfo, classification: Classification) -> None:
    """Under the ``refuse`` policy an image outside the training domain gets no class (FailedPrecondition)."""
    if policy == "refuse" and classification.in_domain is False:
        raise FailedPrecondition(
            f"the image lies outside the training domain of model {model.name!r} version {model.version} "
            f"({'; '.join(reasons(classification))}), so it gets no class; it may not be a blood cell, "
            "or come from another laboratory's microscope or stain. The server's policy is to refuse such "
            "images (ALLXAI_DOMAIN_POLICY=refuse)"
        )


def reasons(classification: Classification) -> list[str]:
    """Why an answer lies outside the training domain, in words: the score, then what preprocessing found."""
    out = []
    score, threshold = classification.domain_score, classification.domain_threshold
    if threshold is not None and not (score is not None and score <= threshold):
        shown = f"{score:.3g}" if score is not None else "not a number"
        out.append(f"domain score {shown} above the calibrated threshold {threshold:.3g}")
    if classification.finding is not None:
        out.extend(classification.finding.reasons)
    return out


def summarise(model: ModelInfo, cells: Sequence[Classification], review_share: float) -> SpecimenSummary:
    """Counts per class, the blast fraction over the cells inside the domain, and whether to review."""
    counts = {name: 0 for name in model.class_names}
    for cell in cells:
        counts[cell.label] += 1
    judged = [cell for cell in cells if cell.in_domain is not False]
    blasts = sum(cell.label not in model.normal_class_names for cell in judged)
    outside = len(cells) - len(judged)
    ambiguous = sum(len(cell.prediction_set) > 1 for cell in cells)
    reason = ""
    if not judged:
        reason = f"none of the {len(cells)} cells lies inside the model's training domain"
    elif outside / len(cells) > review_share:
        reason = (
            f"{outside} of {len(cells)} cells ({outside / len(cells):.0%}) lie outside the model's training "
            f"domain, more than the {review_share:.0%} allowed (ALLXAI_SPECIMEN_REVIEW_SHARE); "
            "the blast fraction counts only the others"
        )
    # Cells outside the domain first, then the least confident: what a person should look at first.
    review = sorted(range(len(cells)), key=lambda i: (cells[i].in_domain is not False, cells[i].confidence))
    return SpecimenSummary(
        counts=counts,
        blast_fraction=blasts / len(judged) if judged else 0.0,
        review_first=review,
        out_of_domain=outside,
        ambiguous=ambiguous,
        counted=len(judged),
        needs_review=bool(reason),
        review_reason=reason,
    )


def explanation_warnings(classification: Classification, quality: Quality | None = None) -> tuple[str, ...]:
    """What the reader of an explanation of this answer must know first: the domain, then the evidence."""
    out = []
    if classification.in_domain is False:
        out.append(
            "the image lies outside the model's training domain: the explanation shows what the model looked "
            "at, but its answer is not to be trusted for diagnosis"
        )
    if quality is not None:
        out.extend(quality.warnings())
    return tuple(out)
