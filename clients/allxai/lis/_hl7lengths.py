"""HL7 v2.5 maximum field lengths: a table of every field an allxai ORU^R01 sends, and the check of one.

hl7apy's STRICT mode checks the primitive types of components (ST up to 199 characters and so on) but not
the lengths v2.5 gives whole fields, which is what receiving interface engines enforce: an OBR-2 of 30
characters is refused or, worse, cut. ``build_oru`` therefore walks every message it builds through
``check_lengths``, which raises :class:`FieldTooLong` rather than sending a field a receiver cannot hold.

A length is counted on the field as it travels (ER7, escape sequences and the component and subcomponent
separators included), one repetition at a time, as v2.5 (section 2.5.3.2) counts it. Counting the escaped
form can only overcount, so a field that passes fits whatever the receiver counts.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

from allxai.lis._hl7strict import MAX_OBX5_CHARS, walk
from allxai.lis._report import code_token

__all__ = ["MAX_LENGTHS", "FieldTooLong", "check_lengths", "equipment_id"]

#: The HL7 v2.5 maximum length of every field an allxai ORU^R01 sends (chapters 2, 3, 4, 7).
MAX_LENGTHS: Mapping[str, int] = MappingProxyType(
    {
        "MSH-1": 1,  # ST, the field separator
        "MSH-2": 4,  # ST, the encoding characters
        "MSH-3": 227,  # HD, sending application
        "MSH-4": 227,  # HD, sending facility
        "MSH-5": 227,  # HD, receiving application
        "MSH-6": 227,  # HD, receiving facility
        "MSH-7": 26,  # TS, date/time of message
        "MSH-9": 15,  # MSG, message type
        "MSH-10": 20,  # ST, message control id
        "MSH-11": 3,  # PT, processing id
        "MSH-12": 60,  # VID, version id
        "MSH-15": 2,  # ID, accept acknowledgement type (not sent: original mode)
        "MSH-16": 2,  # ID, application acknowledgement type (not sent: original mode)
        "MSH-18": 16,  # ID, character set
        "PID-1": 4,  # SI, set id
        "PID-3": 250,  # CX, patient identifier list (each repetition)
        "PID-5": 250,  # XPN, patient name
        "ORC-1": 2,  # ID, order control
        "ORC-2": 22,  # EI, placer order number
        "ORC-3": 22,  # EI, filler order number
        "OBR-1": 4,  # SI, set id
        "OBR-2": 22,  # EI, placer order number
        "OBR-3": 22,  # EI, filler order number
        "OBR-4": 250,  # CE, universal service identifier
        "OBR-7": 26,  # TS, observation date/time
        "OBR-22": 26,  # TS, results report/status change date/time
        "OBR-24": 10,  # ID, diagnostic service section id
        "OBR-25": 1,  # ID, result status
        "OBR-32": 200,  # NDL, principal result interpreter
        "OBX-1": 4,  # SI, set id
        # ID, value type: v2.5 prints 2, yet its table 0125 holds the three-letter CWE that we send;
        # v2.6 corrected the length to 3, the longest code of the table.
        "OBX-2": 3,
        "OBX-3": 250,  # CE, observation identifier
        "OBX-4": 20,  # ST, observation sub-id
        "OBX-5": MAX_OBX5_CHARS,  # varies, observation value (each repetition)
        "OBX-6": 250,  # CE, units
        "OBX-7": 60,  # ST, references range
        "OBX-8": 5,  # IS, abnormal flags (each repetition)
        "OBX-9": 5,  # NM, probability
        "OBX-10": 2,  # ID, nature of abnormal test
        "OBX-11": 1,  # ID, observation result status
        "OBX-12": 26,  # TS, effective date of reference range
        "OBX-13": 20,  # ST, user defined access checks
        "OBX-14": 26,  # TS, date/time of the observation
        "OBX-15": 250,  # CE, producer's id
        "OBX-16": 250,  # XCN, responsible observer (each repetition)
        "OBX-17": 250,  # CE, observation method (each repetition)
        "OBX-18": 22,  # EI, equipment instance identifier (each repetition)
        "OBX-19": 26,  # TS, date/time of the analysis
        "NTE-1": 4,  # SI, set id
        "NTE-3": 65536,  # FT, comment
        "SPM-1": 4,  # SI, set id
        "SPM-2": 80,  # EIP, specimen id
        "SPM-4": 250,  # CWE, specimen type
    }
)

#: OBX-18 is EI: the identifier, then our namespace; v2.5 allows 22 characters for both.
_EQUIPMENT_NAMESPACE = "^ALLXAI"
_MAX_EQUIPMENT_ID = MAX_LENGTHS["OBX-18"] - len(_EQUIPMENT_NAMESPACE)


class FieldTooLong(ValueError):
    """A field longer than HL7 v2.5 allows: ``field`` (e.g. "OBR-2"), its ``length`` and ``maximum``.

    The message names every field that is too long; the attributes describe the first of them.
    """

    def __init__(self, found: list[tuple[str, int, int]]) -> None:
        self.field, self.length, self.maximum = found[0]
        self.fields = tuple(name for name, _, _ in found)
        detail = "; ".join(
            f"{name} is {length} characters, HL7 v2.5 allows {most}" for name, length, most in found
        )
        super().__init__(f"field too long for HL7 v2.5: {detail}")


def _in_check_order(segments: list[Any]) -> Iterator[Any]:
    """The segments, each ORC after the OBR that follows it: ORC-2 and ORC-3 repeat OBR-2 and OBR-3, and
    the interface team knows the order number as OBR-2, so that is the field to name first."""
    held: list[Any] = []
    for segment in segments:
        if segment.name == "ORC":
            held.append(segment)
            continue
        yield segment
        if segment.name == "OBR":
            yield from held
            held.clear()
    yield from held


def check_lengths(message: Any) -> None:
    """Raise :class:`FieldTooLong` when a field of ``message`` (built or parsed) is longer than v2.5 allows.

    A field missing from ``MAX_LENGTHS`` raises ``LookupError``: the table must name every field we send,
    so a new field cannot slip out unchecked.
    """
    found: list[tuple[str, int, int]] = []
    for segment in _in_check_order(walk(message)):
        for field in segment.children:  # one child per repetition
            name = field.name.replace("_", "-")
            if name not in MAX_LENGTHS:
                raise LookupError(f"no HL7 v2.5 maximum length for {name}: add it to MAX_LENGTHS")
            length, most = len(field.to_er7()), MAX_LENGTHS[name]
            if length > most and (name, length, most) not in found:
                found.append((name, length, most))
    if found:
        raise FieldTooLong(found)


def equipment_id(model: str, version: int) -> str:
    """OBX-18: ``<model>:<version>^ALLXAI`` within the 22 characters of v2.5, the same for the same model.

    A longer model name is cut and marked with 4 characters of its SHA-256 (``<cut>-<hash>:<version>``), so
    two long names that share a beginning stay apart; the model OBX carries the full name and version.
    """
    name, suffix = code_token(model), f":{version}"
    if len(name) + len(suffix) <= _MAX_EQUIPMENT_ID:
        return f"{name}{suffix}{_EQUIPMENT_NAMESPACE}"
    digest = base64.b32encode(hashlib.sha256(model.encode()).digest()).decode("ascii")[:4]
    room = _MAX_EQUIPMENT_ID - len(suffix) - len(digest) - 1
    if room < 1:
        # Only an absurd version number gets here: the hash alone names the model, the version is cut.
        return f"{digest}{suffix}"[:_MAX_EQUIPMENT_ID] + _EQUIPMENT_NAMESPACE
    return f"{name[:room]}-{digest}{suffix}{_EQUIPMENT_NAMESPACE}"
