"""The JSON record of a LabReport: what was sent, so that a reviewer can finalise or correct it later.

A record holds every field of the report that HL7 and FHIR render (the model description, the
classification, the explanation with its pictures as base64 PNG, the specimen, the ids, the times with their
zones, the status, the reviewer, the failures and corrections) and not the LIS configuration: that is the LIS
team's file at the time of sending, given again to :func:`report_from_record`. ``revision`` counts the
reports sent of it (1 for the first) and ``history`` lists them, oldest first: the status, the reviewer's
id, when the report was issued, the HL7 control id (MSH-10) of its message and a correction's note. ``hl7``
keeps the MSH options the first message was built with (sending facility...), so that a final report goes
to the same receiver.

The format is versioned (``"format": "allxai-lis-report/1"``); a record of any other format is refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from allxai.lis._folder import write_atomic
from allxai.lis._record_fields import (
    RecordError,
    _dict,
    _explanation,
    _get,
    _int,
    _list,
    _model,
    _moment,
    _specimen,
    _str,
    _time,
    classification_from_dict,
    explanation_from_dict,
    model_from_dict,
    specimen_from_dict,
)
from allxai.lis._report import Correction, Failure, LabReport, ResultStatus, Reviewer
from allxai.lis.config import LisConfig, default_config

__all__ = [
    "FORMAT",
    "HL7_OPTIONS",
    "RecordError",
    "next_record",
    "read_record",
    "record_hl7_options",
    "report_from_record",
    "report_to_record",
    "write_record",
]

#: The name and version of the record format.
FORMAT = "allxai-lis-report/1"
#: The ``to_oru`` options a record may keep (MSH-4, MSH-5, MSH-6, MSH-11).
HL7_OPTIONS = ("sending_facility", "receiving_application", "receiving_facility", "processing_id")
_STATUSES: tuple[ResultStatus, ...] = ("preliminary", "final", "corrected")


# ---- writing -------------------------------------------------------------------------------------------


def _history_entry(report: LabReport, revision: int, control_id: str) -> dict[str, Any]:
    return {
        "revision": revision,
        "status": report.status,
        "reviewer": report.reviewer.id if report.reviewer is not None else "",
        "at": _time(report.issued_at),
        "control_id": control_id,
        # The report carries only the latest reason; the history keeps each one.
        "note": report.correction_note if report.status == "corrected" else "",
    }


def report_to_record(
    report: LabReport, *, control_id: str = "", hl7: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The first record (revision 1) of ``report``, a JSON-ready dictionary.

    ``control_id`` is the MSH-10 of the HL7 message sent of it (kept in the history), ``hl7`` the ``to_oru``
    options it was built with (of ``HL7_OPTIONS``), so that later revisions are sent the same way.
    """
    options = dict(hl7 or {})
    unknown = set(options) - set(HL7_OPTIONS)
    if unknown:
        raise ValueError(f"unknown HL7 options {sorted(unknown)}; a record keeps {', '.join(HL7_OPTIONS)}")
    return {
        "format": FORMAT,
        "revision": 1,
        "history": [_history_entry(report, 1, control_id)],
        "hl7": options,
        "report": {
            "model": _model(report.model),
            "classification": report.classification.to_dict() if report.classification else None,
            "explanation": _explanation(report.explanation) if report.explanation else None,
            "specimen": _specimen(report.specimen) if report.specimen else None,
            "specimen_id": report.specimen_id,
            "order_id": report.order_id,
            "order_namespace": report.order_namespace,
            "patient_id": report.patient_id,
            "patient_id_authority": report.patient_id_authority,
            "observed_at": _time(report.observed_at),
            "issued_at": _time(report.issued_at),
            "status": report.status,
            "reviewer": (
                {"id": report.reviewer.id, "family": report.reviewer.family, "given": report.reviewer.given}
                if report.reviewer is not None
                else None
            ),
            "overlay_reference": report.overlay_reference,
            "failures": [
                {"image_id": f.image_id, "code": f.code, "message": f.message, "digest": f.digest}
                for f in report.failures
            ],
            "corrections": [
                {"cell": c.cell, "ai_label": c.ai_label, "label": c.label} for c in report.corrections
            ],
            "correction_note": report.correction_note,
        },
    }


def next_record(previous: Mapping[str, Any], report: LabReport, *, control_id: str = "") -> dict[str, Any]:
    """The record of ``report`` sent after the one ``previous`` records: the revision one higher, its
    history continued, the same HL7 options."""
    _check_format(previous)
    revision = _int(previous, "revision", "record")
    history = _list(previous, "history", "record")
    record = report_to_record(report, control_id=control_id, hl7=record_hl7_options(previous))
    record["revision"] = revision + 1
    record["history"] = [*history, _history_entry(report, revision + 1, control_id)]
    return record


def write_record(
    path: Path,
    report: LabReport | Mapping[str, Any],
    *,
    control_id: str = "",
    hl7: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Write the record of ``report`` to ``path`` atomically (a reader sees the old record or the whole new
    one) and return it.

    ``report`` is a :class:`LabReport` (its first record is written: see :func:`report_to_record` for
    ``control_id`` and ``hl7``) or a record already made (by :func:`next_record`).
    """
    if isinstance(report, LabReport):
        record = report_to_record(report, control_id=control_id, hl7=hl7)
    else:
        if control_id or hl7:
            raise ValueError("control_id and hl7 belong to the record already made (see next_record)")
        _check_format(report)
        record = dict(report)
    text = json.dumps(record, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    write_atomic(path, text.encode("utf-8"))
    return record


# ---- reading -------------------------------------------------------------------------------------------


def read_record(path: Path) -> dict[str, Any]:
    """The record at ``path``, its format checked; :class:`RecordError` when it is unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordError(f"cannot read the report record {path}: {exc}") from exc
    except ValueError as exc:
        raise RecordError(f"the report record {path} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise RecordError(f"the report record {path} is not a JSON object")
    _check_format(data, where=str(path))
    return cast(dict[str, Any], data)


def _check_format(data: Mapping[str, Any], where: str = "the record") -> None:
    found = data.get("format")
    if found != FORMAT:
        raise RecordError(
            f"{where} has format {found!r}, not {FORMAT!r}: it was written by another version of allxai "
            "(or is not a report record)"
        )


def record_hl7_options(data: Mapping[str, Any]) -> dict[str, str]:
    """The ``to_oru`` options a record keeps (empty when it keeps none)."""
    table = data.get("hl7") or {}
    if not isinstance(table, dict):
        raise RecordError("record.hl7 must be an object")
    options = {}
    for key in HL7_OPTIONS:
        if key in table:
            options[key] = _str(table, key, "record.hl7")
    return options


def _reviewer(data: Any) -> Reviewer | None:
    if data is None:
        return None
    d = _dict(data, "report.reviewer")
    try:
        return Reviewer(
            _str(d, "id", "report.reviewer"),
            _str(d, "family", "report.reviewer", ""),
            _str(d, "given", "report.reviewer", ""),
        )
    except RecordError:
        raise
    except ValueError as exc:
        raise RecordError(f"report.reviewer: {exc}") from exc


def _records(data: Mapping[str, Any], key: str) -> Sequence[dict[str, Any]]:
    where = f"report.{key}"
    return [_dict(item, f"{where}[{i}]") for i, item in enumerate(_list(data, key, "report"))]


def report_from_record(data: Mapping[str, Any], config: LisConfig | None = None) -> LabReport:
    """The :class:`LabReport` a record holds, with ``config`` (None: the built-in ``lis.toml``).

    :class:`RecordError` when the record is of another format or a field is missing or of the wrong kind
    (or the report it holds breaks one of :class:`LabReport`'s rules).
    """
    _check_format(data)
    r = _dict(data.get("report"), "record.report")
    status = _str(r, "status", "report")
    if status not in _STATUSES:
        raise RecordError(f"report.status {status!r} is not one of {', '.join(_STATUSES)}")
    issued = _moment(r, "issued_at", "report")
    if issued is None:
        raise RecordError("report.issued_at is missing")
    failures = [
        Failure(
            _str(f, "image_id", f"report.failures[{i}]"),
            _str(f, "code", f"report.failures[{i}]"),
            _str(f, "message", f"report.failures[{i}]"),
            _str(f, "digest", f"report.failures[{i}]", ""),
        )
        for i, f in enumerate(_records(r, "failures"))
    ]
    corrections = [
        Correction(
            _int(c, "cell", f"report.corrections[{i}]"),
            _str(c, "ai_label", f"report.corrections[{i}]"),
            _str(c, "label", f"report.corrections[{i}]"),
        )
        for i, c in enumerate(_records(r, "corrections"))
    ]
    try:
        return LabReport(
            model=model_from_dict(_get(r, "model", "report"), "report.model"),
            classification=(
                classification_from_dict(r["classification"], "report.classification")
                if r.get("classification") is not None
                else None
            ),
            explanation=(
                explanation_from_dict(r["explanation"], "report.explanation")
                if r.get("explanation") is not None
                else None
            ),
            specimen=(
                specimen_from_dict(r["specimen"], "report.specimen")
                if r.get("specimen") is not None
                else None
            ),
            specimen_id=_str(r, "specimen_id", "report", ""),
            order_id=_str(r, "order_id", "report", ""),
            order_namespace=_str(r, "order_namespace", "report", ""),
            patient_id=_str(r, "patient_id", "report", ""),
            patient_id_authority=_str(r, "patient_id_authority", "report", ""),
            observed_at=_moment(r, "observed_at", "report"),
            issued_at=issued,
            status=status,
            reviewer=_reviewer(r.get("reviewer")),
            overlay_reference=_str(r, "overlay_reference", "report", ""),
            failures=tuple(failures),
            corrections=tuple(corrections),
            correction_note=_str(r, "correction_note", "report", ""),
            config=config if config is not None else default_config(),
        )
    except RecordError:
        raise
    except ValueError as exc:
        # LabReport's own rules (a final report without a reviewer...): the record is not a report we wrote.
        raise RecordError(f"the record holds no valid report: {exc}") from exc
