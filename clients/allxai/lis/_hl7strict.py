"""HL7 v2.5 in hl7apy's STRICT mode: escaping, times, CWE/NM/ED values, and parsing an ORU^R01 back.

hl7apy's STRICT mode types every component of a VARIES field (OBX-5) as ST, limited to 199 characters,
while HL7 v2.5 types ED.5 (the data) as TX, up to 65,536. We therefore build and check OBX-5 of an ED
OBX as ED with a TX data component, and ``parse_oru`` does the same when reading a message back; every
other part goes through hl7apy's own strict parser and validator unchanged.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

from hl7apy.consts import VALIDATION_LEVEL  # type: ignore[import-untyped]
from hl7apy.core import Component, Field, Message  # type: ignore[import-untyped]
from hl7apy.parser import parse_message  # type: ignore[import-untyped]

from allxai.lis._report import HL7_LOCAL_SYSTEM

VERSION = "2.5"
STRICT = VALIDATION_LEVEL.STRICT
#: The longest OBX-5 of HL7 v2.5, separators included (TX, the type of ED.5, allows as much on its own).
MAX_OBX5_CHARS = 65536
#: What an embedded picture's OBX-5 holds besides its data: "^IM^PNG^Base64^" (no source application).
_ED_PNG_PREFIX = "^IM^PNG^Base64^"
#: The most Base64 characters of a picture that still keep OBX-5 within ``MAX_OBX5_CHARS``; larger overlays
#: go by reference.
MAX_ED_DATA_CHARS = MAX_OBX5_CHARS - len(_ED_PNG_PREFIX)
_ESCAPES = str.maketrans({"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\"})


def escape(text: str) -> str:
    """Escape HL7's delimiters in free text (class names and notes may hold any character)."""
    return text.translate(_ESCAPES).replace("\r", " ").replace("\n", " ")


def hl7_time(moment: datetime) -> str:
    """An HL7 TS value with seconds and the UTC offset."""
    return moment.strftime("%Y%m%d%H%M%S%z")


def coded(code: tuple[str, str], system: str = HL7_LOCAL_SYSTEM) -> str:
    """A CWE value: code, text, coding system (escaped)."""
    return f"{escape(code[0])}^{escape(code[1])}^{system}"


def number(value: float) -> str:
    """An NM value."""
    # NM wants a plain decimal: no exponent, no trailing noise from float32 scores.
    return f"{value:.6f}".rstrip("0").rstrip(".") or "0"


def obx_probability(value: float) -> str:
    """OBX-9, a probability in [0, 1] as NM of at most 5 characters (v2.5): 3 decimals, "0.987", "1", "0"."""
    # Clamped: a float32 score may stray a hair outside [0, 1], and "-0" or "1.001" is no probability.
    text = f"{min(max(value, 0.0), 1.0):.3f}".rstrip("0").rstrip(".")
    return text or "0"


def ed_field(source: str, type_of_data: str, subtype: str, encoding: str, data: str) -> Any:
    """OBX-5 as an ED whose data component is TX, as HL7 v2.5 types ED.5 (see the module docstring)."""
    value = Field("OBX_5", version=VERSION, validation_level=STRICT)
    parts = [("ST", source), ("ST", type_of_data), ("ST", subtype), ("ST", encoding), ("TX", data)]
    for index, (datatype, text) in enumerate(parts, start=1):
        component = Component(f"VARIES_{index}", datatype=datatype, version=VERSION, validation_level=STRICT)
        if text:
            component.value = text
        value.add(component)
    return value


def parse_oru(er7: str) -> Message:
    """Parse and validate an ORU^R01 in STRICT mode, reading ED values as HL7 v2.5 types them.

    Raises hl7apy's exceptions (``ValidationError``, ``MaxLengthReached``...) when the message is invalid.
    """
    segments = [s for s in er7.replace("\n", "\r").split("\r") if s]
    field_separator = segments[0][3] if segments and segments[0].startswith("MSH") else "|"
    component_separator = segments[0][4] if segments and segments[0].startswith("MSH") else "^"
    embedded: list[list[str] | None] = []
    for index, segment in enumerate(segments):
        if not segment.startswith("OBX"):
            continue
        fields = segment.split(field_separator)
        if len(fields) > 5 and fields[2] == "ED":
            # Hold the ED value back from hl7apy's parser (see the module docstring) and put it back below.
            embedded.append(fields[5].split(component_separator))
            fields[5] = ""
            segments[index] = field_separator.join(fields)
        else:
            embedded.append(None)
    message = parse_message("\r".join(segments), validation_level=STRICT, find_groups=True)
    observations = [s for s in walk(message) if s.name == "OBX"]
    for obx, parts in zip(observations, embedded, strict=True):
        if parts is not None:
            padded = (parts + [""] * 5)[:5]
            if len(parts) > 5:
                raise ValueError("an ED value has more than five components")
            obx.obx_5 = ed_field(*padded)
    message.validate()
    return message


def walk(element: Any) -> list[Any]:
    """Every segment under ``element`` (a message or a group), in message order."""
    found: list[Any] = []
    for child in element.children:
        if child.classname == "Segment":
            found.append(child)
        else:
            found.extend(walk(child))
    return found


def segments(message: Message, name: str) -> list[Any]:
    """The segments called ``name`` (e.g. "OBX") anywhere in a parsed message, in order."""
    return [s for s in walk(message) if s.name == name]


def ed_bytes(obx: Any) -> bytes:
    """The decoded data of an ED OBX (Base64 or Hex encoding)."""
    parts = str(obx.obx_5.to_er7()).split("^")
    encoding, data = parts[3], parts[4]
    if encoding == "Base64":
        return base64.b64decode(data, validate=True)
    if encoding == "Hex":
        return bytes.fromhex(data)
    raise ValueError(f"unsupported ED encoding {encoding!r}")
