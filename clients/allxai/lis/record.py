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

import base64
import binascii
import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from allxai.client import ClassifyResult, ExplainResult, ModelDescription, SpecimenResult, json_safe
from allxai.lis._folder import write_atomic
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


class RecordError(ValueError):
    """A report record that cannot be read: not JSON, another format, or a field of the wrong kind."""


# ---- writing -------------------------------------------------------------------------------------------


def _time(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _model(model: ModelDescription) -> dict[str, Any]:
    return {
        "name": model.name,
        "version": model.version,
        "class_names": list(model.class_names),
        "input_size": list(model.input_size),
        "card": json_safe(model.card),
        "normal_class_names": list(model.normal_class_names),
        "available_versions": list(model.available_versions),
    }


def _explanation(explanation: ExplainResult) -> dict[str, Any]:
    data = explanation.to_dict()
    # to_dict leaves the pictures out; a final report must still carry the overlay, so keep their bytes.
    data["pictures"] = {
        kind: base64.b64encode(png).decode("ascii") for kind, png in explanation.pictures.items()
    }
    return data


def _specimen(specimen: SpecimenResult) -> dict[str, Any]:
    # Not SpecimenResult.to_dict: it writes ``counted_cells``, so an unknown ``counted`` would read back
    # as a number.
    return {
        "specimen_id": specimen.specimen_id,
        "cells": [cell.to_dict() for cell in specimen.cells],
        "counts": dict(specimen.counts),
        "blast_fraction": json_safe(specimen.blast_fraction),
        "review_first": list(specimen.review_first),
        "out_of_domain": specimen.out_of_domain,
        "ambiguous": specimen.ambiguous,
        "counted": specimen.counted,
        "needs_review": specimen.needs_review,
        "review_reason": specimen.review_reason,
    }


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
                {"image_id": f.image_id, "code": f.code, "message": f.message} for f in report.failures
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


def _get(data: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise RecordError(f"{where}.{key} is missing")
    return data[key]


def _str(data: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = data.get(key, default) if default is not None else _get(data, key, where)
    if not isinstance(value, str):
        raise RecordError(f"{where}.{key} must be a string")
    return value


def _int(data: Mapping[str, Any], key: str, where: str) -> int:
    value = _get(data, key, where)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecordError(f"{where}.{key} must be an integer")
    return value


def _bool(data: Mapping[str, Any], key: str, where: str) -> bool:
    value = _get(data, key, where)
    if not isinstance(value, bool):
        raise RecordError(f"{where}.{key} must be true or false")
    return value


def _number(value: Any, where: str) -> float:
    # JSON has no NaN: the SDK writes a missing or non-finite number as null, which reads back as NaN.
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordError(f"{where} must be a number")
    return float(value)


def _optional_number(data: Mapping[str, Any], key: str, where: str) -> float | None:
    value = data.get(key)
    return None if value is None else _number(value, f"{where}.{key}")


def _list(data: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = _get(data, key, where)
    if not isinstance(value, list):
        raise RecordError(f"{where}.{key} must be a list")
    return value


def _dict(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RecordError(f"{where} must be an object")
    return value


def _strings(data: Mapping[str, Any], key: str, where: str) -> list[str]:
    items = _list(data, key, where)
    if not all(isinstance(item, str) for item in items):
        raise RecordError(f"{where}.{key} must be a list of strings")
    return items


def _ints(data: Mapping[str, Any], key: str, where: str) -> list[int]:
    items = _list(data, key, where)
    if not all(isinstance(item, int) and not isinstance(item, bool) for item in items):
        raise RecordError(f"{where}.{key} must be a list of integers")
    return items


def _moment(data: Mapping[str, Any], key: str, where: str) -> datetime | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RecordError(f"{where}.{key} must be an ISO 8601 time")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise RecordError(f"{where}.{key}: {exc}") from exc
    if moment.tzinfo is None:
        raise RecordError(f"{where}.{key} {value!r} carries no time zone")
    return moment


def classification_from_dict(data: Any, where: str = "classification") -> ClassifyResult:
    """A :class:`ClassifyResult` from its ``to_dict``."""
    d = _dict(data, where)
    scores = {str(k): _number(v, f"{where}.scores.{k}") for k, v in _dict(d.get("scores"), where).items()}
    in_domain = d.get("in_domain")
    if in_domain is not None and not isinstance(in_domain, bool):
        raise RecordError(f"{where}.in_domain must be true, false or null")
    return ClassifyResult(
        label=_str(d, "label", where),
        confidence=_number(_get(d, "confidence", where), f"{where}.confidence"),
        scores=scores,
        model=_str(d, "model", where),
        version=_int(d, "version", where),
        request_id=_str(d, "request_id", where),
        image_id=_str(d, "image_id", where, ""),
        in_domain=in_domain,
        domain_score=_optional_number(d, "domain_score", where),
        domain_threshold=_optional_number(d, "domain_threshold", where),
        prediction_set=_strings(d, "prediction_set", where) if "prediction_set" in d else [],
        coverage=_optional_number(d, "coverage", where),
        estimated_scale=_optional_number(d, "estimated_scale", where),
        scale_source=_str(d, "scale_source", where, ""),
        white_cells=_int(d, "white_cells", where) if "white_cells" in d else 0,
        domain_reasons=_strings(d, "domain_reasons", where) if "domain_reasons" in d else [],
    )


def explanation_from_dict(data: Any, where: str = "explanation") -> ExplainResult:
    """An :class:`ExplainResult` from its record (``to_dict`` plus the pictures as base64)."""
    d = _dict(data, where)
    weights = []
    for i, pair in enumerate(_list(d, "weights", where)):
        if not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[0], int):
            raise RecordError(f"{where}.weights[{i}] must be [segment, weight]")
        weights.append((pair[0], _number(pair[1], f"{where}.weights[{i}]")))
    pictures = {}
    for kind, text in _dict(d.get("pictures", {}), f"{where}.pictures").items():
        try:
            pictures[str(kind)] = base64.b64decode(str(text), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RecordError(f"{where}.pictures.{kind} is not base64: {exc}") from exc
    quality = {
        str(k): _number(v, f"{where}.quality.{k}")
        for k, v in _dict(d.get("quality", {}), f"{where}.quality").items()
    }
    seed = _get(d, "seed", where)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise RecordError(f"{where}.seed must be an integer")
    return ExplainResult(
        classification=classification_from_dict(_get(d, "classification", where), f"{where}.classification"),
        label=_str(d, "label", where),
        weights=weights,
        top_segments=_ints(d, "top_segments", where),
        seed=seed,
        num_samples=_int(d, "num_samples", where),
        score=_number(_get(d, "score", where), f"{where}.score"),
        pictures=pictures,
        quality=quality,
        stopped_early=_bool(d, "stopped_early", where) if "stopped_early" in d else False,
        warnings=_strings(d, "warnings", where) if "warnings" in d else [],
        no_evidence=_bool(d, "no_evidence", where) if "no_evidence" in d else False,
    )


def specimen_from_dict(data: Any, where: str = "specimen") -> SpecimenResult:
    """A :class:`SpecimenResult` from its record."""
    d = _dict(data, where)
    counts = {}
    for label, count in _dict(_get(d, "counts", where), f"{where}.counts").items():
        if isinstance(count, bool) or not isinstance(count, int):
            raise RecordError(f"{where}.counts.{label} must be an integer")
        counts[str(label)] = count
    counted = d.get("counted")
    if counted is not None and (isinstance(counted, bool) or not isinstance(counted, int)):
        raise RecordError(f"{where}.counted must be an integer or null")
    return SpecimenResult(
        cells=[
            classification_from_dict(c, f"{where}.cells[{i}]") for i, c in enumerate(_list(d, "cells", where))
        ],
        counts=counts,
        blast_fraction=_number(_get(d, "blast_fraction", where), f"{where}.blast_fraction"),
        review_first=_ints(d, "review_first", where),
        specimen_id=_str(d, "specimen_id", where, ""),
        out_of_domain=_int(d, "out_of_domain", where),
        ambiguous=_int(d, "ambiguous", where),
        counted=counted,
        needs_review=_bool(d, "needs_review", where),
        review_reason=_str(d, "review_reason", where, ""),
    )


def model_from_dict(data: Any, where: str = "model") -> ModelDescription:
    """A :class:`ModelDescription` from its record."""
    d = _dict(data, where)
    size = _ints(d, "input_size", where)
    if len(size) != 2:
        raise RecordError(f"{where}.input_size must be [height, width]")
    return ModelDescription(
        name=_str(d, "name", where),
        version=_int(d, "version", where),
        class_names=_strings(d, "class_names", where),
        input_size=(size[0], size[1]),
        card=_dict(d.get("card", {}), f"{where}.card"),
        normal_class_names=_strings(d, "normal_class_names", where) if "normal_class_names" in d else [],
        available_versions=_ints(d, "available_versions", where) if "available_versions" in d else [],
    )


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
