"""What the HL7 and FHIR builders share: one report's inputs, the codes, and the AI transparency label."""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from allxai.client import ClassifyResult, ExplainResult, ModelDescription, SpecimenResult
from allxai.lis._parts import MAX_NOTE_CHARS as MAX_NOTE_CHARS
from allxai.lis._parts import Correction as Correction
from allxai.lis._parts import Failure as Failure
from allxai.lis._parts import Reviewer as Reviewer
from allxai.lis._parts import code_token as code_token
from allxai.lis._parts import note_text as note_text
from allxai.lis.config import Coding, LisConfig, default_config

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
#: allxai's full request id of the result (OBR-3 holds at most 15 characters of it, see ``filler_number``).
CODE_REQUEST = ("ALLXAI-REQID", "allxai request id")

#: HL7 v2.5 OBX-8 (table 0078) on an answer outside the training domain: "A", abnormal, which every v2.5
#: receiver highlights for attention; the NTE beside it says why (v2.5's table has no "outside the
#: protocol's range" code).
HL7_OUT_OF_DOMAIN_FLAG = "A"
#: FHIR Observation.interpretation of an answer outside the training domain: HL7 v3 ObservationInterpretation
#: EX, "outside threshold" (a result outside the inclusion range of the protocol it is reported under).
INTERPRETATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
OUT_OF_DOMAIN_INTERPRETATION = ("EX", "outside threshold")

#: preliminary: AI output nobody reviewed; final: a reviewer confirmed it; corrected: a reviewer changed a
#: final report (HL7 result status P, F, C; FHIR status preliminary, final, corrected).
ResultStatus = Literal["preliminary", "final", "corrected"]
#: HL7 v2.5 OBR-25 / OBX-11 of each status (table 0123 / 0085).
HL7_STATUS = {"preliminary": "P", "final": "F", "corrected": "C"}
#: The longest entity identifier of OBR-3 (EI, 22 characters in v2.5) beside "^ALLXAI".
MAX_FILLER_CHARS = 22 - len("^ALLXAI")


#: The FHIR code system of the stable class codes (HL7 uses ``HL7_LOCAL_SYSTEM``); see ``lis.toml``.
FHIR_CLASS_SYSTEM = "urn:allxai:cell-class"


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
    reviewer: Reviewer | None = None
    overlay_reference: str = ""
    #: Images that could not be classified (a single image's failure, or some cells of a specimen).
    failures: tuple[Failure, ...] = ()
    #: A corrected report's changes, and the reviewer's reason in words.
    corrections: tuple[Correction, ...] = ()
    correction_note: str = ""
    config: LisConfig = field(default_factory=default_config)

    def __post_init__(self) -> None:
        if (
            self.classification is None
            and self.explanation is None
            and self.specimen is None
            and not self.failures
        ):
            raise ValueError(
                "a LabReport needs a classification, an explanation, a specimen result or a failure"
            )
        for name in ("observed_at", "issued_at"):
            moment = getattr(self, name)
            if moment is not None and moment.tzinfo is None:
                # A naive time in a lab record is ambiguous across sites; refuse it rather than guess a zone.
                raise ValueError(f"{name} must carry a time zone")
        if self.status != "preliminary" and self.reviewer is None:
            # AI output is final only once a person has confirmed it, and the report must say who.
            raise ValueError(
                f"a {self.status} report needs a reviewer: the person who confirmed the AI result"
            )
        if self.corrections and self.status != "corrected":
            raise ValueError("corrections belong in a corrected report")
        self._check_corrections()

    def _check_corrections(self) -> None:
        """Refuse a correction of a cell the report lacks, or one whose label is not the class the report
        carries (the caller relabels first): either would send a note that contradicts the coded result."""
        cells = self.specimen.cells if self.specimen is not None else []
        for change in self.corrections:
            where = "the image" if change.cell == 0 else f"cell {change.cell}"
            if change.cell == 0:
                cell = self.cell
            else:
                cell = cells[change.cell - 1] if 1 <= change.cell <= len(cells) else None
            if cell is None:
                raise ValueError(f"a correction of {where}, which the report does not carry")
            if cell.label != change.label:
                raise ValueError(
                    f"the correction of {where} says {change.label!r} but the report's class is "
                    f"{cell.label!r}: relabel the classification before building the report"
                )

    @property
    def reviewed_by(self) -> str:
        """The reviewer in words (empty for a preliminary report)."""
        return self.reviewer.display if self.reviewer is not None else ""

    @property
    def hl7_status(self) -> str:
        """OBR-25 and OBX-11: P, F or C; X when nothing could be classified at all."""
        if self.cell is None and self.specimen is None:
            return "X"
        return HL7_STATUS[self.status]

    @property
    def filler_number(self) -> str:
        """allxai's id of this result in HL7 OBR-3 and ORC-3: the request id when it fits the 15
        characters beside ``^ALLXAI`` (v2.5 EI is 22), else ``H`` and 14 base32 characters of its SHA-256,
        so that a final or corrected report replaces the preliminary one (same OBR-3). The full request id
        travels in FHIR ``DiagnosticReport.identifier`` and in an OBX of HL7."""
        key = self.request_id or self.stable_id("result")
        if len(key) <= MAX_FILLER_CHARS and re.fullmatch(r"[A-Za-z0-9._-]+", key):
            return key
        digest = base64.b32encode(hashlib.sha256(key.encode()).digest()).decode("ascii")
        return "H" + digest[: MAX_FILLER_CHARS - 1]

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
        """A class's human name: the LIS configuration's, else the model card's."""
        coding = self.config.classes.get(label)
        return coding.display if coding is not None else self.model.display_name(label)

    def class_coding(self, label: str) -> Coding:
        """The stable code of a model class (``UnmappedClassError`` when the configuration lacks it)."""
        return self.config.class_coding(label)

    def score_code(self, label: str) -> tuple[str, str]:
        """The observation code of one class's probability."""
        coding = self.class_coding(label)
        return f"ALLXAI-P-{coding.code}", f"Probability of {coding.display}"

    def count_code(self, label: str) -> tuple[str, str]:
        """The observation code of the number of cells of one class in a specimen."""
        coding = self.class_coding(label)
        return f"ALLXAI-N-{coding.code}", f"Cells classified as {coding.display}"

    def stable_id(self, role: str) -> str:
        """A UUID fixed by this report and a role: rebuilding the same report gives the same identifiers."""
        observed = self.observed_at.isoformat() if self.observed_at is not None else ""
        parts = [self.request_id, self.specimen_id, self.order_id, observed, role]
        if not self.request_id and self.failures:
            # A report of failures only has no request id: its images' ids tell two such reports apart, so
            # the second never replaces the first (same filler number, same FHIR identifiers).
            parts.append("failed:" + ",".join(sorted(f"{f.image_id}@{f.digest}" for f in self.failures)))
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"urn:allxai:{'|'.join(parts)}"))

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
            return f"{made}; reviewed and confirmed by {self.reviewed_by}."
        if self.status == "corrected":
            changes = "; ".join(
                f"{'the image' if c.cell == 0 else f'cell {c.cell}'} changed from {self.display(c.ai_label)} "
                f"to {self.display(c.label)}"
                for c in self.corrections
            )
            reason = f" Reason: {self.correction_note.strip()}." if self.correction_note.strip() else ""
            what = f": {changes}." if changes else "."
            return f"{made}; corrected by {self.reviewed_by}{what}{reason}"
        return f"{made} without human review; a qualified person must confirm it before clinical use."
