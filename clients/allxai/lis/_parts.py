"""The small parts of a report: its reviewer, a failed image, a correction, and text helpers."""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Notes a receiver shows are cut to this many characters (a gateway's reason could be any length).
MAX_NOTE_CHARS = 2000


@dataclass(frozen=True)
class Reviewer:
    """The person who finalised or corrected a report: the LIS's id of them, and their name."""

    id: str
    family: str = ""
    given: str = ""

    def __post_init__(self) -> None:
        if not self.id.strip():
            raise ValueError("a reviewer needs an id (the LIS's identifier of the person)")

    @property
    def display(self) -> str:
        """The name for a person to read, with the id."""
        name = " ".join(p for p in (self.given.strip(), self.family.strip()) if p)
        return f"{name} ({self.id})" if name else self.id


@dataclass(frozen=True)
class Failure:
    """An image that could not be classified: the LIS hears of it as a result (HL7 OBX-11 X, FHIR
    ``cancelled`` with a data-absent reason), never only as a file next to the image."""

    image_id: str
    code: str
    message: str
    #: What failed, when known: the digest of the image's bytes, so that a later failure of new bytes under
    #: the same name is a new report (new identifiers), not a repeat the outbox would drop.
    digest: str = ""


@dataclass(frozen=True)
class Correction:
    """A reviewer's change of one cell's class: ``cell`` is 0 for a single image, else the specimen's cell
    number (1-based, HL7 OBX-4); ``ai_label`` what the model said, ``label`` what the reviewer says."""

    cell: int
    ai_label: str
    label: str


def note_text(text: str) -> str:
    """A note, cut to ``MAX_NOTE_CHARS``."""
    return text if len(text) <= MAX_NOTE_CHARS else text[: MAX_NOTE_CHARS - 1] + "…"


def code_token(text: str) -> str:
    """A code-safe token for a class name: HL7 and FHIR codes must not carry separators or spaces."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text) or "_"
