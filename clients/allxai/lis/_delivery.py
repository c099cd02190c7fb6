"""Handing a result to the senders: its ORU^R01 and FHIR bundle into the outbox, before its marker.

Queued before the marker, a result is never lost: a watcher killed in between finds it queued (``queued``)
and marks it done, rather than sending a second result for the same bytes.
"""

from __future__ import annotations

import logging

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
        key, _ = fhir.put(bundle, source=source, kind="fhir", key=bundle_identifier(bundle))
        log.info("%s: FHIR bundle %s queued for the FHIR server", name, key)


def queued(source: str, hl7: Outbox | None, fhir: Outbox | None) -> bool:
    """Whether a result about ``source`` is in an outbox already (queued or sent)."""
    return any(
        box is not None and box.by_source(source, kind) is not None
        for box, kind in ((hl7, "hl7"), (fhir, "fhir"))
    )
