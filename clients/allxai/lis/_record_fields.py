"""The fields of a report record both ways: the SDK's results as JSON, and back with typed getters.

Every getter names the field that is wrong (``record.report.specimen.cells[2].label must be a string``), so
a record edited by hand, or cut short, is refused with a message a person can act on.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from allxai.client import ClassifyResult, ExplainResult, ModelDescription, SpecimenResult, json_safe


class RecordError(ValueError):
    """A report record that cannot be read: not JSON, another format, or a field of the wrong kind."""


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
