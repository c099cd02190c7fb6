"""What the HL7 and FHIR builders share: one report's inputs, the codes, and the AI transparency label."""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Literal

from allxai.client import ClassifyResult, ExplainResult, ModelDescription, SpecimenResult

#: The HL7 v2 name of the local coding system of allxai's own codes (table 0396: local systems are "99zzz").
HL7_LOCAL_SYSTEM = "99ALX"
#: The same code system as a FHIR URI.
FHIR_LOCAL_SYSTEM = "urn:allxai:codes"

#: The AI Transparency on FHIR IG's label: HL7 v3 ObservationValue AIAST, "Artificial Intelligence asserted".
AIAST_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
AIAST_CODE = "AIAST"
AIAST_DISPLAY = "Artificial Intelligence asserted"

#: HL7 MSH-3, and the default namespace of the LIS's order and specimen ids.
SENDING_APPLICATION = "ALLXAI"

#: The order (OBR-4, DiagnosticReport.code) every report answers.
SERVICE_CODE = "ALLXAI-CLS"
SERVICE_TEXT = "Leukaemia cell classification"

#: Observation codes, local to allxai (no LOINC code exists for an AI cell classification or its scores).
CODE_CLASS = ("ALLXAI-CLASS", "Predicted cell class")
CODE_CONFIDENCE = ("ALLXAI-CONF", "Confidence of the predicted class")
CODE_MODEL = ("ALLXAI-MODEL", "AI model name and version")
CODE_OVERLAY = ("ALLXAI-LIME", "LIME explanation overlay")
CODE_AI_LABEL = ("ALLXAI-AILABEL", "AI transparency label")
CODE_TOTAL = ("ALLXAI-NCELLS", "Cells classified")
CODE_BLAST = ("ALLXAI-BLAST", "Blast fraction")

#: The input-domain check of one image: a coded answer (see ``DOMAIN_IN``...), its score and threshold.
CODE_DOMAIN = ("ALLXAI-DOMAIN", "Input domain check")
CODE_DOMAIN_SCORE = ("ALLXAI-DSCORE", "Domain score (higher is less like the training images)")
CODE_DOMAIN_THRESHOLD = ("ALLXAI-DTHRESH", "Calibrated domain threshold")
#: The answers of the domain check, local codes (no terminology has them).
DOMAIN_IN = ("IN", "Inside the model's training domain")
DOMAIN_OUT = ("OUT", "Outside the model's training domain: not for diagnosis")
DOMAIN_NONE = ("NONE", "No domain check: the model has none")
#: The conformal prediction set of one image (its classes) and the level it covers.
CODE_SET = ("ALLXAI-SET", "Conformal prediction set")
CODE_COVERAGE = ("ALLXAI-COVER", "Coverage of the prediction set")
#: A specimen's cells outside the domain, ambiguous ones, the counted ones, and whether it needs review.
CODE_OUT_OF_DOMAIN = ("ALLXAI-NOOD", "Cells outside the training domain")
CODE_AMBIGUOUS = ("ALLXAI-NAMB", "Ambiguous cells (prediction set of more than one class)")
CODE_COUNTED = ("ALLXAI-NCOUNT", "Cells counted in the blast fraction")
CODE_REVIEW = ("ALLXAI-REVIEW", "Specimen needs review")

#: HL7 v2.5 OBX-8 (table 0078) on an answer outside the training domain: "A", abnormal, which every v2.5
#: receiver highlights for attention; the NTE beside it says why (v2.5's table has no "outside the
#: protocol's range" code).
HL7_OUT_OF_DOMAIN_FLAG = "A"
#: FHIR Observation.interpretation of an answer outside the training domain: HL7 v3 ObservationInterpretation
#: EX, "outside threshold" (a result outside the inclusion range of the protocol it is reported under).
INTERPRETATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
OUT_OF_DOMAIN_INTERPRETATION = ("EX", "outside threshold")
#: Notes a receiver shows are cut to this many characters (a gateway's reason could be any length).
MAX_NOTE_CHARS = 2000

ResultStatus = Literal["preliminary", "final"]


def _pair(score: float, threshold: float) -> tuple[str, str]:
    """Two numbers with one decimal, or as many more (up to six) as it takes to tell them apart."""
    for decimals in range(1, 7):
        a, b = f"{score:.{decimals}f}", f"{threshold:.{decimals}f}"
        if a != b:
            break
    return a, b


def percent(share: float) -> str:
    """A coverage as a person writes it: 0.95 is "95%", 0.975 "97.5%"."""
    return f"{round(100 * share, 4):g}%"


def note_text(text: str) -> str:
    """A note, cut to ``MAX_NOTE_CHARS``."""
    return text if len(text) <= MAX_NOTE_CHARS else text[: MAX_NOTE_CHARS - 1] + "…"


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
        shown, threshold = _pair(cell.domain_score, cell.domain_threshold)
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


def code_token(text: str) -> str:
    """A code-safe token for a class name: HL7 and FHIR codes must not carry separators or spaces."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text) or "_"


def score_code(label: str, display: str) -> tuple[str, str]:
    """The observation code of one class's probability (``display``: the class's human name)."""
    return f"ALLXAI-P-{code_token(label)}", f"Probability of {display}"


def count_code(label: str, display: str) -> tuple[str, str]:
    """The observation code of the number of cells of one class in a specimen."""
    return f"ALLXAI-N-{code_token(label)}", f"Cells classified as {display}"


def class_system(model: ModelDescription) -> str:
    """The FHIR code system of one model's class names (class names are the model's, not a terminology's)."""
    return f"urn:allxai:model:{code_token(model.name)}:classes"


@dataclass(frozen=True)
class LabReport:
    """Everything one LIS report carries: a cell's classification and/or a specimen, the model, the context.

    Give ``classification`` (or ``explanation``, whose classification is used), ``specimen``, or both.

    Identifiers are the LIS's, never made up here: ``order_id`` is the placer order number (HL7 OBR-2, in
    ``order_namespace``, default the sending application ``ALLXAI``; FHIR ``basedOn``), ``specimen_id`` the
    specimen's id (HL7 SPM-2, a FHIR Specimen); each is left out when empty. allxai's own id of the result is
    the gateway's request id (HL7 OBR-3 filler order number, FHIR ``DiagnosticReport.identifier``), so two
    reports about one specimen never share a filler number.

    ``observed_at`` is when the specimen was collected or imaged, as the LIS knows it (HL7 OBR-7 and OBX-14,
    FHIR ``effectiveDateTime``); unknown by default, and then left out. ``issued_at`` is when allxai produced
    the result (HL7 OBX-19 date/time of the analysis and OBR-22, FHIR ``issued``).

    ``status`` is ``preliminary`` for AI output nobody has reviewed; ``final`` needs ``reviewed_by``, the
    person who confirmed it, and the AI note then names them. ``overlay_reference`` is a URI where the
    overlay PNG is also stored, used by HL7 when the picture is too large to embed (see ``allxai.lis.hl7``).
    """

    model: ModelDescription
    classification: ClassifyResult | None = None
    explanation: ExplainResult | None = None
    specimen: SpecimenResult | None = None
    specimen_id: str = ""
    order_id: str = ""
    order_namespace: str = ""
    patient_id: str = ""
    patient_id_authority: str = ""
    observed_at: datetime | None = None
    issued_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    status: ResultStatus = "preliminary"
    reviewed_by: str = ""
    overlay_reference: str = ""

    def __post_init__(self) -> None:
        if self.classification is None and self.explanation is None and self.specimen is None:
            raise ValueError("a LabReport needs a classification, an explanation or a specimen result")
        for name in ("observed_at", "issued_at"):
            moment = getattr(self, name)
            if moment is not None and moment.tzinfo is None:
                # A naive time in a lab record is ambiguous across sites; refuse it rather than guess a zone.
                raise ValueError(f"{name} must carry a time zone")
        if self.status == "final" and not self.reviewed_by.strip():
            # AI output is final only once a person has confirmed it, and the report must say who.
            raise ValueError("a final report needs reviewed_by: the person who confirmed the AI result")

    @property
    def cell(self) -> ClassifyResult | None:
        """The single-image classification, from the explanation when only that was given."""
        if self.classification is not None:
            return self.classification
        return self.explanation.classification if self.explanation is not None else None

    @property
    def overlay_png(self) -> bytes | None:
        """The LIME overlay picture, when the explanation carries one."""
        if self.explanation is None:
            return None
        return self.explanation.pictures.get("overlay")

    @property
    def request_id(self) -> str:
        """The gateway's request id of the main result (empty for a report built by hand)."""
        if self.cell is not None:
            return self.cell.request_id
        if self.specimen is not None and self.specimen.cells:
            return self.specimen.cells[0].request_id
        return ""

    @property
    def model_version(self) -> int:
        """The version that actually answered (the result's, which wins over the description's)."""
        if self.cell is not None:
            return self.cell.version
        if self.specimen is not None and self.specimen.cells:
            return self.specimen.cells[0].version
        return self.model.version

    def display(self, label: str) -> str:
        """A class's human name, from the model card."""
        return self.model.display_name(label)

    def stable_id(self, role: str) -> str:
        """A UUID fixed by this report and a role: rebuilding the same report gives the same identifiers."""
        observed = self.observed_at.isoformat() if self.observed_at is not None else ""
        seed = "|".join([self.request_id, self.specimen_id, self.order_id, observed, role])
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"urn:allxai:{seed}"))

    def warnings(self) -> list[str]:
        """What the reader must know before anything else, empty when there is nothing to say.

        An image outside the training domain, a specimen that needs review, what the explanation warns of.
        """
        found = []
        cell = self.cell
        if cell is not None and cell.out_of_domain:
            found.append(
                "WARNING: the image lies outside the model's training domain; its classification is not for "
                "diagnosis."
            )
        if self.specimen is not None and self.specimen.needs_review:
            reason = self.specimen.review_reason.rstrip(". ") or "the gateway asks for a review"
            found.append(
                note_text(f"WARNING: the specimen needs review before its numbers are used: {reason}.")
            )
        if self.explanation is not None:
            found += [note_text(f"Explanation: {warning}") for warning in self.explanation.warnings]
        return found

    def ai_note(self) -> str:
        """The human-readable AI label both formats carry next to the coded one."""
        made = (
            f"AI-generated result ({AIAST_CODE}: {AIAST_DISPLAY}). Produced by the machine-learning model "
            f"{self.model.name} version {self.model_version} (allxai)"
        )
        if self.status == "final":
            return f"{made}; reviewed and confirmed by {self.reviewed_by.strip()}."
        return f"{made} without human review; a qualified person must confirm it before clinical use."
