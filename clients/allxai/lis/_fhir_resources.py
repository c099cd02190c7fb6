"""The resources of the FHIR bundle (see ``allxai.lis.fhir``): Device, Patient, Specimen, Observations.

A cell's Observation says how far the model is entitled to judge the image: outside the training domain it
carries the ``interpretation`` EX ("outside threshold", HL7 v3 ObservationInterpretation) and a note that
the class is not for diagnosis; its components give the domain check (IN, OUT, or NONE when the model has
none, which gets no interpretation), the domain score against its threshold (``referenceRange.high``), the
classes of the conformal prediction set (one component each, most probable first) and the set's coverage.
"""

from __future__ import annotations

from typing import Any

from allxai.client import ClassifyResult
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
    LabReport,
    code_token,
    note_text,
)

UCUM = "http://unitsofmeasure.org"
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


def ai_security_label() -> dict[str, str]:
    """The AIAST coding for ``meta.security``."""
    return {"system": AIAST_SYSTEM, "code": AIAST_CODE, "display": AIAST_DISPLAY}


def placer_order(report: LabReport) -> dict[str, Any]:
    """A logical reference to the LIS's order by its placer number (HL7 OBR-2); no ServiceRequest is made."""
    placer = {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                "code": "PLAC",
                "display": "Placer Identifier",
            }
        ]
    }
    namespace = report.order_namespace or SENDING_APPLICATION
    return {
        "type": "ServiceRequest",
        "identifier": {
            "type": placer,
            "system": f"urn:allxai:placer:{code_token(namespace)}",
            "value": report.order_id,
        },
    }


def concept(code: tuple[str, str]) -> dict[str, Any]:
    return {"coding": [{"system": FHIR_LOCAL_SYSTEM, "code": code[0], "display": code[1]}], "text": code[1]}


def fraction(value: float) -> dict[str, Any]:
    return {"value": round(float(value), 6), "unit": "1", "system": UCUM, "code": "1"}


def out_of_domain_interpretation() -> dict[str, Any]:
    """The interpretation of an answer outside the training domain (v3 EX, with the reason in words)."""
    code, display = OUT_OF_DOMAIN_INTERPRETATION
    return {
        "coding": [{"system": INTERPRETATION_SYSTEM, "code": code, "display": display}],
        "text": "Outside the model's training domain: not for diagnosis",
    }


class Resources:
    """Collects the bundle's entries and hands out their urn:uuid references."""

    def __init__(self, report: LabReport) -> None:
        self.report = report
        self.entries: list[dict[str, Any]] = []
        # Only a time the LIS gave is an effective time; when allxai made the result is ``issued``.
        self.effective = {"effectiveDateTime": report.observed_at.isoformat()} if report.observed_at else {}
        self.issued = report.issued_at.isoformat()
        self.device = self.add(self._device(), "device")
        self.patient = self.add(self._patient(), "patient") if report.patient_id else None
        self.specimen = self.add(self._specimen(), "specimen") if report.specimen_id else None

    def add(self, resource: dict[str, Any], role: str) -> dict[str, str]:
        """Add a resource under a stable urn:uuid and return a Reference to it."""
        full_url = f"urn:uuid:{self.report.stable_id(role)}"
        self.entries.append({"fullUrl": full_url, "resource": resource})
        return {"reference": full_url}

    def _device(self) -> dict[str, Any]:
        model = self.report.model
        version = str(self.report.model_version)
        device: dict[str, Any] = {
            "resourceType": "Device",
            "identifier": [{"system": "urn:allxai:model", "value": f"{model.name}:{version}"}],
            "status": "active",
            "manufacturer": "allxai",
            "deviceName": [{"name": model.name, "type": "model-name"}],
            "modelNumber": model.name,
            "version": [{"value": version}],
            "type": {"text": "AI image classifier (convolutional neural network) with LIME explanations"},
        }
        notes = [
            f"Classes: {', '.join(model.class_names)}; input {model.input_size[0]}x{model.input_size[1]}"
        ]
        test = model.card.get("metrics", {}).get("test")
        if isinstance(test, dict) and "accuracy" in test:
            notes.append(f"Held-out test accuracy in the model card: {float(test['accuracy']):.3f}")
        device["note"] = [{"text": n} for n in notes]
        return device

    def _patient(self) -> dict[str, Any]:
        identifier: dict[str, Any] = {"value": self.report.patient_id}
        if self.report.patient_id_authority:
            identifier["assigner"] = {"display": self.report.patient_id_authority}
        return {"resourceType": "Patient", "identifier": [identifier]}

    def _specimen(self) -> dict[str, Any]:
        specimen: dict[str, Any] = {
            "resourceType": "Specimen",
            # The LIS's own id of the specimen; made only when the LIS gave one.
            "identifier": [{"system": "urn:allxai:specimen", "value": self.report.specimen_id}],
            "accessionIdentifier": {"value": self.report.specimen_id},
        }
        if self.patient is not None:
            specimen["subject"] = self.patient
        return specimen

    def observation(
        self,
        role: str,
        code: tuple[str, str],
        value: dict[str, Any],
        components: list[dict[str, Any]] | None = None,
        note: str | list[str] = "",
        interpretation: list[dict[str, Any]] | None = None,
    ) -> dict[str, str]:
        """Add one Observation: AI-labelled, made by the Device, about the specimen."""
        resource: dict[str, Any] = {
            "resourceType": "Observation",
            "meta": {"security": [ai_security_label()]},
            "status": self.report.status,
            "category": [_CATEGORY],
            "code": concept(code),
            **self.effective,
            "issued": self.issued,
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
        texts = [note] if isinstance(note, str) else note
        if any(texts):
            resource["note"] = [{"text": note_text(text)} for text in texts if text]
        return self.add(resource, role)

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
        self, cell: ClassifyResult, role: str, image_id: str = "", *, full: bool = True
    ) -> dict[str, str]:
        """The predicted class as a CodeableConcept; the confidence, every class's probability, the domain
        check and the prediction set as parts; the interpretation EX outside the training domain.

        ``full`` (a single image) notes the domain check and the set in words; a specimen's cell has a note
        only when outside the domain or ambiguous (the specimen's Observations say the rest).
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
        interpretation = [out_of_domain_interpretation()] if cell.out_of_domain else None
        reference = self.observation(role, CODE_CLASS, value, components, notes, interpretation)
        if image_id:
            self.entries[-1]["resource"]["identifier"] = [{"system": "urn:allxai:image", "value": image_id}]
        return reference
