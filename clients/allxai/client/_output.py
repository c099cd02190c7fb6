"""What the commands write: one flat record per image, as JSON or CSV, and the specimen summary in words."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from allxai.client._results import ClassifyResult, ExplainResult, ModelDescription, SpecimenResult
from allxai.client.inputs import InputImage

Record = dict[str, Any]

_QUALITY = ("r2", "stability", "cell_share", "background_share", "corner_share")


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
            "review_first": [cells[i]["path"] for i in specimen.review_first[:review]],
        },
        "cells": cells,
    }


def specimen_text(document: dict[str, Any], info: ModelDescription) -> str:
    """The specimen summary for a person: counts per class, the blast fraction, the cells to look at first."""
    summary = document["summary"]
    total = summary["cells"]
    lines = [
        f"specimen {document['specimen_id'] or '(no id)'}: {total} cells, "
        f"model {document['model']} version {document['version']}"
    ]
    width = max((len(info.display_name(label)) for label in summary["counts"]), default=0)
    for label, count in summary["counts"].items():
        lines.append(f"  {info.display_name(label):<{width}}  {count:>5}  {count / max(total, 1):6.1%}")
    lines.append(f"blast fraction {summary['blast_fraction']:.1%}")
    if summary["review_first"]:
        lines.append("look first at (least confident first):")
        by_path = {cell["path"]: cell for cell in document["cells"]}
        for rank, path in enumerate(summary["review_first"], start=1):
            cell = by_path[path]
            lines.append(f"  {rank:>3}. {path}  {cell['display_name']} {cell['confidence']:.1%}")
    return "\n".join(lines)


def _flat(record: Record) -> Record:
    flat: Record = {}
    for key, value in record.items():
        if key == "scores":
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
    """A document as indented JSON."""
    return json.dumps(document, indent=2) + "\n"


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
