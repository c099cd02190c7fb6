"""The transaction of the FHIR bundle (see ``allxai.lis.fhir``): the request of each entry, the keys.

Resources that other systems own or share (Patient, Specimen, Device, Organization, Practitioner) are
conditional creates on their business identifier: ``POST <Type>`` with ``ifNoneExist`` ``identifier=<system>|
<value>``, so a server that knows them already keeps its own and points our references at it. The results
(DiagnosticReport, Observations) are conditional updates, ``PUT <Type>?identifier=<system>|<value>``, on
identifiers stable across the report's statuses, so a final or corrected report replaces the preliminary one
and a bundle sent twice changes nothing. A Provenance has no business identifier in R4: it is ``PUT
Provenance/<id>`` with an id of ours, one per status and revision, so each review keeps its own record.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import quote

from allxai.lis._report import LabReport

#: The system of Bundle.identifier, the key of a bundle in an outbox.
BUNDLE_SYSTEM = "urn:allxai:bundle"
#: Characters left as they are in a search value of a request URL: those of URNs, OIDs and URLs.
_SAFE = ":/.-_~@"


def _escape(value: str) -> str:
    # FHIR search escapes its own separators with a backslash ("\|", "\,", "\$") before URL encoding.
    return value.replace("\\", "\\\\").replace("|", "\\|").replace(",", "\\,").replace("$", "\\$")


def identifier_query(system: str, value: str) -> str:
    """``identifier=<system>|<value>``: a token search on a business identifier, as the query of a URL
    (FHIR's search separators escaped, then percent-encoded; URNs, OIDs and plain ids stay readable)."""
    return f"identifier={quote(_escape(system), safe=_SAFE)}|{quote(_escape(value), safe=_SAFE)}"


def conditional_create(resource_type: str, system: str, value: str) -> dict[str, str]:
    """The request of a resource created only when none has that identifier yet."""
    return {"method": "POST", "url": resource_type, "ifNoneExist": identifier_query(system, value)}


def conditional_update(resource_type: str, system: str, value: str) -> dict[str, str]:
    """The request of a resource that replaces the one with that identifier (created when there is none)."""
    return {"method": "PUT", "url": f"{resource_type}?{identifier_query(system, value)}"}


def update_by_id(resource_type: str, resource_id: str) -> dict[str, str]:
    """The request of a resource stored under an id of ours (PUT as create or replace)."""
    return {"method": "PUT", "url": f"{resource_type}/{resource_id}"}


def stable_id(report: LabReport, role: str) -> str:
    """``report.stable_id(role)`` (which tells reports of failures only apart by their images)."""
    return report.stable_id(role)


def result_key(report: LabReport) -> str:
    """allxai's id of the result (DiagnosticReport.identifier): the gateway's request id, else a stable id
    (the seed of HL7's filler number when there is no request id)."""
    return report.request_id or stable_id(report, "result")


def revision(report: LabReport) -> str:
    """What tells the bundles of one report apart: its status, reviewer and corrections (16 hex digits)."""
    reviewer = report.reviewer.id if report.reviewer is not None and report.status != "preliminary" else ""
    changes = [[c.cell, c.ai_label, c.label] for c in report.corrections]
    seed = json.dumps([report.status, reviewer, changes, report.correction_note.strip()])
    return hashlib.sha256(seed.encode()).hexdigest()[:16]


def bundle_key(report: LabReport) -> str:
    """The value of Bundle.identifier: the same for a rebuilt report (an outbox stores it once), another for
    its final or corrected version (which must be sent too)."""
    return stable_id(report, f"bundle:{report.status}:{revision(report)}")


def provenance_id(report: LabReport) -> str:
    """The Provenance's id: one record per status and revision, the same when the bundle is sent again."""
    return stable_id(report, f"provenance:{report.status}:{revision(report)}")


def entry(full_url: str, resource: dict[str, Any], request: dict[str, str]) -> dict[str, Any]:
    """A transaction entry."""
    return {"fullUrl": full_url, "resource": resource, "request": request}
