"""The resources the results point at (see ``allxai.lis.fhir``): the model's Device, the Patient, the
Specimen, the laboratory's Organization and the reviewing Practitioner.

Each is a conditional create on its business identifier in the system ``lis.toml`` configures (see
``allxai.lis._fhir_transaction``): the LIS's own Patient, Specimen and Practitioner are found, not copied.
Each returns the resource and its request.
"""

from __future__ import annotations

from typing import Any

from allxai.lis._fhir_narrative import narrative
from allxai.lis._fhir_transaction import conditional_create
from allxai.lis._report import LabReport, code_token

Party = tuple[dict[str, Any], dict[str, str]]


def device(report: LabReport) -> Party:
    """The model, as the Device that authored the results (identifier ``<name>:<version>``)."""
    model = report.model
    version = str(report.model_version)
    system = report.config.systems.device
    value = f"{model.name}:{version}"
    notes = [f"Classes: {', '.join(model.class_names)}; input {model.input_size[0]}x{model.input_size[1]}"]
    test = model.card.get("metrics", {}).get("test")
    if isinstance(test, dict) and "accuracy" in test:
        notes.append(f"Held-out test accuracy in the model card: {float(test['accuracy']):.3f}")
    kind = "AI image classifier (convolutional neural network) with LIME explanations"
    resource: dict[str, Any] = {
        "resourceType": "Device",
        "text": narrative(f"AI model {model.name} version {version} (allxai)", [f"{kind}.", *notes]),
        "identifier": [{"system": system, "value": value}],
        "status": "active",
        "manufacturer": "allxai",
        "deviceName": [{"name": model.name, "type": "model-name"}],
        "modelNumber": model.name,
        "version": [{"value": version}],
        "type": {"text": kind},
        "note": [{"text": n} for n in notes],
    }
    return resource, conditional_create("Device", system, value)


def patient(report: LabReport) -> Party:
    """The LIS's patient, by its identifier only (allxai knows no name); the assigning authority as such."""
    system = report.config.systems.patient
    identifier: dict[str, Any] = {"system": system, "value": report.patient_id}
    words = [f"Identifier {report.patient_id} ({system})."]
    if report.patient_id_authority:
        identifier["assigner"] = {"display": report.patient_id_authority}
        words.append(f"Assigned by {report.patient_id_authority}.")
    resource = {
        "resourceType": "Patient",
        "text": narrative("Patient of the laboratory information system", words),
        "identifier": [identifier],
    }
    return resource, conditional_create("Patient", system, report.patient_id)


def specimen(report: LabReport, subject: dict[str, str] | None) -> Party:
    """The LIS's specimen (made only when the LIS gave its id), of the patient when known."""
    system = report.config.systems.specimen
    resource: dict[str, Any] = {
        "resourceType": "Specimen",
        "text": narrative(f"Specimen {report.specimen_id}", [f"The LIS's specimen id, in {system}."]),
        "identifier": [{"system": system, "value": report.specimen_id}],
        "accessionIdentifier": {"system": system, "value": report.specimen_id},
    }
    if subject is not None:
        resource["subject"] = subject
    return resource, conditional_create("Specimen", system, report.specimen_id)


def laboratory(report: LabReport) -> Party:
    """The performing laboratory. Without its own identifier in ``lis.toml`` it is identified by its name
    (made code-safe, e.g. ``Haematology_laboratory``) in the laboratory system, so that the conditional
    create still finds the one Organization made before rather than adding one per report."""
    lab = report.config.laboratory
    system = report.config.systems.laboratory
    value = lab.identifier or code_token(lab.name)
    resource = {
        "resourceType": "Organization",
        "text": narrative(
            lab.name, [f"The laboratory that performs the test; identifier {value} ({system})."]
        ),
        "identifier": [{"system": system, "value": value}],
        "active": True,
        "type": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/organization-type",
                        "code": "prov",
                        "display": "Healthcare Provider",
                    }
                ]
            }
        ],
        "name": lab.name,
    }
    return resource, conditional_create("Organization", system, value)


def practitioner(report: LabReport) -> Party | None:
    """The person who confirmed or corrected the report (None for a preliminary one, whoever is named: AI
    output nobody has confirmed has no interpreter)."""
    reviewer = report.reviewer
    if reviewer is None or report.status == "preliminary":
        return None
    system = report.config.systems.practitioner
    resource: dict[str, Any] = {
        "resourceType": "Practitioner",
        "text": narrative(
            reviewer.display, [f"Reviewer of AI results; identifier {reviewer.id} ({system})."]
        ),
        "identifier": [{"system": system, "value": reviewer.id}],
    }
    name: dict[str, Any] = {}
    if reviewer.family.strip():
        name["family"] = reviewer.family.strip()
    if reviewer.given.strip():
        # One entry: we cannot tell a prefix ("Dr") or a middle name from the given name in one string.
        name["given"] = [reviewer.given.strip()]
    if name:
        name["text"] = " ".join(p for p in (reviewer.given.strip(), reviewer.family.strip()) if p)
        resource["name"] = [name]
    return resource, conditional_create("Practitioner", system, reviewer.id)
