"""The narrative (``text``) of the bundle's resources: what a person reads when a FHIR server or viewer shows
one resource alone, without our codes. Every paragraph is escaped: class names, notes and identifiers come
from the model card, the gateway and the LIS, and must never become markup."""

from __future__ import annotations

from html import escape
from typing import Any

from allxai.client import ClassifyResult
from allxai.client.words import percent
from allxai.lis._gate_notes import domain_note
from allxai.lis._report import AIAST_CODE, AIAST_DISPLAY, LabReport

_XHTML = "http://www.w3.org/1999/xhtml"


def narrative(title: str, paragraphs: list[str]) -> dict[str, str]:
    """A generated narrative: the title in bold, then one paragraph each (empty ones left out)."""
    body = "".join(f"<p>{escape(p)}</p>" for p in paragraphs if p)
    return {"status": "generated", "div": f'<div xmlns="{_XHTML}"><p><b>{escape(title)}</b></p>{body}</div>'}


def ai_label(report: LabReport) -> str:
    """The AI label in one sentence (the report's narrative gives the whole ``ai_note``)."""
    return (
        f"AI-generated result ({AIAST_CODE}: {AIAST_DISPLAY}) of the model {report.model.name} "
        f"version {report.model_version} (allxai)."
    )


def status_words(report: LabReport, status: str) -> str:
    """What a status means for the reader."""
    if status == "preliminary":
        return "Status: preliminary (not reviewed: a qualified person must confirm it before clinical use)."
    if status == "final":
        return f"Status: final (reviewed and confirmed by {report.reviewed_by})."
    if status == "corrected":
        return f"Status: corrected (changed by {report.reviewed_by} after review)."
    return "Status: cancelled (no result: the image could not be classified)."


def when_words(report: LabReport) -> str:
    """Which time ``effectiveDateTime`` holds: the LIS's, or, when it gave none, the time of the analysis."""
    if report.observed_at is not None:
        return (
            f"Effective time {report.observed_at.isoformat()}: when the specimen was collected or imaged, "
            "as the LIS gave it."
        )
    return (
        f"Effective time {report.issued_at.isoformat()}: the time of the analysis (the LIS gave no time of "
        "collection or imaging)."
    )


def value_words(resource: dict[str, Any]) -> str:
    """An Observation's value (or why it has none) in words."""
    if "valueCodeableConcept" in resource:
        concept = resource["valueCodeableConcept"]
        coding = concept["coding"][0]
        return f"{concept.get('text') or coding.get('display', '')} ({coding['code']})"
    if "valueQuantity" in resource:
        quantity = resource["valueQuantity"]
        unit = quantity.get("unit", "")
        if unit == "%":
            return f"{quantity['value']:g}%"
        return f"{quantity['value']:g}" + (f" {unit}" if unit and unit != "1" else "")
    if "valueBoolean" in resource:
        return "yes" if resource["valueBoolean"] else "no"
    if "valueString" in resource:
        return str(resource["valueString"])
    absent = resource.get("dataAbsentReason", {})
    return f"no value ({absent.get('text') or absent.get('coding', [{}])[0].get('code', 'unknown')})"


def cell_words(report: LabReport, cell: ClassifyResult) -> list[str]:
    """A classified image in words: its class, confidence and domain check."""
    coding = report.class_coding(cell.label)
    return [
        f"Class: {coding.display} ({coding.code}), confidence {percent(cell.confidence)}.",
        f"Domain check: {domain_note(cell)}",
    ]


def observation_narrative(
    report: LabReport, resource: dict[str, Any], summary: list[str], notes: list[str]
) -> dict[str, str]:
    """An Observation's narrative: what it measures and its value, ``summary`` (a cell's class, confidence and
    domain check), the notes, the status, the effective time and the AI label."""
    title = str(resource["code"].get("text") or resource["code"]["coding"][0]["display"])
    lines = summary or [f"Value: {value_words(resource)}."]
    return narrative(
        title,
        [
            *lines,
            # A cell's summary already gives its domain note: say it once.
            *(n for n in notes if not any(n in line for line in lines)),
            status_words(report, str(resource["status"])),
            when_words(report),
            ai_label(report),
        ],
    )
