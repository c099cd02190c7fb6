"""A reviewer finalises or corrects a report: the SDK behind ``allxai lis finalize`` and ``correct``.

:func:`finalize` makes a preliminary report final; :func:`correct` changes the class of cells of a final (or
already corrected) report. Both keep every identifier of the report (the request id, and so HL7 OBR-3 and the
FHIR identifiers), so the LIS replaces the earlier report rather than filing a second one; the HL7 and FHIR
builders put the reviewer in OBR-32 and OBX-16, and in ``resultsInterpreter`` and a Provenance verifier.
Every refusal is a ``ValueError`` whose message says what to do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime

from allxai.client import ClassifyResult, SpecimenResult
from allxai.lis._report import Correction, LabReport, Reviewer

__all__ = ["correct", "finalize"]


def _now(at: datetime | None) -> datetime:
    if at is not None and at.tzinfo is None:
        raise ValueError("the review time must carry a time zone")
    return at if at is not None else datetime.now(UTC)


def _check_reviewer(reviewer: Reviewer) -> None:
    # Reviewer refuses an empty id itself; this also catches one made with dataclasses.replace tricks or
    # whitespace only, since the report would otherwise name nobody as responsible.
    if not reviewer.id.strip():
        raise ValueError("a review needs the reviewer's id (the LIS's identifier of the person)")


def finalize(report: LabReport, reviewer: Reviewer, *, at: datetime | None = None) -> LabReport:
    """The final report of preliminary ``report``, confirmed by ``reviewer``, issued ``at`` (default now).

    Refuses (``ValueError``) a report that is not preliminary (a final one is changed with :func:`correct`)
    and one that holds no classified image at all (only failures: there is no result to confirm).
    """
    _check_reviewer(reviewer)
    if report.status != "preliminary":
        raise ValueError(
            f"the report is {report.status}, not preliminary: only a preliminary report can be finalised "
            "(change a final one with correct)"
        )
    if report.cell is None and report.specimen is None:
        raise ValueError("the report holds no classified image, only failures: there is no result to confirm")
    return replace(report, status="final", reviewer=reviewer, issued_at=_now(at))


def _cell_of(report: LabReport, number: int) -> ClassifyResult:
    """Cell ``number`` of the report (0: the single image, n: the specimen's nth cell), or ``ValueError``."""
    if number == 0:
        if report.cell is None:
            raise ValueError(
                "cell 0 is the single image, and the report has none: number a specimen's cells from 1"
            )
        return report.cell
    cells = report.specimen.cells if report.specimen is not None else []
    if not 1 <= number <= len(cells):
        have = f"cells 1 to {len(cells)}" if cells else "no specimen cells"
        raise ValueError(f"cell {number} is out of range: the report has {have}")
    return cells[number - 1]


def _recount(report: LabReport, specimen: SpecimenResult, cells: list[ClassifyResult]) -> SpecimenResult:
    """``specimen`` with ``cells`` and the numbers that follow from their classes, as the gateway counts them:
    ``counts`` over every cell, ``blast_fraction`` over the cells not outside the training domain."""
    normal = report.model.normal_class_names
    if not normal:
        # The gateway refuses a specimen in this case too: every cell would count as a blast.
        raise ValueError(
            f"model {report.model.name!r} names no normal class, so the specimen's blast fraction cannot be "
            "recomputed after a correction"
        )
    counts = {name: 0 for name in report.model.class_names}
    for cell in cells:
        counts[cell.label] = counts.get(cell.label, 0) + 1
    judged = [cell for cell in cells if cell.in_domain is not False]
    blasts = sum(cell.label not in normal for cell in judged)
    # Whether a cell is outside the domain or ambiguous does not depend on its class: those counts, the
    # review flag and its reason stay as the gateway gave them.
    return replace(
        specimen,
        cells=cells,
        counts=counts,
        blast_fraction=blasts / len(judged) if judged else 0.0,
    )


def correct(
    report: LabReport,
    reviewer: Reviewer,
    changes: Mapping[int, str],
    note: str,
    *,
    at: datetime | None = None,
) -> LabReport:
    """The corrected report of final or corrected ``report``: ``changes`` maps a cell number (0 the single
    image, n the specimen's nth cell, 1-based as HL7 OBX-4) to the class ``reviewer`` gives it; ``note`` is
    their reason. Issued ``at`` (default now).

    The classifications are relabelled (the model's confidence and scores stay: they are what the model
    said), a specimen's counts and blast fraction recomputed, and the corrections added to the report's
    earlier ones: a cell changed again keeps one correction, whose ``ai_label`` is still the model's (a cell
    set back to the model's class has none). ``note`` replaces an earlier correction's note (the report
    record's history keeps every one).

    Refuses (``ValueError``) a preliminary report (finalise it first), no change, a blank note, a class the
    model does not have, a cell number out of range, and a change that gives a cell the class it has.
    """
    _check_reviewer(reviewer)
    if report.status == "preliminary":
        raise ValueError("the report is preliminary: finalise it before correcting it")
    if not changes:
        raise ValueError("a correction needs at least one change of a cell's class")
    if not note.strip():
        raise ValueError("a correction needs a note: the reviewer's reason, which the LIS shows with it")
    classes = report.model.class_names
    earlier = {c.cell: c for c in report.corrections}
    corrections = dict(earlier)
    relabelled: dict[int, ClassifyResult] = {}
    for number, label in sorted(changes.items()):
        if label not in classes:
            raise ValueError(
                f"{label!r} is not a class of model {report.model.name}: use one of {', '.join(classes)}"
            )
        cell = _cell_of(report, number)
        where = "the image" if number == 0 else f"cell {number}"
        if cell.label == label:
            raise ValueError(f"{where} is {label!r} already: the change changes nothing")
        ai_label = earlier[number].ai_label if number in earlier else cell.label
        if label == ai_label:
            corrections.pop(number, None)  # back to what the model said: nothing left to correct
        else:
            corrections[number] = Correction(number, ai_label, label)
        relabelled[number] = replace(cell, label=label)

    classification, explanation, specimen = report.classification, report.explanation, report.specimen
    if 0 in relabelled:
        # The watcher gives both a classification and the explanation carrying it: relabel both, so that
        # whichever a builder reads says the reviewer's class. The explanation's own label stays: it names
        # the class LIME explained, which was the model's.
        label = relabelled[0].label
        if classification is not None:
            classification = replace(classification, label=label)
        if explanation is not None:
            explanation = replace(
                explanation, classification=replace(explanation.classification, label=label)
            )
    if specimen is not None and any(number > 0 for number in relabelled):
        cells = [relabelled.get(i, cell) for i, cell in enumerate(specimen.cells, start=1)]
        specimen = _recount(report, specimen, cells)
    return replace(
        report,
        classification=classification,
        explanation=explanation,
        specimen=specimen,
        status="corrected",
        reviewer=reviewer,
        issued_at=_now(at),
        corrections=tuple(corrections[n] for n in sorted(corrections)),
        correction_note=note.strip(),
    )
