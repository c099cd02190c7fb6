"""The OBX segments of an ORU^R01 (see ``allxai.lis.hl7``): classification, overlay, specimen summary,
failures.

How far the model is entitled to judge an image travels with its classification: OBX-8 "A" (abnormal,
table 0078) on the class of an image outside the training domain and an NTE that says so in words, a coded
domain check (IN, OUT, or NONE when the model has no check, which is never flagged), its score and
threshold, and the conformal prediction set (one CWE repetition per class) with its coverage.

Every OBX carries the report's status (OBX-11) and, once a person reviewed it, that person (OBX-16); an
image that could not be classified is an OBX of its own with status X and an NTE that says why.
"""

from __future__ import annotations

import base64
import math
from typing import Any

from hl7apy.core import Field  # type: ignore[import-untyped]

from allxai.client import ClassifyResult
from allxai.lis._gate_notes import (
    cell_flags,
    domain_code,
    domain_note,
    finite_gate,
    set_note,
    specimen_notes,
)
from allxai.lis._hl7lengths import equipment_id
from allxai.lis._hl7strict import (
    MAX_ED_DATA_CHARS,
    STRICT,
    VERSION,
    coded,
    ed_field,
    escape,
    hl7_time,
    number,
    obx_probability,
)
from allxai.lis._report import (
    CODE_AMBIGUOUS,
    CODE_BLAST,
    CODE_CLASS,
    CODE_CONFIDENCE,
    CODE_COUNTED,
    CODE_COVERAGE,
    CODE_DOMAIN,
    CODE_DOMAIN_SCORE,
    CODE_DOMAIN_THRESHOLD,
    CODE_OUT_OF_DOMAIN,
    CODE_OVERLAY,
    CODE_REVIEW,
    CODE_SET,
    CODE_TOTAL,
    HL7_LOCAL_SYSTEM,
    HL7_OUT_OF_DOMAIN_FLAG,
    LabReport,
    note_text,
)

#: HL7 table 0136 (yes/no), for the specimen's needs-review answer.
_YES = ("Y", "Yes")
_NO = ("N", "No")
#: OBX-11 of an image that could not be classified (table 0085: "results cannot be obtained").
STATUS_FAILED = "X"
#: The coding system of LOINC in HL7 v2 (table 0396).
LOINC_SYSTEM = "LN"
#: How many of a specimen's cells to review first an NTE names (as FHIR's note does).
REVIEW_FIRST_SHOWN = 10


class Builder:
    """Appends OBX segments to one order with consecutive set ids and the shared fields."""

    def __init__(self, order: Any, report: LabReport) -> None:
        self.order = order
        self.report = report
        self.set_id = 0
        self.result_status = report.hl7_status
        self.observer = responsible_observer(report)
        self.equipment = equipment_id(report.model.name, report.model_version)
        self.analysed_at = hl7_time(report.issued_at)

    def obx(
        self,
        value_type: str,
        code: tuple[str, str] | str,
        value: str | None,
        *,
        sub_id: str = "",
        units: str = "",
        probability: float | None = None,
        method: str = "",
        flag: str = "",
        status: str = "",
    ) -> Any:
        """Add one OBX; ``code`` is a local code and its text, or OBX-3 as ER7 (another coding system);
        ``value`` is ER7 text (already escaped), or None when the caller sets OBX-5 (or leaves it empty);
        ``status`` overrides the report's OBX-11."""
        self.set_id += 1
        obx = self.order.add_group("ORU_R01_OBSERVATION").add_segment("OBX")
        obx.obx_1 = str(self.set_id)
        obx.obx_2 = value_type
        obx.obx_3 = code if isinstance(code, str) else coded(code)
        if sub_id:
            obx.obx_4 = sub_id
        if value is not None:
            obx.obx_5 = value
        if units:
            obx.obx_6 = units
        if flag:
            obx.obx_8 = flag
        if probability is not None and math.isfinite(probability):
            obx.obx_9 = obx_probability(probability)
        obx.obx_11 = status or self.result_status
        if self.report.observed_at is not None:
            obx.obx_14 = hl7_time(self.report.observed_at)
        if self.observer:
            obx.obx_16 = self.observer
        if method:
            obx.obx_17 = method
        obx.obx_18 = self.equipment
        obx.obx_19 = self.analysed_at
        return obx


def responsible_observer(report: LabReport) -> str:
    """OBX-16 (XCN: id^family^given) of a final or corrected report, empty for a preliminary one."""
    reviewer = report.reviewer
    if report.status == "preliminary" or reviewer is None:
        return ""
    return "^".join(escape(part.strip()) for part in (reviewer.id, reviewer.family, reviewer.given)).rstrip(
        "^"
    )


def notes(obx: Any, texts: list[str]) -> None:
    """NTE segments after ``obx`` (in its observation group), one per text, numbered from 1."""
    for index, text in enumerate((t for t in texts if t), start=1):
        note = obx.parent.add_segment("NTE")
        note.nte_1 = str(index)
        note.nte_3 = escape(note_text(text))


def _class_value(report: LabReport, label: str) -> str:
    coding = report.class_coding(label)
    return f"{escape(coding.code)}^{escape(coding.display)}^{HL7_LOCAL_SYSTEM}"


def classification(b: Builder, cell: ClassifyResult, *, sub_id: str = "", scores: bool = True) -> None:
    """The predicted class, flagged "A" outside the training domain; with ``scores`` (a single image) also
    the confidence, every class's probability, the domain check and the prediction set, each in full.

    A specimen's cells (``scores=False``) carry the flag and a short note when outside the domain or
    ambiguous; the specimen's own OBX segments count them.
    """
    report = b.report
    cell = finite_gate(cell)
    method = f"CNN^Convolutional neural network image classification^{HL7_LOCAL_SYSTEM}"
    flag = HL7_OUT_OF_DOMAIN_FLAG if cell.out_of_domain else ""
    obx = b.obx(
        "CWE",
        CODE_CLASS,
        _class_value(report, cell.label),
        sub_id=sub_id,
        probability=cell.confidence,
        method=method,
        flag=flag,
    )
    corrected = correction_note(report, int(sub_id) if sub_id else 0)
    if not scores:
        notes(obx, [corrected, cell_flags(cell, report.display)])
        return
    notes(obx, [corrected, domain_note(cell), set_note(cell, report.display)])
    b.obx(
        "NM",
        CODE_CONFIDENCE,
        number(cell.confidence),
        sub_id=sub_id,
        units="1^unity^UCUM",
        probability=cell.confidence,
    )
    for name, score in cell.scores.items():
        code = report.score_code(name)
        b.obx("NM", code, number(score), sub_id=sub_id, units="1^unity^UCUM", probability=score)
    _domain(b, cell)
    _prediction_set(b, cell)


def correction_note(report: LabReport, cell: int) -> str:
    """Who changed the class of ``cell`` (0: the single image) from what the AI said; empty if nobody."""
    for change in report.corrections:
        if change.cell == cell:
            return (
                f"Corrected by {report.reviewed_by}: the AI's class was {report.display(change.ai_label)}, "
                f"the reviewer's is {report.display(change.label)}."
            )
    return ""


def _domain(b: Builder, cell: ClassifyResult) -> None:
    """The domain check, coded (IN, OUT, NONE), and its score ("H" above the threshold) and threshold."""
    flag = HL7_OUT_OF_DOMAIN_FLAG if cell.out_of_domain else ""
    b.obx("CWE", CODE_DOMAIN, coded(domain_code(cell)), flag=flag)
    if cell.domain_score is not None:
        above = cell.domain_threshold is not None and cell.domain_score > cell.domain_threshold
        b.obx("NM", CODE_DOMAIN_SCORE, number(cell.domain_score), flag="H" if above else "")
    if cell.domain_threshold is not None:
        b.obx("NM", CODE_DOMAIN_THRESHOLD, number(cell.domain_threshold))


def _prediction_set(b: Builder, cell: ClassifyResult) -> None:
    """The set's classes as repetitions of one CWE, most probable first, and the level it covers."""
    if cell.coverage is None:
        return  # no calibration: the NTE of the class says so
    if cell.prediction_set:
        obx = b.obx("CWE", CODE_SET, _class_value(b.report, cell.prediction_set[0]))
        for label in cell.prediction_set[1:]:
            repetition = Field("OBX_5", version=VERSION, validation_level=STRICT)
            repetition.value = _class_value(b.report, label)
            obx.add(repetition)
    b.obx("NM", CODE_COVERAGE, number(cell.coverage), units="1^unity^UCUM")


def overlay(b: Builder) -> None:
    """The LIME overlay: embedded as ED when it fits OBX-5, else a reference (RP), else a note; with the
    explanation in words."""
    report, png = b.report, b.report.overlay_png
    if png is None:
        return
    method = f"LIME^Local interpretable model-agnostic explanations^{HL7_LOCAL_SYSTEM}"
    data = base64.b64encode(png).decode("ascii")
    if len(data) <= MAX_ED_DATA_CHARS:
        obx = b.obx("ED", CODE_OVERLAY, None, method=method)
        obx.obx_5 = ed_field("", "IM", "PNG", "Base64", data)
    elif report.overlay_reference:
        # RP: pointer^application id^type of data^subtype, the HL7 way to refer to an image stored elsewhere.
        value = f"{escape(report.overlay_reference)}^ALLXAI^IM^PNG"
        obx = b.obx("RP", CODE_OVERLAY, value, method=method)
    else:
        obx = b.obx("ST", CODE_OVERLAY, "overlay too large to embed", method=method)
    explanation = report.explanation
    if explanation is not None:
        summary = (
            f"LIME explanation of {report.display(explanation.label)}: {explanation.num_samples} samples, "
            f"seed {explanation.seed}, surrogate R2 {explanation.score:.3f}, "
            f"top superpixels {', '.join(str(s) for s in explanation.top_segments)}"
        )
        notes(obx, [summary, *(f"Warning: {w}" for w in explanation.warnings)])


def blast_code(report: LabReport) -> str:
    """OBX-3 of the blast percentage: the LOINC code of the LIS configuration, else the local code."""
    loinc = report.config.blast_loinc
    if loinc is None:
        return coded(CODE_BLAST)
    return coded((loinc.code, loinc.display), LOINC_SYSTEM)


def review_first_note(review_first: list[int]) -> str:
    """The cells to look at first (1-based, the first ``REVIEW_FIRST_SHOWN``), empty when there are none."""
    shown = ", ".join(str(index + 1) for index in review_first[:REVIEW_FIRST_SHOWN])
    if not shown:
        return ""
    return f"Cells to review first (outside the training domain, then least confident): {shown}"


def specimen(b: Builder) -> None:
    """A specimen's counts, blast percentage, needs-review answer and one class OBX per cell (OBX-4)."""
    report, specimen = b.report, b.report.specimen
    if specimen is None:
        return
    for label, count in specimen.counts.items():
        code = report.count_code(label)
        b.obx("NM", code, str(count), units="{cells}^cells^UCUM")
    cells = "{cells}^cells^UCUM"
    b.obx("NM", CODE_TOTAL, str(len(specimen.cells)), units=cells)
    b.obx("NM", CODE_COUNTED, str(specimen.counted_cells), units=cells)
    b.obx("NM", CODE_OUT_OF_DOMAIN, str(specimen.out_of_domain), units=cells)
    b.obx("NM", CODE_AMBIGUOUS, str(specimen.ambiguous), units=cells)
    if specimen.counted_cells:
        value, flag, why = number(100.0 * specimen.blast_fraction), "A" if specimen.needs_review else "", []
    else:
        # No cell could be judged: no number a LIS could file as "0 % blasts", the reason instead.
        value, flag = None, "A"
        why = ["No blast fraction: no cell lies inside the model's training domain."]
    # Where a reader looks: under the needs-review answer when it is Y, else with the blast percentage.
    first, review = review_first_note(specimen.review_first), specimen.needs_review
    blast = b.obx("NM", blast_code(report), value, units="%^percent^UCUM", flag=flag)
    notes(blast, [*why, *specimen_notes(specimen), "" if review else first])
    answer = b.obx("CWE", CODE_REVIEW, coded(_YES if review else _NO, "HL70136"), flag="A" if review else "")
    if review:
        notes(answer, [f"Needs review: {specimen.review_reason or 'the gateway asks for a review'}", first])
    for index, cell in enumerate(specimen.cells, start=1):
        classification(b, cell, sub_id=str(index), scores=False)


def failures(b: Builder) -> None:
    """One class OBX per image that could not be classified: no value, status X, and an NTE saying why.

    OBX-4 numbers them after the specimen's cells; an image alone (no specimen, no classification, one
    failure) has none, like a single image's class.
    """
    report = b.report
    first = len(report.specimen.cells) if report.specimen is not None else 0
    alone = report.specimen is None and report.cell is None and len(report.failures) == 1
    for cell_number, failure in enumerate(report.failures, start=first + 1):
        obx = b.obx("CWE", CODE_CLASS, None, sub_id="" if alone else str(cell_number), status=STATUS_FAILED)
        why = f"Image {failure.image_id} could not be classified ({failure.code}): {failure.message}"
        notes(obx, [why])
