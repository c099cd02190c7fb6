"""One image's work for the folder watcher: its report and outputs, written atomically, and its marker.

The loop that finds images, settles and retries them is ``allxai.lis._watcher``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from allxai.client import AllxaiClientError, ClassifyResult, ExplainResult, ModelDescription, json_safe
from allxai.lis import _folder as files
from allxai.lis._report import Failure, LabReport
from allxai.lis.config import LisConfig, default_config
from allxai.lis.fhir import to_fhir_json
from allxai.lis.hl7 import to_oru
from allxai.lis.outbox import control_id_of
from allxai.lis.record import report_to_record

#: Where the LIS's order (placer) number of an image comes from: nowhere, or the image's file name stem.
OrderIdFrom = Literal["none", "stem"]


@dataclass(frozen=True)
class Options:
    """How the watcher classifies and reports; see ``main`` for the command-line names.

    Results are always preliminary: the watcher files unreviewed AI output, and a person makes it final in
    the LIS. ``order_id_from="stem"`` takes the LIS's order number from the file name (``S123.png``: S123);
    by default the reports carry no LIS identifier, only the image's file name and allxai's request id.
    """

    explain: bool = False
    num_samples: int = 0
    seed: int | None = None
    #: The miscoverage level of the prediction sets (None: the gateway's default).
    alpha: float | None = None
    settle: float = 2.0
    retry_after: float = 30.0
    max_attempts: int = 3
    order_id_from: OrderIdFrom = "none"
    order_namespace: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    #: The LIS team's codes, identifier systems and laboratory (``--lis-config``).
    config: LisConfig = field(default_factory=default_config)


def _hl7_options(options: Options) -> dict[str, str]:
    return {
        "sending_facility": options.sending_facility,
        "receiving_application": options.receiving_application,
        "receiving_facility": options.receiving_facility,
    }


def cell_of(result: ClassifyResult | ExplainResult) -> ClassifyResult:
    """The classification of a result (an explanation carries the one it explains)."""
    return result.classification if isinstance(result, ExplainResult) else result


def render(
    path: Path,
    result: ClassifyResult | ExplainResult,
    model: ModelDescription,
    options: Options,
    order_id: str,
) -> tuple[LabReport, list[tuple[str, bytes]]]:
    """The report of one image and its outputs (suffix, content), overlay first; nothing written yet."""
    explanation = result if isinstance(result, ExplainResult) else None
    cell = replace(cell_of(result), image_id=path.name)
    if explanation is not None:
        explanation = replace(explanation, classification=cell)
    report = LabReport(
        model=model,
        classification=cell,
        explanation=explanation,
        order_id=order_id,
        order_namespace=options.order_namespace,
        # No observation time: the file's mtime is when it was copied, not when the cells were imaged.
        overlay_reference=path.name + files.OVERLAY_SUFFIX,
        config=options.config,
    )
    summary: dict[str, Any] = {"image": path.name, "status": "ok", **cell.to_dict()}
    outputs: list[tuple[str, bytes]] = []
    overlay = report.overlay_png
    if overlay is not None:
        outputs.append((files.OVERLAY_SUFFIX, overlay))
    if explanation is not None:
        summary["explanation"] = {
            "label": explanation.label,
            "top_segments": explanation.top_segments,
            "seed": explanation.seed,
            "num_samples": explanation.num_samples,
            "score": explanation.score,
            "quality": explanation.quality,
            "warnings": list(explanation.warnings),
            "overlay": path.name + files.OVERLAY_SUFFIX if overlay is not None else None,
        }
    outputs += [
        # No NaN in JSON: a number that is not finite is written as null.
        (files.JSON_SUFFIX, json.dumps(json_safe(summary), indent=2, allow_nan=False).encode()),
        *report_outputs(report, options),
    ]
    return report, outputs


def report_outputs(report: LabReport, options: Options) -> list[tuple[str, bytes]]:
    """The FHIR bundle, the ORU^R01 and the record of a report (suffix, content); the record lets a
    reviewer finalise or correct it later (``allxai lis finalize``)."""
    hl7 = to_oru(report, **_hl7_options(options))
    record = report_to_record(report, control_id=control_id_of(hl7), hl7=_hl7_options(options))
    text = json.dumps(record, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    return [
        (files.FHIR_SUFFIX, to_fhir_json(report).encode()),
        (files.HL7_SUFFIX, hl7.encode()),
        (files.RECORD_SUFFIX, text.encode()),
    ]


def render_failure(
    path: Path,
    error: AllxaiClientError,
    model: ModelDescription,
    options: Options,
    order_id: str,
    digest: str = "",
) -> tuple[LabReport, list[tuple[str, bytes]]]:
    """The report that tells the LIS an image could not be classified (HL7 OBX-11 X and a note, FHIR a
    cancelled Observation), and its outputs.

    When the order id itself is what cannot be reported (too long for OBR-2), the report goes without it
    and says so: the LIS still hears of the image, by its name.
    """
    failure = Failure(path.name, error.code, error.message, digest)
    report = LabReport(
        model=model,
        failures=(failure,),
        order_id=order_id,
        order_namespace=options.order_namespace,
        config=options.config,
    )
    try:
        return report, report_outputs(report, options)
    except ValueError:
        if not order_id:
            raise
    note = f"{error.message} (its order id {order_id!r} cannot be sent in HL7 either)"
    failure = Failure(path.name, error.code, note, digest)
    report = LabReport(model=model, failures=(failure,), config=options.config)
    return report, report_outputs(report, options)


def write_outputs(path: Path, outputs: list[tuple[str, bytes]]) -> None:
    """Write an image's outputs atomically and drop the error record of an earlier version of it."""
    for suffix, content in outputs:
        files.write_atomic(files.output(path, suffix), content, durable=False)
    files.output(path, files.ERROR_SUFFIX).unlink(missing_ok=True)  # an earlier version of this image


def write_error(path: Path, error: AllxaiClientError) -> None:
    """Write ``<image>.error.json`` in place of the results of an earlier version of the image."""
    for suffix in (
        files.OVERLAY_SUFFIX,
        files.JSON_SUFFIX,
        files.FHIR_SUFFIX,
        files.HL7_SUFFIX,
        files.RECORD_SUFFIX,
    ):
        files.output(path, suffix).unlink(missing_ok=True)  # results of an earlier version of this image
    record = {
        "image": path.name,
        "status": "error",
        "code": error.code,
        "message": error.message,
        "at": datetime.now(UTC).isoformat(),
    }
    files.write_atomic(files.output(path, files.ERROR_SUFFIX), json.dumps(record, indent=2).encode())


def write_marker(
    path: Path, stat: files.Stat, digest: str, status: str, outputs: list[str], request_id: str
) -> None:
    """Write the marker that says the image (these bytes) is done, once its outputs are on disk."""
    marker = {
        "image": path.name,
        "status": status,
        "sha256": digest,
        "size": stat.size,
        "mtime_ns": stat.mtime_ns,
        "outputs": outputs,
        "request_id": request_id,
        "processed_at": datetime.now(UTC).isoformat(),
    }
    # The outputs' renames must be on disk before the marker that vouches for them.
    files.sync_dir(path.parent)
    files.write_atomic(files.output(path, files.MARKER_SUFFIX), json.dumps(marker, indent=2).encode())
