"""The rules for the identifiers a request carries: the request id, the specimen id and image ids.

A request id names a call in every log line, the audit trail and the LIS's reports, so a caller's id
(``LIS:123``, ``order/42.a``) is kept as given when it follows the rules: printable ASCII without
spaces, at most 128 characters (no line break can forge a log entry). An id that breaks them is
refused, naming the field, never replaced without a word. Without one in the message, the
``x-request-id`` metadata is taken; without either, the server makes one.

Specimen and image ids are opaque to the gateway, echoed back and written to the audit trail only, so
they are bounded (at most 256 characters) and printable (no line breaks or control characters; spaces
and any script are fine: a file name is a common image id).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable

from allxai.server.errors import InvalidInput
from allxai.server.logs import request_id_var

REQUEST_ID_MAX = 128
OPAQUE_ID_MAX = 256
#: The metadata key a caller (or a proxy) may carry its request id in.
REQUEST_ID_METADATA = "x-request-id"
_REQUEST_ID = re.compile(rf"[\x21-\x7e]{{1,{REQUEST_ID_MAX}}}")
_NO_ID = request_id_var.get()  # the logs' placeholder while a call has no id yet

Metadata = Iterable[tuple[str, str | bytes]]


def _metadata_id(metadata: Metadata) -> str | None:
    for key, value in metadata:
        if key.lower() == REQUEST_ID_METADATA:
            return value.decode(errors="replace") if isinstance(value, bytes) else value
    return None


def _check_request_id(value: str, field: str) -> str:
    if not _REQUEST_ID.fullmatch(value):
        # Never echo the id: it may be long, or hold what the rules keep out of the logs.
        raise InvalidInput(
            field,
            f"a request id is 1 to {REQUEST_ID_MAX} printable ASCII characters without spaces "
            f"(for example LIS:123); this one has {len(value)} characters"
            + ("" if len(value) > REQUEST_ID_MAX else ", not all of them allowed"),
        )
    return value


def begin(metadata: Metadata) -> str:
    """A call's id for its log lines from its first moment (refusals included): the ``x-request-id``
    metadata when it follows the rules, else a fresh one. :func:`request_id` settles it later."""
    given = _metadata_id(metadata)
    request_id = given if given is not None and _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
    request_id_var.set(request_id)
    return request_id


def request_id(given: str, metadata: Metadata = ()) -> str:
    """The call's request id: the message's, else the ``x-request-id`` metadata's, else the one
    :func:`begin` made (or a fresh one); set for the log lines. A breach is :class:`InvalidInput`."""
    if given:
        chosen = _check_request_id(given, "request_id")
    else:
        from_metadata = _metadata_id(metadata)
        if from_metadata is not None:
            chosen = _check_request_id(from_metadata, REQUEST_ID_METADATA)
        else:
            current = request_id_var.get()
            chosen = current if current != _NO_ID else uuid.uuid4().hex
    request_id_var.set(chosen)
    return chosen


def check_opaque(value: str, field: str) -> None:
    """Refuse a specimen or image id that is too long or not printable (:class:`InvalidInput`)."""
    if len(value) > OPAQUE_ID_MAX:
        raise InvalidInput(field, f"{len(value)} characters; at most {OPAQUE_ID_MAX}")
    if not value.isprintable():
        raise InvalidInput(field, "only printable characters: no line breaks, tabs or control characters")


def check_ids(specimen_id: str, image_ids: Iterable[tuple[str, str]]) -> None:
    """Check a request's specimen id and its images' ids, given as ``(field, id)`` pairs."""
    check_opaque(specimen_id, "specimen_id")
    for field, value in image_ids:
        if value:
            check_opaque(value, field)
