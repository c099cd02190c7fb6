"""The DiagnosticReport and the Provenance of the FHIR bundle (see ``allxai.lis.fhir``).

The DiagnosticReport has the report's status (``cancelled`` when nothing could be classified, only failures),
the laboratory as ``performer``, the reviewer of a final or corrected report as ``resultsInterpreter``, and a
conclusion that ends with what must be read first. The Provenance names the model's Device as the author of
the report and its Observations and, once a person has reviewed it, the Practitioner as the verifier.
"""

from __future__ import annotations

import base64
from typing import Any

from allxai.client.words import percent
from allxai.lis._fhir_narrative import ai_label, cell_words, narrative, status_words, when_words
from allxai.lis._fhir_resources import HEMATOLOGY, Resources, ai_security_label, placer_order
from allxai.lis._fhir_transaction import conditional_update, provenance_id, result_key, update_by_id
from allxai.lis._report import FHIR_LOCAL_SYSTEM, SERVICE_CODE, SERVICE_TEXT, LabReport, note_text

_PARTICIPANT = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"


def report_status(report: LabReport) -> str:
    """The DiagnosticReport's status: the report's, or ``cancelled`` when no image could be classified."""
    return "cancelled" if report.cell is None and report.specimen is None else report.status


def failures_sentence(report: LabReport) -> str:
    """The images that could not be classified, in one sentence (empty when there are none)."""
    if not report.failures:
        return ""
    listed = "; ".join(
        f"{f.image_id or 'an image'} ({f.code}: {f.message})" if f.code else f"{f.image_id} ({f.message})"
        for f in report.failures
    )
    count = len(report.failures)
    return note_text(f"{count} image{'' if count == 1 else 's'} could not be classified: {listed}.")


def _conclusion(report: LabReport) -> str:
    if report_status(report) == "cancelled":
        return note_text(f"Nothing could be classified. {failures_sentence(report)}")
    return " ".join(p for p in [report.ai_note(), *report.warnings(), failures_sentence(report)] if p)


def _specimen_words(report: LabReport) -> list[str]:
    s = report.specimen
    if s is None:
        return []
    counted = f"of the {s.counted_cells} cells counted" if s.counted_cells else ""
    blast = (
        f"blast fraction {percent(s.blast_fraction)} {counted}"
        if s.counted_cells
        else "no blast fraction (no cell lies inside the model's training domain)"
    )
    return [f"Specimen: {len(s.cells)} cells classified; {blast}."]


def _narrative(report: LabReport, status: str) -> dict[str, str]:
    cell = report.cell
    lines = [
        "Status: cancelled (nothing could be classified)."
        if status == "cancelled"
        else status_words(report, status),
        *(cell_words(report, cell) if cell is not None else []),
        *_specimen_words(report),
        failures_sentence(report),
        f"Performed by {report.config.laboratory.name}.",
        when_words(report),
        ai_label(report) if status == "cancelled" else report.ai_note(),
        *report.warnings(),
    ]
    return narrative(SERVICE_TEXT, lines)


def diagnostic_report(r: Resources, results: list[dict[str, str]]) -> dict[str, str]:
    """Add the DiagnosticReport of ``results`` (a conditional update on allxai's result id); its Reference."""
    report = r.report
    status = report_status(report)
    system, key = report.config.systems.result, result_key(report)
    diagnostic: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "meta": {"security": [ai_security_label()]},
        "text": _narrative(report, status),
        # allxai's own id of this result (HL7's filler number); the LIS's ids go in basedOn and Specimen.
        "identifier": [{"system": system, "value": key}],
        "status": status,
        "category": [HEMATOLOGY],
        "code": {
            "coding": [{"system": FHIR_LOCAL_SYSTEM, "code": SERVICE_CODE, "display": SERVICE_TEXT}],
            "text": SERVICE_TEXT,
        },
        **r.effective,
        "issued": r.issued,
        "performer": [r.laboratory],
        "result": results,
        "conclusion": _conclusion(report),
    }
    if r.practitioner is not None:
        diagnostic["resultsInterpreter"] = [r.practitioner]
    if report.order_id:
        diagnostic["basedOn"] = [placer_order(report)]
    if r.patient is not None:
        diagnostic["subject"] = r.patient
    if r.specimen is not None:
        diagnostic["specimen"] = [r.specimen]
    png = report.overlay_png
    if png is not None:
        diagnostic["presentedForm"] = [
            {
                "contentType": "image/png",
                "data": base64.b64encode(png).decode("ascii"),
                "title": "LIME explanation overlay: superpixels that support the predicted class",
                "creation": r.issued,
            }
        ]
    return r.add(diagnostic, conditional_update("DiagnosticReport", system, key), "report")


def _agent(code: str, display: str, who: dict[str, str]) -> dict[str, Any]:
    return {"type": {"coding": [{"system": _PARTICIPANT, "code": code, "display": display}]}, "who": who}


def provenance(r: Resources, targets: list[dict[str, str]]) -> None:
    """Add the Provenance of ``targets``: the Device authored them, the reviewer (if any) verified them.

    Its id is ours (R4 gives a Provenance no business identifier to match on), one per status and revision:
    sending the bundle again replaces it, while each review keeps a record of its own.
    """
    report = r.report
    uid = provenance_id(report)
    agents = [_agent("author", "Author", r.device)]
    words = [f"Authored by the AI model {report.model.name} version {report.model_version} (allxai)."]
    if r.practitioner is not None:
        agents.append(_agent("verifier", "Verifier", r.practitioner))
        words.append(f"Verified by {report.reviewed_by} (status {report.status}).")
    words.append(f"Recorded {r.issued}.")
    resource = {
        "resourceType": "Provenance",
        "id": uid,
        "text": narrative("Provenance of an AI result", words),
        "target": targets,
        "recorded": r.issued,
        "agent": agents,
    }
    r.add(resource, update_by_id("Provenance", uid), "provenance", uid=uid)
