"""Handing a result to the senders: its ORU^R01 and FHIR bundle into the outbox, before its marker.

Queued before the marker, a result is never lost: a watcher killed in between finds it queued (``queued``)
and marks it done, rather than sending a second result for the same bytes.
"""

from __future__ import annotations

import logging
from pathlib import Path

from allxai.lis import _folder as files
from allxai.lis.fhir_post import bundle_identifier
from allxai.lis.outbox import Outbox

log = logging.getLogger("allxai.lis._watcher")


def queue(
    outputs: list[tuple[str, bytes]], name: str, source: str, hl7: Outbox | None, fhir: Outbox | None
) -> None:
    """Put the ORU^R01 (``hl7``) and the FHIR bundle (``fhir``) of ``outputs`` in the outboxes there are."""
    written = dict(outputs)
    if hl7 is not None:
        control_id, _ = hl7.put(written[files.HL7_SUFFIX].decode("utf-8"), source=source)
        log.info("%s: ORU^R01 %s queued for the LIS", name, control_id)
    if fhir is not None:
        bundle = written[files.FHIR_SUFFIX].decode("utf-8")
        key, added = fhir.put(bundle, source=source, kind="fhir", key=bundle_identifier(bundle))
        if added:
            log.info("%s: FHIR bundle %s queued for the FHIR server", name, key)
        else:
            log.warning("%s: FHIR bundle %s was queued before: not sent again", name, key)


def queued(source: str, hl7: Outbox | None, fhir: Outbox | None) -> bool:
    """Whether a result about ``source`` is in an outbox already (queued or sent)."""
    return any(
        box is not None and box.by_source(source, kind) is not None
        for box, kind in ((hl7, "hl7"), (fhir, "fhir"))
    )


def complete(stem: Path, name: str, source: str, hl7: Outbox | None, fhir: Outbox | None) -> bool:
    """Whether a result about ``source`` was queued already; if so, queue the kinds still missing from
    the files written beside ``stem`` (``<stem>.hl7``, ``<stem>.fhir.json``).

    The two kinds are queued one after the other: a watcher stopped in between (or an outbox that was locked
    or full for the second) has queued one. The other is taken from its file, not built again, which would
    give the HL7 message a second control id and the LIS a second result.
    """
    if not queued(source, hl7, fhir):
        return False
    for box, kind, suffix in ((hl7, "hl7", files.HL7_SUFFIX), (fhir, "fhir", files.FHIR_SUFFIX)):
        if box is None or box.by_source(source, kind) is not None:
            continue
        try:
            text = files.output(stem, suffix).read_text(encoding="utf-8")
        except OSError as exc:
            log.error("%s: its %s message is neither queued nor readable (%s); not sent", name, kind, exc)
            continue
        if kind == "hl7":
            box.put(text, source=source)
        else:
            box.put(text, source=source, kind="fhir", key=bundle_identifier(text))
        log.info("%s: its %s message, missing from the outbox, is queued from its file", name, kind)
    return True
