"""The Observations of the FHIR bundle (see ``allxai.lis.fhir``) and the collector of its entries.

A cell's Observation says how far the model is entitled to judge the image: outside the training domain it
carries the ``interpretation`` EX ("outside threshold", HL7 v3 ObservationInterpretation) and a note that
the class is not for diagnosis; its components give the domain check (IN, OUT, or NONE when the model has
none, which gets no interpretation), the domain score against its threshold (``referenceRange.high``), the
classes of the conformal prediction set (one component each, most probable first) and the set's coverage.

Every Observation has an identifier of ours (``systems.observation``, a UUID fixed by the report and the
Observation's role, the same in the preliminary, final and corrected bundles) and is sent as a conditional
update on it; it names the laboratory as ``performer``, the model as ``device``, and has a narrative.
An image that could not be classified is an Observation of the class too, ``cancelled``, with the
data-absent reason ``error`` and the problem as a note.
"""

from __future__ import annotations

from typing import Any

from allxai.client import ClassifyResult
from allxai.lis import _fhir_parties as parties
from allxai.lis._fhir_narrative import cell_words, observation_narrative
from allxai.lis._fhir_transaction import conditional_update, entry, stable_id
from allxai.lis._gate_notes import (
    cell_flags,
    domain_code,
    domain_note,
    finite_gate,
    set_note,
)
from allxai.lis._report import (
    AIAST_CODE,
    AIAST_DISPLAY,
    AIAST_SYSTEM,
    CODE_BLAST,
    CODE_CLASS,
    CODE_CONFIDENCE,
    CODE_COVERAGE,
    CODE_DOMAIN,
    CODE_DOMAIN_SCORE,
    CODE_SET,
    FHIR_CLASS_SYSTEM,
    FHIR_LOCAL_SYSTEM,
    INTERPRETATION_SYSTEM,
    OUT_OF_DOMAIN_INTERPRETATION,
    SENDING_APPLICATION,
    Correction,
    Failure,
    LabReport,
    note_text,
)

UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
#: FHIR's code system of reasons for a missing value.
ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
_CATEGORY = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "laboratory",
            "display": "Laboratory",
        }
    ]
}
HEMATOLOGY = {
    "coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "HM", "display": "Hematology"}
    ]
}
#: An Observation's code: a local (code, display) pair, or a whole CodeableConcept (the blast's LOINC).
Code = tuple[str, str] | dict[str, Any]


def ai_security_label() -> dict[str, str]:
    """The AIAST coding for ``meta.security``."""
    return {"system": AIAST_SYSTEM, "code": AIAST_CODE, "display": AIAST_DISPLAY}


def placer_order(report: LabReport) -> dict[str, Any]:
    """A logical reference to the LIS's order by its placer number (HL7 OBR-2) in the configured order
    system; no ServiceRequest is made. A namespace other than ours is named as the assigner."""
    placer = {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                "code": "PLAC",
                "display": "Placer Identifier",
            }
        ]
    }
    identifier: dict[str, Any] = {
        "type": placer,
        "system": report.config.systems.order,
        "value": report.order_id,
    }
    if report.order_namespace and report.order_namespace != SENDING_APPLICATION:
        identifier["assigner"] = {"display": report.order_namespace}
    return {"type": "ServiceRequest", "identifier": identifier}


def concept(code: tuple[str, str]) -> dict[str, Any]:
    """A local code of ours as a CodeableConcept."""
    return {"coding": [{"system": FHIR_LOCAL_SYSTEM, "code": code[0], "display": code[1]}], "text": code[1]}


def blast_concept(report: LabReport) -> dict[str, Any]:
    """The blast percentage's code: the configured LOINC first, our local code second; local alone when
    ``lis.toml`` has no LOINC code for it."""
    local = concept(CODE_BLAST)
    loinc = report.config.blast_loinc
    if loinc is None:
        return local
    return {
        "coding": [{"system": LOINC, "code": loinc.code, "display": loinc.display}, *local["coding"]],
        "text": loinc.display,
    }


def fraction(value: float) -> dict[str, Any]:
    """A share (0 to 1) as a UCUM quantity of unit 1."""
    return {"value": round(float(value), 6), "unit": "1", "system": UCUM, "code": "1"}


def out_of_domain_interpretation() -> dict[str, Any]:
    """The interpretation of an answer outside the training domain (v3 EX, with the reason in words)."""
    code, display = OUT_OF_DOMAIN_INTERPRETATION
    return {
        "coding": [{"system": INTERPRETATION_SYSTEM, "code": code, "display": display}],
        "text": "Outside the model's training domain: not for diagnosis",
    }


def correction_note(report: LabReport, correction: Correction) -> str:
    """What a reviewer changed on one cell, with both classes' names and codes."""

    def named(label: str) -> str:
        coding = report.config.classes.get(label)
        return f"{report.display(label)} ({coding.code})" if coding is not None else report.display(label)

    what = "the image" if correction.cell == 0 else f"cell {correction.cell}"
    reason = report.correction_note.strip()
    return note_text(
        f"Corrected by {report.reviewed_by}: the AI model classified {what} as {named(correction.ai_label)}; "
        f"the reviewer's class is {named(correction.label)}." + (f" Reason: {reason}." if reason else "")
    )


class Resources:
    """Collects the bundle's entries (each with its request) and hands out their urn:uuid references.

    Made with the report, it adds the resources the results point at: the Device, the Patient and the
    Specimen when the LIS gave their ids, the laboratory, and the reviewer of a final or corrected report.
    """

    def __init__(self, report: LabReport) -> None:
        self.report = report
        self.entries: list[dict[str, Any]] = []
        self.issued = report.issued_at.isoformat()
        # The LIS's time of collection or imaging when it gave one, else the time of the analysis: FHIR
        # servers and viewers sort and filter results by effective time (the narrative says which it is).
        moment = report.observed_at if report.observed_at is not None else report.issued_at
        self.effective = {"effectiveDateTime": moment.isoformat()}
        self.device = self.add(*parties.device(report), "device")
        self.patient = self.add(*parties.patient(report), "patient") if report.patient_id else None
        self.specimen = (
            self.add(*parties.specimen(report, self.patient), "specimen") if report.specimen_id else None
        )
        self.laboratory = self.add(*parties.laboratory(report), "laboratory")
        reviewer = parties.practitioner(report)
        self.practitioner = self.add(*reviewer, "practitioner") if reviewer is not None else None
        self.corrections = {c.cell: c for c in report.corrections}

    def add(
        self, resource: dict[str, Any], request: dict[str, str], role: str, uid: str = ""
    ) -> dict[str, str]:
        """Add a resource under a stable urn:uuid (``uid``, else one fixed by ``role``); its Reference."""
        full_url = f"urn:uuid:{uid or stable_id(self.report, role)}"
        self.entries.append(entry(full_url, resource, request))
        return {"reference": full_url}

    def observation(
        self,
        role: str,
        code: Code,
        value: dict[str, Any],
        components: list[dict[str, Any]] | None = None,
        note: str | list[str] = "",
        interpretation: list[dict[str, Any]] | None = None,
        *,
        identifiers: list[dict[str, str]] | None = None,
        summary: list[str] | None = None,
        status: str = "",
    ) -> dict[str, str]:
        """Add one Observation: AI-labelled, made by the Device, performed by the laboratory, about the
        specimen, with its identifier, request and narrative (``summary`` leads it; the value by default)."""
        report = self.report
        system, key = report.config.systems.observation, stable_id(report, role)
        resource: dict[str, Any] = {
            "resourceType": "Observation",
            "meta": {"security": [ai_security_label()]},
            "identifier": [{"system": system, "value": key}, *(identifiers or [])],
            "status": status or report.status,
            "category": [_CATEGORY],
            "code": concept(code) if isinstance(code, tuple) else code,
            **self.effective,
            "issued": self.issued,
            "performer": [self.laboratory],
            "device": self.device,
            **value,
        }
        if self.patient is not None:
            resource["subject"] = self.patient
        if self.specimen is not None:
            resource["specimen"] = self.specimen
        if interpretation:
            resource["interpretation"] = interpretation
        if components:
            resource["component"] = components
        texts = [note_text(t) for t in ([note] if isinstance(note, str) else note) if t]
        if texts:
            resource["note"] = [{"text": text} for text in texts]
        resource["text"] = observation_narrative(report, resource, summary or [], texts)
        return self.add(resource, conditional_update("Observation", system, key), role)

    def _class(self, label: str) -> dict[str, Any]:
        """A class of the model as a CodeableConcept."""
        coding = self.report.class_coding(label)
        return {
            "coding": [{"system": FHIR_CLASS_SYSTEM, "code": coding.code, "display": coding.display}],
            "text": coding.display,
        }

    def _gate(self, cell: ClassifyResult) -> list[dict[str, Any]]:
        """The components of the domain check (coded, score against threshold) and of the prediction set."""
        parts: list[dict[str, Any]] = [
            {"code": concept(CODE_DOMAIN), "valueCodeableConcept": concept(domain_code(cell))}
        ]
        if cell.domain_score is not None:
            score: dict[str, Any] = {
                "code": concept(CODE_DOMAIN_SCORE),
                "valueQuantity": {"value": round(cell.domain_score, 6)},
            }
            if cell.domain_threshold is not None:
                high = {"value": round(cell.domain_threshold, 6)}
                score["referenceRange"] = [{"high": high, "text": "calibrated domain threshold"}]
            if cell.out_of_domain:
                score["interpretation"] = [out_of_domain_interpretation()]
            parts.append(score)
        parts += [
            {"code": concept(CODE_SET), "valueCodeableConcept": self._class(label)}
            for label in cell.prediction_set
        ]
        if cell.coverage is not None:
            parts.append({"code": concept(CODE_COVERAGE), "valueQuantity": fraction(cell.coverage)})
        return parts

    def cell(
        self, cell: ClassifyResult, role: str, image_id: str = "", *, number: int = 0, full: bool = True
    ) -> dict[str, str]:
        """The predicted class as a CodeableConcept; the confidence, every class's probability, the domain
        check and the prediction set as parts; the interpretation EX outside the training domain.

        ``number`` is the cell's in a correction (0: the single image, else the specimen's 1-based cell);
        a corrected cell's note says what the model said and what the reviewer says. ``full`` (a single
        image) notes the domain check and the set in words; a specimen's cell has a note only when outside
        the domain or ambiguous (the specimen's Observations say the rest).
        """
        report = self.report
        cell = finite_gate(cell)
        value = {"valueCodeableConcept": self._class(cell.label)}
        components = [{"code": concept(CODE_CONFIDENCE), "valueQuantity": fraction(cell.confidence)}]
        components += [
            {"code": concept(report.score_code(name)), "valueQuantity": fraction(score)}
            for name, score in cell.scores.items()
        ]
        components += self._gate(cell)
        if full:
            notes = [domain_note(cell), set_note(cell, report.display)]
        else:
            notes = [cell_flags(cell, report.display)]
        correction = self.corrections.get(number)
        if correction is not None:
            notes.insert(0, correction_note(report, correction))
        interpretation = [out_of_domain_interpretation()] if cell.out_of_domain else None
        return self.observation(
            role,
            CODE_CLASS,
            value,
            components,
            notes,
            interpretation,
            identifiers=[{"system": "urn:allxai:image", "value": image_id}] if image_id else None,
            summary=cell_words(report, cell),
        )

    def failure(self, failure: Failure, role: str) -> dict[str, str]:
        """An image that could not be classified: the class Observation, ``cancelled``, without a value."""
        problem = f"{failure.code}: {failure.message}" if failure.code else failure.message
        absent = {
            "dataAbsentReason": {
                "coding": [{"system": ABSENT, "code": "error", "display": "Error"}],
                "text": note_text(f"Not classified: {problem}"),
            }
        }
        what = f"The image {failure.image_id}" if failure.image_id else "The image"
        return self.observation(
            role,
            CODE_CLASS,
            absent,
            note=f"{what} could not be classified ({problem}); no class is reported for it.",
            identifiers=[{"system": "urn:allxai:image", "value": failure.image_id}]
            if failure.image_id
            else None,
            status="cancelled",
        )
