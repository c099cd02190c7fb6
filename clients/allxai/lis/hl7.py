"""HL7 v2.5 ORU^R01 result messages from allxai results, built and parsed with hl7apy in STRICT mode.

Layout of the message (docs/lis-profile.md is the profile an interface team reads: every field, its length
and where its value comes from)::

    MSH                        MSH-15/16 empty: original acknowledgement mode
    [PID]                      only with a patient id (PID-3 and PID-5 are required in 2.5)
    ORC                        ORC-1 "RE" (observations follow), ORC-2/ORC-3 as OBR-2/OBR-3
    OBR                        OBR-2 the LIS's order (placer) number when given, OBR-3 allxai's filler number
                               (one per result; a final or corrected report repeats it), OBR-4 the
                               classification, OBR-7 when known, OBR-25 the status (P, F, C; X when nothing
                               could be classified), OBR-32 the reviewer of a final or corrected report
    NTE                        the AI label in words
    [NTE]                      warnings to read first: outside the training domain, needs review
    OBX CWE  AI label          AIAST (HL7 v3 ObservationValue), the code AI Transparency on FHIR uses
    OBX ST   model             name and version (also OBX-18 of every OBX, cut to fit its 22 characters)
    [OBX ST] request id        allxai's full request id, for the gateway's logs (OBR-3 may hold a hash)
    OBX CWE  predicted class   OBX-9 the confidence; OBX-8 "A" when outside the training domain
    [NTE]                      a corrected report: who changed the class, and from which
    NTE                        the domain check in words ("The image lies outside the model's training
                               domain ...: not for diagnosis", or that the model has no check)
    NTE                        the prediction set in words, or that the model has no calibration
    OBX NM   confidence        OBX-9 the confidence
    OBX NM   probability, one per class, OBX-9 the probability
    OBX CWE  domain check      IN, OUT (OBX-8 "A") or NONE (no check; never flagged), local codes
    [OBX NM] domain score      OBX-8 "H" above the threshold; and the threshold (both only with a check)
    [OBX CWE] prediction set   one repetition per class, most probable first (only when calibrated)
    [OBX NM] coverage          the set's level, 1 - alpha (only when calibrated)
    OBX ED   overlay           ^IM^PNG^Base64^...  (or RP, a pointer, when too large to embed)
    NTE                        the explanation in words, then its warnings
    OBX ...  specimen summary  cells per class, total, counted (inside the domain), outside the domain,
                               ambiguous, blast percentage (LOINC when configured; NTE: what it counts),
                               needs review (Y/N, table 0136, OBX-8 "A" and an NTE with the reason when Y;
                               an NTE names the cells to review first), one CWE per cell (OBX-4 the cell;
                               OBX-8 "A" and an NTE when outside the domain, an NTE when ambiguous)
    OBX CWE  failure           one per image that could not be classified: no value, OBX-11 "X", an NTE
    [SPM]                      only with the LIS's specimen id (SPM-2); SPM-4, required, says the type is
                               not known to allxai

Every OBX carries OBX-11 (the report's status), OBX-19, the date/time of the analysis (when allxai produced
the result), OBX-14, the time of the observation, only when the LIS gave it, and OBX-16, the reviewer, once a
person reviewed the report.

HL7 v2.5 has no security-label field (the ARV segment arrived in v2.8), so the AI Transparency label is
sent as a coded OBX, which a receiving system can match on, and an NTE that any LIS display shows.

Every message is checked against the v2.5 field lengths (``allxai.lis._hl7lengths``): a field too long, such
as an order id that does not fit OBR-2, raises :class:`FieldTooLong` instead of being sent.

The OBX segments are built in ``allxai.lis._hl7obx``. Escaping, the value types and parsing a message
back, including how an ED OBX-5 is typed despite hl7apy's strict VARIES typing, are in
``allxai.lis._hl7strict``, whose ``parse_oru``, ``segments`` and ``ed_bytes`` this module re-exports.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from hl7apy.core import Message  # type: ignore[import-untyped]

from allxai.lis._hl7lengths import MAX_LENGTHS, FieldTooLong, check_lengths
from allxai.lis._hl7obx import Builder, classification, failures, overlay, specimen
from allxai.lis._hl7strict import (
    MAX_ED_DATA_CHARS,
    STRICT,
    VERSION,
    coded,
    ed_bytes,
    escape,
    hl7_time,
    parse_oru,
    segments,
)
from allxai.lis._report import (
    AIAST_CODE,
    AIAST_DISPLAY,
    CODE_AI_LABEL,
    CODE_MODEL,
    CODE_REQUEST,
    SENDING_APPLICATION,
    SERVICE_CODE,
    SERVICE_TEXT,
    LabReport,
    note_text,
)

__all__ = [
    "AIAST_HL7_SYSTEM",
    "MAX_ED_DATA_CHARS",
    "MAX_LENGTHS",
    "SPECIMEN_TYPE_UNKNOWN",
    "STRICT",
    "VERSION",
    "FieldTooLong",
    "build_oru",
    "check_header",
    "check_lengths",
    "check_order_namespace",
    "ed_bytes",
    "escape",
    "filler_number",
    "hl7_time",
    "parse_oru",
    "segments",
    "to_oru",
]

#: SPM-4 (specimen type) is required in v2.5, but the watcher sees only images: say so in a local code.
SPECIMEN_TYPE_UNKNOWN = ("UNK", "Specimen type not known to allxai")
#: The coding-system name of the AIAST code in CWE.3 (HL7 v3 ObservationValue; v2.5 has no OID component).
AIAST_HL7_SYSTEM = "HL7V3ObservationValue"


def check_header(
    *, sending_facility: str = "", receiving_application: str = "", receiving_facility: str = ""
) -> None:
    """Raise hl7apy's error (e.g. ``MaxLengthReached``) or :class:`FieldTooLong` when MSH options cannot go
    into a strict v2.5 message.

    A watcher calls this once at start-up, so a bad option stops it with a message there rather than failing
    every image.
    """
    message = Message("ORU_R01", version=VERSION, validation_level=STRICT)
    _header(message, sending_facility, receiving_application, receiving_facility)
    check_lengths(message)


def check_order_namespace(namespace: str) -> None:
    """Raise hl7apy's error, or :class:`FieldTooLong`, when ``namespace`` cannot be the namespace of OBR-2
    (checked at start-up): even a one-character order id would not fit beside it."""
    message = Message("ORU_R01", version=VERSION, validation_level=STRICT)
    obr = (
        message.add_group("ORU_R01_PATIENT_RESULT").add_group("ORU_R01_ORDER_OBSERVATION").add_segment("OBR")
    )
    obr.obr_2 = _placer("0", namespace)
    check_lengths(obr)


def _header(
    message: Message,
    sending_facility: str,
    receiving_application: str,
    receiving_facility: str,
    processing_id: str = "P",
    control_id: str = "",
) -> None:
    msh = message.msh
    msh.msh_3 = SENDING_APPLICATION
    if sending_facility:
        msh.msh_4 = escape(sending_facility)
    if receiving_application:
        msh.msh_5 = escape(receiving_application)
    if receiving_facility:
        msh.msh_6 = escape(receiving_facility)
    msh.msh_7 = hl7_time(datetime.now(UTC))
    msh.msh_9 = "ORU^R01^ORU_R01"
    # MSH-10 is at most 20 characters in v2.5.
    msh.msh_10 = control_id or uuid.uuid4().hex[:20]
    msh.msh_11 = processing_id
    # MSH-15 and MSH-16 stay empty: original acknowledgement mode, one ACK per message (see mllp.py).
    msh.msh_18 = "UNICODE UTF-8"


def _placer(order_id: str, namespace: str) -> str:
    """OBR-2 and ORC-2: the LIS's order number in its namespace (by default the sending application)."""
    return f"{escape(order_id)}^{escape(namespace or SENDING_APPLICATION)}"


def filler_number(report: LabReport) -> str:
    """OBR-3 and ORC-3's entity identifier (``report.filler_number``)."""
    return report.filler_number


def _order(order: Any, report: LabReport) -> None:
    """ORC, OBR and its NTE: the LIS's order number, allxai's own result id, the service, times, status."""
    placer = _placer(report.order_id, report.order_namespace) if report.order_id else ""
    # The filler number stays the same for the preliminary, final and corrected reports of one result, so
    # the later ones replace the first; a different result (another request) has its own.
    filler = f"{filler_number(report)}^{SENDING_APPLICATION}"
    orc = order.add_segment("ORC")
    orc.orc_1 = "RE"  # observations to follow: the ORC of an unsolicited result
    if placer:
        orc.orc_2 = placer
    orc.orc_3 = filler
    obr = order.add_segment("OBR")
    obr.obr_1 = "1"
    if placer:
        obr.obr_2 = placer
    obr.obr_3 = filler
    obr.obr_4 = coded((SERVICE_CODE, SERVICE_TEXT))
    if report.observed_at is not None:
        obr.obr_7 = hl7_time(report.observed_at)
    obr.obr_22 = hl7_time(report.issued_at)
    obr.obr_24 = "HM"
    obr.obr_25 = report.hl7_status
    if report.status != "preliminary" and report.reviewer is not None:
        # NDL: its first component is CNN, whose parts are subcomponents (id&family&given).
        who = report.reviewer
        obr.obr_32 = "&".join(escape(part.strip()) for part in (who.id, who.family, who.given)).rstrip("&")
    # The AI label first, then what must be read before the results (outside the domain, needs review).
    for index, text in enumerate([report.ai_note(), *report.warnings()], start=1):
        note = order.add_segment("NTE")
        note.nte_1 = str(index)
        note.nte_3 = escape(note_text(text))  # a reviewer's reason could be any length


def build_oru(
    report: LabReport,
    *,
    sending_facility: str = "",
    receiving_application: str = "",
    receiving_facility: str = "",
    processing_id: str = "P",
    control_id: str = "",
) -> Message:
    """Build the ORU^R01 message of ``report`` as an hl7apy ``Message`` in STRICT mode (validated).

    Raises :class:`~allxai.lis.config.UnmappedClassError` for a model class the LIS configuration has no
    code for, :class:`FieldTooLong` (a ``ValueError``) for a value longer than its v2.5 field allows (an
    order id too long for OBR-2, say), ``ValueError`` for corrections the report does not bear out, and
    hl7apy's errors for anything its strict validation refuses.
    """
    message = Message("ORU_R01", version=VERSION, validation_level=STRICT)
    _header(message, sending_facility, receiving_application, receiving_facility, processing_id, control_id)

    result = message.add_group("ORU_R01_PATIENT_RESULT")
    if report.patient_id:
        pid = result.add_group("ORU_R01_PATIENT").add_segment("PID")
        pid.pid_1 = "1"
        authority = escape(report.patient_id_authority)
        pid.pid_3 = f"{escape(report.patient_id)}^^^{authority}^MR"
        # PID-5 is required; the name is the LIS's to keep, so send an explicitly unspecified name ("U")
        # rather than "" (which tells a receiver to delete the name it has).
        pid.pid_5 = "^^^^^^U"

    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    _order(order, report)
    b = Builder(order, report)
    b.obx("CWE", CODE_AI_LABEL, f"{AIAST_CODE}^{AIAST_DISPLAY}^{AIAST_HL7_SYSTEM}")
    b.obx("ST", CODE_MODEL, escape(f"{report.model.name} version {report.model_version}"))
    if report.request_id:
        # OBR-3 may carry a hash of it (it holds 22 characters): the full id leads to the gateway's logs.
        b.obx("ST", CODE_REQUEST, escape(report.request_id))
    if report.cell is not None:
        classification(b, report.cell)
    overlay(b)
    specimen(b)
    failures(b)
    if report.specimen_id:
        spm = order.add_group("ORU_R01_SPECIMEN").add_segment("SPM")
        spm.spm_1 = "1"
        # SPM-2.1, the placer-assigned identifier (EI as subcomponents: the id, then its namespace).
        namespace = escape(report.order_namespace or SENDING_APPLICATION)
        spm.spm_2 = f"{escape(report.specimen_id)}&{namespace}"
        spm.spm_4 = coded(SPECIMEN_TYPE_UNKNOWN)
    message.validate()
    check_lengths(message)
    return message


def to_oru(report: LabReport, **options: str) -> str:
    """The ORU^R01 message of ``report`` in ER7, segments ended by carriage returns (see ``build_oru``)."""
    return str(build_oru(report, **options).to_er7()) + "\r"
