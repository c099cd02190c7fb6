"""What the domain check and the prediction set say of a cell or a specimen, in words and codes, for the
HL7 and FHIR builders alike."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

from allxai.client import ClassifyResult, SpecimenResult
from allxai.client.words import percent, score_and_threshold
from allxai.lis._report import DOMAIN_IN, DOMAIN_NONE, DOMAIN_OUT


def finite_gate(cell: ClassifyResult) -> ClassifyResult:
    """``cell`` with a domain score, threshold or coverage that is not a finite number left out.

    HL7 NM and FHIR decimals have no NaN; the SDK already reads a NaN from the gateway as None, but a
    result built by hand may carry one.
    """

    def kept(value: float | None) -> float | None:
        return value if value is not None and math.isfinite(value) else None

    score, threshold, coverage = kept(cell.domain_score), kept(cell.domain_threshold), kept(cell.coverage)
    if (score, threshold, coverage) == (cell.domain_score, cell.domain_threshold, cell.coverage):
        return cell
    return replace(cell, domain_score=score, domain_threshold=threshold, coverage=coverage)


def domain_code(cell: ClassifyResult) -> tuple[str, str]:
    """The coded answer of a cell's domain check."""
    if cell.in_domain is None:
        return DOMAIN_NONE
    return DOMAIN_IN if cell.in_domain else DOMAIN_OUT


def domain_note(cell: ClassifyResult) -> str:
    """What the domain check says of one image, for the person who reads the report."""
    if cell.in_domain is None:
        return (
            "No domain check: the model carries none, so it was not checked whether the image is like the "
            "images the model was trained on."
        )
    score = ""
    if cell.domain_score is not None and cell.domain_threshold is not None:
        shown, threshold = score_and_threshold(cell.domain_score, cell.domain_threshold)
        relation = "within" if cell.in_domain else "above"
        score = f" (domain score {shown}, {relation} the calibrated threshold {threshold})"
    if cell.in_domain:
        return f"The image lies inside the model's training domain{score}."
    return (
        f"The image lies outside the model's training domain{score}: the classification is not for "
        "diagnosis. The image may not be a blood cell, or come from another laboratory's microscope or stain."
    )


def set_note(cell: ClassifyResult, display: Callable[[str], str]) -> str:
    """What the conformal prediction set says of one image, with the classes' human names."""
    if cell.coverage is None:
        return "No prediction set: the model carries no conformal calibration."
    level = f"Prediction set at {percent(cell.coverage)} coverage"
    names = ", ".join(display(label) for label in cell.prediction_set)
    if not cell.prediction_set:
        return f"{level}: empty (no class was needed to reach that level)."
    if len(cell.prediction_set) == 1:
        return f"{level}: {names} alone."
    return f"{level}: {names}. The answer is ambiguous: each of these classes stays plausible."


def cell_flags(cell: ClassifyResult, display: Callable[[str], str]) -> str:
    """A short note on one cell of a specimen: outside the domain, ambiguous; empty when neither."""
    notes = []
    if cell.out_of_domain:
        notes.append("Outside the model's training domain: not for diagnosis.")
    if cell.ambiguous and cell.coverage is not None:
        names = ", ".join(display(label) for label in cell.prediction_set)
        notes.append(f"Ambiguous: prediction set at {percent(cell.coverage)} coverage: {names}.")
    return " ".join(notes)


def _cells(count: int) -> str:
    return f"{count} cell{'' if count == 1 else 's'}"


def specimen_notes(specimen: SpecimenResult) -> list[str]:
    """What a specimen's blast fraction counts, and how many cells are ambiguous, in words."""
    counted, total = specimen.counted_cells, len(specimen.cells)
    if any(cell.domain_checked for cell in specimen.cells):
        notes = [
            f"The blast fraction counts only the {counted} of {_cells(total)} inside the model's training "
            f"domain; the {_cells(specimen.out_of_domain)} outside it "
            f"{'is' if specimen.out_of_domain == 1 else 'are'} left out."
        ]
    else:
        notes = [
            f"No domain check: the model carries none, so the blast fraction counts all {_cells(counted)}."
        ]
    if any(cell.coverage is not None for cell in specimen.cells):
        ambiguous = f"{specimen.ambiguous} of {_cells(total)}"
        notes.append(f"Ambiguous (a prediction set of more than one class): {ambiguous}.")
    else:
        notes.append("No prediction sets: the model carries no conformal calibration.")
    return notes
