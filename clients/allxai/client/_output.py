"""What the commands write: one flat record per image, as JSON or CSV, and the specimen summary in words.

Every answer says how far the model is entitled to judge the image. In words: an image outside the training
domain is called so, in capitals, with "not for diagnosis"; a model without a domain check is said to have
none; a prediction set of more than one class is shown with its coverage. For example::

    cell.png: Pro-B ALL 99.9% — OUTSIDE THE TRAINING DOMAIN (score 41.2 > 12.0); not for diagnosis
    cell.png: Pre-B ALL 61.0% — set {Pre, Pro} at 95%
    cell.png: Pro-B ALL 97.3% — no domain check (the model has none)

JSON and CSV records carry ``in_domain`` (true, false, or null/empty: no check was made), ``domain_score``,
``domain_threshold``, ``prediction_set`` (a list; in CSV the classes joined by ``|``) and ``coverage``,
``estimated_scale`` (µm per pixel), ``white_cells`` and ``domain_reasons`` (a list; in CSV joined by `` | ``).
No JSON carries NaN: a number that is not finite is written as null.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from allxai.client._results import (
    ClassifyResult,
    ExplainResult,
    ModelDescription,
    SpecimenResult,
    json_safe,
)
from allxai.client.inputs import InputImage
from allxai.client.words import percent, score_and_threshold

Record = dict[str, Any]

_QUALITY = ("r2", "stability", "cell_share", "background_share", "corner_share")

#: What an answer from a model without a domain check says about it.
NO_DOMAIN_CHECK = "no domain check (the model has none)"
#: The words for an image outside the training domain, in the one-line output.
OUTSIDE = "OUTSIDE THE TRAINING DOMAIN"
#: How CSV joins the classes of a prediction set (class names may hold spaces).
SET_SEPARATOR = "|"


def domain_words(
    in_domain: bool | None,
    domain_score: float | None,
    domain_threshold: float | None,
    reasons: Sequence[str] = (),
) -> str:
    """What the domain check says, for a person; empty for an image inside the domain."""
    if in_domain is None:
        return NO_DOMAIN_CHECK
    if in_domain:
        return ""
    why = list(reasons)
    if domain_score is not None and domain_threshold is not None and domain_score > domain_threshold:
        score, threshold = score_and_threshold(domain_score, domain_threshold)
        why.insert(0, f"score {score} > {threshold}")
    return f"{OUTSIDE} ({'; '.join(why)}); not for diagnosis" if why else f"{OUTSIDE}; not for diagnosis"


def set_words(prediction_set: Sequence[str], coverage: float | None) -> str:
    """The prediction set, when it holds more than one class: ``set {Pre, Pro} at 95%``; else empty."""
    if len(prediction_set) < 2:
        return ""
    level = f" at {percent(coverage)}" if coverage is not None else ""
    return f"set {{{', '.join(prediction_set)}}}{level}"


def cell_words(record: Record) -> str:
    """The notes on one classified image (a record), after a dash; empty when there is nothing to say."""
    notes = [
        domain_words(
            record.get("in_domain"),
            record.get("domain_score"),
            record.get("domain_threshold"),
            record.get("domain_reasons") or (),
        ),
        set_words(record.get("prediction_set") or [], record.get("coverage")),
    ]
    said = "; ".join(note for note in notes if note)
    return f" — {said}" if said else ""


def cell_line(record: Record) -> str:
    """One classified image in words: ``Pro-B ALL 99.9%`` and its notes (see the module docstring)."""
    confidence = record["confidence"]
    shown = f"{confidence:.1%}" if confidence is not None else "?%"
    return f"{record['display_name']} {shown}{cell_words(record)}"


def classify_record(image: InputImage, result: ClassifyResult, info: ModelDescription) -> Record:
    """One classified image, with the class's display name and every score."""
    return {
        "path": str(image.path),
        "image_id": result.image_id,
        "label": result.label,
        "display_name": info.display_name(result.label),
        "confidence": result.confidence,
        "scores": result.scores,
        "model": result.model,
        "version": result.version,
        "request_id": result.request_id,
        "in_domain": result.in_domain,
        "domain_score": result.domain_score,
        "domain_threshold": result.domain_threshold,
        "prediction_set": list(result.prediction_set),
        "coverage": result.coverage,
        "estimated_scale": result.estimated_scale,
        "white_cells": result.white_cells,
        "domain_reasons": list(result.domain_reasons),
    }


def explain_record(
    image: InputImage, result: ExplainResult, info: ModelDescription, pictures: dict[str, Path]
) -> Record:
    """One explained image: its classification, the explanation's figures and the pictures written."""
    return {
        **classify_record(image, result.classification, info),
        "explained_label": result.label,
        "seed": result.seed,
        "num_samples": result.num_samples,
        "stopped_early": result.stopped_early,
        "top_segments": result.top_segments,
        **{q: result.quality.get(q) for q in _QUALITY},
        "no_evidence": result.no_evidence,
        "warnings": list(result.warnings),
        "pictures": {kind: str(path) for kind, path in pictures.items()},
    }


def error_record(image: InputImage, error: str) -> Record:
    """An image that failed, and why."""
    return {"path": str(image.path), "error": error}


def specimen_document(
    specimen: SpecimenResult, cells: list[Record], info: ModelDescription, review: int
) -> dict[str, Any]:
    """The specimen as JSON: per-cell records (with their review rank) and the summary."""
    for rank, index in enumerate(specimen.review_first, start=1):
        cells[index]["review_rank"] = rank
    return {
        "specimen_id": specimen.specimen_id,
        "model": info.name,
        "version": specimen.cells[0].version if specimen.cells else info.version,
        "summary": {
            "cells": len(specimen.cells),
            "counts": specimen.counts,
            "blast_fraction": specimen.blast_fraction,
            "counted": specimen.counted_cells,
            "domain_checked": any(cell.domain_checked for cell in specimen.cells),
            "out_of_domain": specimen.out_of_domain,
            "ambiguous": specimen.ambiguous,
            "needs_review": specimen.needs_review,
            "review_reason": specimen.review_reason,
            "review_first": [cells[i]["path"] for i in specimen.review_first[:review]],
        },
        "cells": cells,
    }


def _cells(count: int) -> str:
    return f"{count} cell{'' if count == 1 else 's'}"


def specimen_text(document: dict[str, Any], info: ModelDescription) -> str:
    """The specimen summary for a person: counts per class, the blast fraction, the cells to look at first."""
    summary = document["summary"]
    total = summary["cells"]
    lines = [
        f"specimen {document['specimen_id'] or '(no id)'}: {total} cells, "
        f"model {document['model']} version {document['version']}"
    ]
    if summary["needs_review"]:
        lines.append(f"NEEDS REVIEW: {summary['review_reason'] or 'the gateway asks for a review'}")
    width = max((len(info.display_name(label)) for label in summary["counts"]), default=0)
    for label, count in summary["counts"].items():
        lines.append(f"  {info.display_name(label):<{width}}  {count:>5}  {count / max(total, 1):6.1%}")
    if summary["domain_checked"]:
        counted = f"of {_cells(summary['counted'])} counted (inside the training domain)"
    else:
        counted = f"of {_cells(summary['counted'])} counted; {NO_DOMAIN_CHECK}"
    lines.append(f"blast fraction {summary['blast_fraction']:.1%} {counted}")
    if summary["domain_checked"]:
        outside = _cells(summary["out_of_domain"])
        lines.append(f"outside the training domain: {outside} (not counted, not for diagnosis)")
    lines.append(f"ambiguous (prediction set of more than one class): {_cells(summary['ambiguous'])}")
    if summary["review_first"]:
        lines.append("look first at (outside the training domain first, then the least confident):")
        by_path = {cell["path"]: cell for cell in document["cells"]}
        for rank, path in enumerate(summary["review_first"], start=1):
            lines.append(f"  {rank:>3}. {path}  {cell_line(by_path[path])}")
    return "\n".join(lines)


def _flat(record: Record) -> Record:
    flat: Record = {}
    for key, value in record.items():
        if key == "prediction_set":
            flat[key] = SET_SEPARATOR.join(value)
        elif key in ("warnings", "domain_reasons"):
            flat[key] = " | ".join(value)
        elif key == "scores":
            flat.update({f"score_{label}": score for label, score in value.items()})
        elif key == "pictures":
            flat.update({f"picture_{kind}": path for kind, path in value.items()})
        elif isinstance(value, list):
            flat[key] = " ".join(map(str, value))
        else:
            flat[key] = value
    return flat


def csv_text(records: Sequence[Record]) -> str:
    """Records as CSV: nested scores and pictures become one column each; columns in order of appearance."""
    rows = [_flat(r) for r in records]
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def json_text(document: Any) -> str:
    """A document as indented JSON; a NaN or infinite number becomes null (JSON has neither)."""
    return json.dumps(json_safe(document), indent=2, allow_nan=False) + "\n"


def write(target: str | None, text: str) -> None:
    """Write ``text`` to a file, or to standard output for ``-``; nothing for ``None``."""
    if target is None:
        return
    if target == "-":
        sys.stdout.write(text)
        return
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
