"""FHIR R4 resources from allxai results: a Bundle of a DiagnosticReport, its Observations and the Device.

fhir.resources 8 ships FHIR R5 as its default package plus R4B and STU3, but no R4 package; we use R4B,
which is wire-compatible with R4 for every resource used here (Bundle, DiagnosticReport, Observation,
Device, Specimen, Patient, Provenance). Each resource is built as a fhir.resources model, so building the
bundle validates it.

AI transparency follows HL7's AI Transparency on FHIR IG: every generated resource carries the security
label AIAST ("Artificial Intelligence asserted") in ``meta.security``, every Observation names the model
as its ``device``, and a Provenance records the Device as the author of the report and its Observations.

Each classification says whether the image lies inside the model's training domain (see
``allxai.lis._fhir_resources``: an interpretation EX and a note outside it, a note when the model has no
check) and gives its conformal prediction set. A specimen adds Observations of the cells counted in the blast
fraction (those inside the domain), the cells outside it, the ambiguous ones, and whether the specimen needs
review (a boolean, with the reason as a note). The report's ``conclusion`` ends with what must be read first.

The resources themselves are built in ``allxai.lis._fhir_resources``; this module assembles the bundle.
"""

from __future__ import annotations

import base64
import math
from typing import Any

from fhir.resources.R4B.bundle import Bundle

from allxai.lis._fhir_resources import (
    HEMATOLOGY,
    UCUM,
    Resources,
    ai_security_label,
    concept,
    placer_order,
)
from allxai.lis._gate_notes import (
    specimen_notes,
)
from allxai.lis._report import (
    CODE_AMBIGUOUS,
    CODE_BLAST,
    CODE_COUNTED,
    CODE_OUT_OF_DOMAIN,
    CODE_OVERLAY,
    CODE_REVIEW,
    CODE_TOTAL,
    FHIR_LOCAL_SYSTEM,
    SERVICE_CODE,
    SERVICE_TEXT,
    LabReport,
    code_token,
)


def _cells(count: int) -> dict[str, Any]:
    return {"valueQuantity": {"value": count, "unit": "cells", "system": UCUM, "code": "{cells}"}}


__all__ = ["UCUM", "ai_security_label", "build_bundle", "parse_bundle", "to_fhir_json"]

#: FHIR's code system of reasons for a missing value.
_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"


def build_bundle(report: LabReport) -> Bundle:
    """The report as a FHIR R4 (R4B models) collection Bundle, validated by fhir.resources."""
    r = Resources(report)
    results: list[dict[str, str]] = []
    if report.cell is not None:
        results.append(r.cell(report.cell, "cell", report.cell.image_id))
    if report.explanation is not None:
        e = report.explanation
        r2 = "undefined" if math.isnan(e.score) else f"{e.score:.3f}"  # one sample has no R²
        note = (
            f"LIME explanation of {report.display(e.label)}: {e.num_samples} samples, seed {e.seed}, "
            f"surrogate R2 {r2}, top superpixels {', '.join(str(s) for s in e.top_segments)}"
        )
        quality = [
            {
                "code": concept((f"ALLXAI-Q-{code_token(name)}", f"Explanation quality: {name}")),
                "valueQuantity": {"value": round(float(figure), 6)},
            }
            for name, figure in e.quality.items()
        ]
        value = {"valueString": f"superpixels {', '.join(str(s) for s in e.top_segments)}"}
        notes = [note, *(f"Warning: {w}" for w in e.warnings)]
        results.append(r.observation("explanation", CODE_OVERLAY, value, quality, notes))
    if report.specimen is not None:
        s = report.specimen
        for label, count in s.counts.items():
            code = report.count_code(label)
            results.append(r.observation(f"count:{label}", code, _cells(count)))
        results.append(r.observation("total", CODE_TOTAL, _cells(len(s.cells))))
        results.append(r.observation("counted", CODE_COUNTED, _cells(s.counted_cells)))
        results.append(r.observation("out-of-domain", CODE_OUT_OF_DOMAIN, _cells(s.out_of_domain)))
        results.append(r.observation("ambiguous", CODE_AMBIGUOUS, _cells(s.ambiguous)))
        blast = {"value": round(100.0 * s.blast_fraction, 4), "unit": "%", "system": UCUM, "code": "%"}
        review = ", ".join(str(i + 1) for i in s.review_first[:10])
        notes = specimen_notes(s)
        if review:
            notes.append(
                f"Cells to review first (outside the training domain, then least confident): {review}"
            )
        fraction: dict[str, Any] = {"valueQuantity": blast}
        if not s.counted_cells:
            # No cell could be judged: the reason, never a "0 %" a LIS could file.
            fraction = {"dataAbsentReason": {"coding": [{"system": _ABSENT, "code": "not-performed"}]}}
            notes.insert(0, "No blast fraction: no cell lies inside the model's training domain.")
        results.append(r.observation("blast", CODE_BLAST, fraction, note=notes))
        why = (
            [f"Needs review: {s.review_reason or 'the gateway asks for a review'}"] if s.needs_review else []
        )
        results.append(r.observation("review", CODE_REVIEW, {"valueBoolean": s.needs_review}, note=why))
        for index, cell in enumerate(s.cells):
            results.append(r.cell(cell, f"specimen-cell:{index}", cell.image_id, full=False))

    diagnostic: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "meta": {"security": [ai_security_label()]},
        "status": report.status,
        "category": [HEMATOLOGY],
        "code": {
            "coding": [{"system": FHIR_LOCAL_SYSTEM, "code": SERVICE_CODE, "display": SERVICE_TEXT}],
            "text": SERVICE_TEXT,
        },
        **r.effective,
        "issued": r.issued,
        "result": results,
        "conclusion": " ".join([report.ai_note(), *report.warnings()]),
    }
    if report.request_id:
        # allxai's own id of this result (HL7's filler number); the LIS's ids go in basedOn and Specimen.
        diagnostic["identifier"] = [{"system": "urn:allxai:request", "value": report.request_id}]
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
    report_ref = r.add(diagnostic, "report")
    r.add(
        {
            "resourceType": "Provenance",
            "target": [report_ref, *results],
            "recorded": r.issued,
            "agent": [
                {
                    "type": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                "code": "author",
                                "display": "Author",
                            }
                        ]
                    },
                    "who": r.device,
                }
            ],
        },
        "provenance",
    )
    return Bundle.model_validate(
        {
            "resourceType": "Bundle",
            "identifier": {"system": "urn:allxai:bundle", "value": report.stable_id("bundle")},
            "type": "collection",
            "timestamp": r.issued,
            "entry": r.entries,
        }
    )


def to_fhir_json(report: LabReport, indent: int | None = 2) -> str:
    """The report's Bundle as FHIR JSON."""
    return str(build_bundle(report).model_dump_json(indent=indent, exclude_none=True, by_alias=True))


def parse_bundle(text: str) -> Bundle:
    """Parse (and so validate) a Bundle from FHIR JSON."""
    return Bundle.model_validate_json(text)
