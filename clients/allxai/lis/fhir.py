"""FHIR R4 resources from allxai results: a transaction Bundle of a DiagnosticReport, its Observations, the
Device, the laboratory, the reviewer and a Provenance, ready to POST to a FHIR server's base URL
(``allxai.lis.fhir_post``); ``docs/lis-fhir.md`` is the profile.

fhir.resources 8 ships FHIR R5 as its default package plus R4B and STU3, but no R4 package; we use R4B,
which is wire-compatible with R4 for every resource used here (Bundle, DiagnosticReport, Observation,
Device, Specimen, Patient, Organization, Practitioner, Provenance). Each resource is built as a
fhir.resources model, so building the bundle validates it.

The bundle is a ``transaction``: entries keep their ``urn:uuid`` fullUrls, which the server resolves to the
ids it stores. Patient, Specimen, Device, Organization and Practitioner are conditional creates on their
business identifiers; the DiagnosticReport and each Observation are conditional updates on identifiers
stable across the report's statuses, so a final or corrected report replaces the preliminary one and a
bundle sent twice is stored once (see ``allxai.lis._fhir_transaction``). The identifier systems are the LIS
team's, from ``lis.toml`` (``report.config.systems``). ``Bundle.identifier`` differs between the
preliminary, final and corrected bundles of a report and is the key of a bundle in an outbox.

AI transparency follows HL7's AI Transparency on FHIR IG: every generated resource carries the security
label AIAST ("Artificial Intelligence asserted") in ``meta.security``, every Observation names the model
as its ``device``, and a Provenance records the Device as the author of the report and its Observations
(and the reviewer, once there is one, as the verifier). Every resource has a generated narrative.

Each classification says whether the image lies inside the model's training domain (see
``allxai.lis._fhir_resources``: an interpretation EX and a note outside it, a note when the model has no
check) and gives its conformal prediction set. A specimen adds Observations of the cells counted in the blast
fraction (those inside the domain), the cells outside it, the ambiguous ones, and whether the specimen needs
review (a boolean, with the reason as a note). An image that could not be classified is a ``cancelled``
Observation with a data-absent reason. The report's ``conclusion`` ends with what must be read first.
"""

from __future__ import annotations

import math
from typing import Any

from fhir.resources.R4B.bundle import Bundle

from allxai.lis._fhir_report import diagnostic_report, provenance
from allxai.lis._fhir_resources import (
    ABSENT,
    UCUM,
    Resources,
    ai_security_label,
    blast_concept,
    concept,
)
from allxai.lis._fhir_transaction import BUNDLE_SYSTEM, bundle_key
from allxai.lis._gate_notes import specimen_notes
from allxai.lis._report import (
    CODE_AMBIGUOUS,
    CODE_COUNTED,
    CODE_OUT_OF_DOMAIN,
    CODE_OVERLAY,
    CODE_REVIEW,
    CODE_TOTAL,
    LabReport,
    code_token,
)

__all__ = [
    "BUNDLE_SYSTEM",
    "UCUM",
    "ai_security_label",
    "build_bundle",
    "bundle_key",
    "parse_bundle",
    "to_fhir_json",
]


def _cells(count: int) -> dict[str, Any]:
    return {"valueQuantity": {"value": count, "unit": "cells", "system": UCUM, "code": "{cells}"}}


def _explanation(r: Resources) -> dict[str, str] | None:
    e = r.report.explanation
    if e is None:
        return None
    r2 = "undefined" if math.isnan(e.score) else f"{e.score:.3f}"  # one sample has no R²
    note = (
        f"LIME explanation of {r.report.display(e.label)}: {e.num_samples} samples, seed {e.seed}, "
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
    return r.observation("explanation", CODE_OVERLAY, value, quality, notes)


def _specimen(r: Resources) -> list[dict[str, str]]:
    report, s = r.report, r.report.specimen
    if s is None:
        return []
    results = [
        r.observation(f"count:{label}", report.count_code(label), _cells(n)) for label, n in s.counts.items()
    ]
    results.append(r.observation("total", CODE_TOTAL, _cells(len(s.cells))))
    results.append(r.observation("counted", CODE_COUNTED, _cells(s.counted_cells)))
    results.append(r.observation("out-of-domain", CODE_OUT_OF_DOMAIN, _cells(s.out_of_domain)))
    results.append(r.observation("ambiguous", CODE_AMBIGUOUS, _cells(s.ambiguous)))
    blast = {"value": round(100.0 * s.blast_fraction, 4), "unit": "%", "system": UCUM, "code": "%"}
    review = ", ".join(str(i + 1) for i in s.review_first[:10])
    notes = specimen_notes(s)
    if review:
        notes.append(f"Cells to review first (outside the training domain, then least confident): {review}")
    fraction: dict[str, Any] = {"valueQuantity": blast}
    if not s.counted_cells:
        # No cell could be judged: the reason, never a "0 %" a LIS could file.
        fraction = {"dataAbsentReason": {"coding": [{"system": ABSENT, "code": "not-performed"}]}}
        notes.insert(0, "No blast fraction: no cell lies inside the model's training domain.")
    results.append(r.observation("blast", blast_concept(report), fraction, note=notes))
    why = [f"Needs review: {s.review_reason or 'the gateway asks for a review'}"] if s.needs_review else []
    results.append(r.observation("review", CODE_REVIEW, {"valueBoolean": s.needs_review}, note=why))
    for index, cell in enumerate(s.cells):
        results.append(r.cell(cell, f"specimen-cell:{index}", cell.image_id, number=index + 1, full=False))
    return results


def _failures(r: Resources) -> list[dict[str, str]]:
    seen: dict[str, int] = {}
    results = []
    for failure in r.report.failures:
        # The role fixes the Observation's identifier: the image's id, numbered should one fail twice.
        n = seen[failure.image_id] = seen.get(failure.image_id, 0) + 1
        role = f"failure:{failure.image_id}" + (f":{n}" if n > 1 else "")
        results.append(r.failure(failure, role))
    return results


def build_bundle(report: LabReport) -> Bundle:
    """The report as a FHIR R4 (R4B models) transaction Bundle, validated by fhir.resources.

    ``ValueError`` for a correction of a cell the report lacks; ``UnmappedClassError`` for a model class
    without a code in the LIS configuration.
    """
    r = Resources(report)
    results: list[dict[str, str]] = []
    if report.cell is not None:
        results.append(r.cell(report.cell, "cell", report.cell.image_id, number=0))
    explanation = _explanation(r)
    if explanation is not None:
        results.append(explanation)
    results += _specimen(r)
    results += _failures(r)
    report_ref = diagnostic_report(r, results)
    provenance(r, [report_ref, *results])
    return Bundle.model_validate(
        {
            "resourceType": "Bundle",
            "identifier": {"system": BUNDLE_SYSTEM, "value": bundle_key(report)},
            "type": "transaction",
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
