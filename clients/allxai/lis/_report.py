"""What the HL7 and FHIR builders share: one report's inputs, the codes, and the AI transparency label."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
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


def note_text(text: str) -> str:
    """A note, cut to ``MAX_NOTE_CHARS``."""
    return text if len(text) <= MAX_NOTE_CHARS else text[: MAX_NOTE_CHARS - 1] + "…"


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
