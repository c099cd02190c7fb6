"""The HL7 v2.5 message profile of docs/lis-profile.md: field lengths, ORC, statuses and the reviewer,
corrections, failures, the LOINC code, and every kind of message read back in hl7apy's strict mode."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hl7apy.exceptions import MaxLengthReached  # type: ignore[import-untyped]

from allxai.client import SpecimenResult
from allxai.lis import (
    Correction,
    Failure,
    LabReport,
    Reviewer,
    build_oru,
    parse_oru,
    to_oru,
)
from allxai.lis._hl7lengths import equipment_id
from allxai.lis._hl7strict import ed_field, obx_probability, walk
from allxai.lis.config import Coding, default_config
from allxai.lis.hl7 import (
    MAX_ED_DATA_CHARS,
    MAX_LENGTHS,
    FieldTooLong,
    check_lengths,
    check_order_namespace,
    segments,
)
from tests.lis.reports import (
    ISSUED,
    MODEL,
    WHEN,
    _cell,
    _explanation,
    _gated,
    _gated_specimen,
    _notes_after,
    _obx,
)

REVIEWER = Reviewer("HAEM1", "Haem", "Dr A.")
BLAST_LOINC = "26446-3"


def _failed(image_id: str = "broken.png") -> Failure:
    return Failure(image_id, "INVALID_ARGUMENT", "the image could not be decoded")


def _names(message: Any) -> list[str]:
    """The segment names of a message, in order."""
    return [s.name for s in walk(message)]


# --- Lengths -------------------------------------------------------------------------------------------


def test_the_table_holds_the_v25_lengths_of_the_fields_we_send() -> None:
    expected = {
        "MSH-10": 20, "PID-3": 250, "PID-5": 250, "ORC-1": 2, "ORC-2": 22, "ORC-3": 22, "OBR-2": 22,
        "OBR-3": 22, "OBR-4": 250, "OBR-25": 1, "OBR-32": 200, "OBX-3": 250, "OBX-4": 20, "OBX-5": 65536,
        "OBX-6": 250, "OBX-8": 5, "OBX-9": 5, "OBX-11": 1, "OBX-16": 250, "OBX-17": 250, "OBX-18": 22,
        "NTE-3": 65536, "SPM-2": 80, "SPM-4": 250,
    }  # fmt: skip
    assert {name: MAX_LENGTHS[name] for name in expected} == expected
    # v2.5 prints 2 for OBX-2, which cannot hold its own table's CWE; v2.6's 3 is what we check.
    assert MAX_LENGTHS["OBX-2"] == 3


def test_an_order_id_too_long_for_obr2_is_refused_naming_the_field() -> None:
    """A 26-character file stem as the order id: 33 characters with ^ALLXAI, where v2.5 allows 22."""
    stem = "S-2026-000123-BM-ASPIRATE1"
    assert len(stem) == 26
    with pytest.raises(FieldTooLong, match=r"OBR-2 is 33 characters, HL7 v2\.5 allows 22") as caught:
        build_oru(LabReport(MODEL, classification=_cell(), order_id=stem))
    assert (caught.value.field, caught.value.length, caught.value.maximum) == ("OBR-2", 33, 22)
    assert caught.value.fields == ("OBR-2", "ORC-2")  # ORC-2 repeats it, and is named too
    assert isinstance(caught.value, ValueError)
    # 15 characters and the namespace fill OBR-2 exactly; escaping counts (a "|" travels as \F\).
    fits = parse_oru(to_oru(LabReport(MODEL, classification=_cell(), order_id="O" * 15)))
    assert segments(fits, "OBR")[0].obr_2.to_er7() == "O" * 15 + "^ALLXAI"
    with pytest.raises(FieldTooLong, match="OBR-2 is 23"):
        build_oru(LabReport(MODEL, classification=_cell(), order_id="O" * 13 + "|"))
    # A namespace is refused at start-up when even a one-character order id could not go beside it.
    check_order_namespace("N" * 20)  # "0^" and 20: exactly 22
    with pytest.raises(MaxLengthReached):  # hl7apy's IS limit (20, escaped) comes first
        check_order_namespace("N|" * 6)  # 12 characters, 24 once escaped


def test_control_id_and_specimen_id_lengths() -> None:
    report = LabReport(MODEL, classification=_cell())
    build_oru(report, control_id="C" * 20)
    with pytest.raises(FieldTooLong, match=r"MSH-10 is 21 characters, HL7 v2\.5 allows 20"):
        build_oru(report, control_id="C" * 21)
    # SPM-2 (EIP) holds 80: the specimen id and its namespace.
    build_oru(replace(report, specimen_id="S" * 73))
    with pytest.raises(FieldTooLong, match=r"SPM-2 is 81 characters, HL7 v2\.5 allows 80"):
        build_oru(replace(report, specimen_id="S" * 74))


def test_the_filler_number_fits_obr3_and_orc3_and_the_full_request_id_travels_in_an_obx() -> None:
    request_id = "0f8e2c4a-5b6d-4e7f-8a9b-0c1d2e3f4a5b"
    report = LabReport(MODEL, classification=replace(_cell(), request_id=request_id), issued_at=ISSUED)
    message = parse_oru(to_oru(report))
    (orc,), (obr,) = segments(message, "ORC"), segments(message, "OBR")
    assert obr.obr_3.to_er7() == orc.orc_3.to_er7() == f"{report.filler_number}^ALLXAI"
    assert len(obr.obr_3.to_er7()) <= 22 and obr.obr_3.to_er7().startswith("H")
    (request,) = _obx(message, "ALLXAI-REQID")
    assert request.obx_2.to_er7() == "ST" and request.obx_5.to_er7() == request_id
    # A short request id is its own filler number.
    short = parse_oru(to_oru(LabReport(MODEL, classification=_cell())))
    assert segments(short, "OBR")[0].obr_3.to_er7() == "req-42^ALLXAI"


def test_obx9_is_a_probability_of_at_most_five_characters() -> None:
    assert [obx_probability(p) for p in (0.98765, 0.83, 0.99996, 1.0, 0.00001, 0.0)] == [
        "0.988", "0.83", "1", "1", "0", "0",
    ]  # fmt: skip
    assert obx_probability(1.0000001) == "1" and obx_probability(-1e-9) == "0"  # float32 noise
    cell = replace(_cell(), confidence=0.987654321, scores={"Benign": 0.012345679, "Early": 0.0,
                   "Pre": 0.0, "Pro": 0.987654321})  # fmt: skip
    message = parse_oru(to_oru(LabReport(MODEL, classification=cell)))
    probabilities = {o.obx_9.to_er7() for o in segments(message, "OBX") if o.obx_9.to_er7()}
    assert probabilities == {"0.988", "0.012", "0"}
    # OBX-5 keeps the full number: OBX-9 is only the summary a receiver sorts by.
    assert _obx(message, "ALLXAI-CONF")[0].obx_5.to_er7() == "0.987654"


def test_obx18_names_the_model_within_22_characters_the_same_way_every_time() -> None:
    assert equipment_id("allnet", 3) == "allnet:3^ALLXAI"
    first = equipment_id("leukaemia-classifier-resnet50-large", 12)
    second = equipment_id("leukaemia-classifier-resnet50-small", 12)
    assert first == equipment_id("leukaemia-classifier-resnet50-large", 12)  # deterministic
    assert len(first) == len(second) == 22 and first != second  # a shared beginning is told apart
    assert first.startswith("leukaem-") and first.endswith(":12^ALLXAI")
    assert equipment_id("my model|v2", 1) == "my_model_v2:1^ALLXAI"  # no HL7 delimiter in an identifier
    model = replace(MODEL, name="leukaemia-classifier-resnet50-large")
    cell = replace(_cell(), model=model.name, version=12)
    message = parse_oru(to_oru(LabReport(model, classification=cell)))
    assert {o.obx_18.to_er7() for o in segments(message, "OBX")} == {first}
    # The full name and version stay in the model OBX.
    assert _obx(message, "ALLXAI-MODEL")[0].obx_5.to_er7() == "leukaemia-classifier-resnet50-large version 12"


def test_an_embedded_overlay_fills_obx5_at_most(cell_png: bytes) -> None:
    message = build_oru(LabReport(MODEL, explanation=_explanation(cell_png)))
    (overlay,) = _obx(message, "ALLXAI-LIME")
    overlay.obx_5 = ed_field("", "IM", "PNG", "Base64", "A" * MAX_ED_DATA_CHARS)
    assert len(overlay.obx_5.to_er7()) == MAX_LENGTHS["OBX-5"] == 65536
    check_lengths(message)
    overlay.obx_5 = ed_field("", "IM", "PNG", "Base64", "A" * (MAX_ED_DATA_CHARS + 4))
    with pytest.raises(FieldTooLong, match=r"OBX-5 is 65540 characters, HL7 v2\.5 allows 65536"):
        check_lengths(message)


def test_a_field_missing_from_the_table_is_a_programming_error() -> None:
    message = build_oru(LabReport(MODEL, classification=_cell()))
    segments(message, "OBR")[0].obr_5 = "S"  # priority: a field we never send
    with pytest.raises(LookupError, match="OBR-5"):
        check_lengths(message)


# --- ORC -----------------------------------------------------------------------------------------------


def test_orc_precedes_obr_and_repeats_its_order_numbers() -> None:
    report = LabReport(MODEL, classification=_cell(), order_id="ORD-7", order_namespace="LIS")
    er7 = to_oru(report)
    assert [s[:3] for s in er7.split("\r") if s][:3] == ["MSH", "ORC", "OBR"]
    message = parse_oru(er7)  # hl7apy's strict ORU_R01_ORDER_OBSERVATION group takes ORC before OBR
    (orc,), (obr,) = segments(message, "ORC"), segments(message, "OBR")
    assert orc.parent is obr.parent and orc.parent.name == "ORU_R01_ORDER_OBSERVATION"
    assert orc.orc_1.to_er7() == "RE"
    assert orc.orc_2.to_er7() == obr.obr_2.to_er7() == "ORD-7^LIS"
    assert orc.orc_3.to_er7() == obr.obr_3.to_er7() == "req-42^ALLXAI"
    assert [f.name for f in orc.children] == ["ORC_1", "ORC_2", "ORC_3"]  # no ORC-12 (ordering provider)
    # Without the LIS's order number there is no placer number to repeat.
    (orc,) = segments(parse_oru(to_oru(LabReport(MODEL, classification=_cell()))), "ORC")
    assert orc.orc_2.to_er7() == "" and orc.orc_3.to_er7() == "req-42^ALLXAI"


# --- Status, reviewer, corrections ---------------------------------------------------------------------


def test_a_preliminary_report_names_no_reviewer() -> None:
    message = parse_oru(to_oru(LabReport(MODEL, specimen=_gated_specimen())))
    (obr,) = segments(message, "OBR")
    assert obr.obr_25.to_er7() == "P" and obr.obr_32.to_er7() == ""
    assert {(o.obx_11.to_er7(), o.obx_16.to_er7()) for o in segments(message, "OBX")} == {("P", "")}


def test_a_final_report_names_its_reviewer_in_obr32_and_every_obx16() -> None:
    report = LabReport(MODEL, explanation=_explanation(b"\x89PNG"), status="final", reviewer=REVIEWER)
    message = parse_oru(to_oru(report))
    (obr,) = segments(message, "OBR")
    assert obr.obr_25.to_er7() == "F"
    assert obr.obr_32.to_er7() == "HAEM1&Haem&Dr A."  # NDL: the CNN's parts are subcomponents
    for obx in segments(message, "OBX"):
        assert obx.obx_11.to_er7() == "F"
        assert obx.obx_16.to_er7() == "HAEM1^Haem^Dr A."  # XCN: id^family^given
    # Delimiters in a name are escaped; a reviewer known only by id is sent as the id alone.
    odd = replace(report, reviewer=Reviewer("H|1", "O'Brien & Co", "Ann^Marie"))
    message = parse_oru(to_oru(odd))
    assert segments(message, "OBR")[0].obr_32.to_er7() == "H\\F\\1&O'Brien \\T\\ Co&Ann\\S\\Marie"
    assert segments(message, "OBX")[0].obx_16.to_er7() == "H\\F\\1^O'Brien \\T\\ Co^Ann\\S\\Marie"
    bare = parse_oru(to_oru(replace(report, reviewer=Reviewer("HAEM1"))))
    assert segments(bare, "OBR")[0].obr_32.to_er7() == "HAEM1"
    assert segments(bare, "OBX")[0].obx_16.to_er7() == "HAEM1"


def test_a_corrected_single_image_says_who_changed_which_class() -> None:
    relabelled = replace(_gated("in"), label="Pre")
    report = LabReport(
        MODEL,
        classification=relabelled,
        status="corrected",
        reviewer=REVIEWER,
        corrections=(Correction(0, "Pro", "Pre"),),
        correction_note="Nucleolus visible",
    )
    message = parse_oru(to_oru(report))
    (obr,) = segments(message, "OBR")
    assert obr.obr_25.to_er7() == "C" and obr.obr_32.to_er7() == "HAEM1&Haem&Dr A."
    assert {(o.obx_11.to_er7(), o.obx_16.to_er7()) for o in segments(message, "OBX")} == {
        ("C", "HAEM1^Haem^Dr A.")
    }
    (predicted,) = _obx(message, "ALLXAI-CLASS")
    assert predicted.obx_5.to_er7() == "ALL-PREB^Pre-B ALL blast^99ALX"  # the reviewer's class
    assert _notes_after(message, predicted)[0] == (
        "Corrected by Dr A. Haem (HAEM1): the AI's class was Pro-B ALL blast, the reviewer's is Pre-B ALL "
        "blast."
    )
    ai_note = segments(message, "NTE")[0].nte_3.to_er7()
    assert "corrected by Dr A. Haem (HAEM1): the image changed from Pro-B ALL blast to Pre-B ALL blast" in (
        ai_note
    )
    assert "Reason: Nucleolus visible." in ai_note
    # A reviewer's reason may be any length: the note is cut like every other note.
    wordy = parse_oru(to_oru(replace(report, correction_note="because " * 1000)))
    assert len(segments(wordy, "NTE")[0].nte_3.to_er7()) == 2000


def test_a_corrected_specimen_notes_the_change_under_that_cell_only() -> None:
    specimen = _gated_specimen()
    cells = list(specimen.cells)
    cells[1] = replace(cells[1], label="Early")  # cell 2: the AI said Pro
    report = LabReport(
        MODEL,
        specimen=replace(specimen, cells=cells),
        status="corrected",
        reviewer=REVIEWER,
        corrections=(Correction(2, "Pro", "Early"),),
    )
    message = parse_oru(to_oru(report))
    per_cell = _obx(message, "ALLXAI-CLASS")
    assert per_cell[1].obx_4.to_er7() == "2"
    assert per_cell[1].obx_5.to_er7() == "ALL-EPREB^Early pre-B ALL blast^99ALX"
    assert _notes_after(message, per_cell[1]) == [
        "Corrected by Dr A. Haem (HAEM1): the AI's class was Pro-B ALL blast, the reviewer's is Early pre-B "
        "ALL blast."
    ]
    assert not any(n.startswith("Corrected") for o in per_cell[2:] for n in _notes_after(message, o))
    assert not _notes_after(message, per_cell[0])[0].startswith("Corrected")


def test_corrections_the_report_does_not_bear_out_are_refused() -> None:
    specimen = _gated_specimen()
    with pytest.raises(ValueError, match="cell 7, which the report does not carry"):
        build_oru(
            LabReport(MODEL, specimen=specimen, status="corrected", reviewer=REVIEWER,
                      corrections=(Correction(7, "Pro", "Pre"),))
        )  # fmt: skip
    with pytest.raises(ValueError, match="relabel the classification"):
        build_oru(
            LabReport(MODEL, classification=_cell(), status="corrected", reviewer=REVIEWER,
                      corrections=(Correction(0, "Pro", "Pre"),))
        )  # fmt: skip


# --- Failures ------------------------------------------------------------------------------------------


def test_a_report_of_one_failed_image_only() -> None:
    report = LabReport(MODEL, failures=(_failed(),), patient_id="MRN1", order_id="ORD-9", issued_at=ISSUED)
    message = parse_oru(to_oru(report))
    assert _names(message) == ["MSH", "PID", "ORC", "OBR", "NTE", "OBX", "OBX", "OBX", "NTE"]
    (obr,) = segments(message, "OBR")
    assert obr.obr_25.to_er7() == "X" and obr.obr_2.to_er7() == "ORD-9^ALLXAI"
    assert [o.obx_3.to_er7().split("^")[0] for o in segments(message, "OBX")] == [
        "ALLXAI-AILABEL",
        "ALLXAI-MODEL",
        "ALLXAI-CLASS",
    ]  # fmt: skip  (no request id: the gateway gave none)
    (failed,) = _obx(message, "ALLXAI-CLASS")
    assert failed.obx_2.to_er7() == "CWE" and failed.obx_5.to_er7() == "" and failed.obx_4.to_er7() == ""
    assert {o.obx_11.to_er7() for o in segments(message, "OBX")} == {"X"}
    assert _notes_after(message, failed) == [
        "Image broken.png could not be classified (INVALID_ARGUMENT): the image could not be decoded"
    ]
    # Two failed images are two results: their filler numbers differ, so neither replaces the other.
    other = parse_oru(to_oru(replace(report, failures=(_failed("other.png"),))))
    assert segments(other, "OBR")[0].obr_3.to_er7() != obr.obr_3.to_er7()
    assert len(obr.obr_3.to_er7()) <= 22
    # ...and the same one built again keeps its filler number.
    again = parse_oru(to_oru(report))
    assert segments(again, "OBR")[0].obr_3.to_er7() == obr.obr_3.to_er7()


def test_failed_cells_of_a_specimen_follow_its_cells() -> None:
    report = LabReport(
        MODEL, specimen=_gated_specimen(), failures=(_failed("e.png"), _failed("f.png")), issued_at=ISSUED
    )
    message = parse_oru(to_oru(report))
    assert segments(message, "OBR")[0].obr_25.to_er7() == "P"
    per_cell = _obx(message, "ALLXAI-CLASS")
    assert [o.obx_4.to_er7() for o in per_cell] == ["1", "2", "3", "4", "5", "6"]
    assert [o.obx_11.to_er7() for o in per_cell] == ["P", "P", "P", "P", "X", "X"]
    assert [o.obx_5.to_er7() for o in per_cell[4:]] == ["", ""]
    assert _notes_after(message, per_cell[5]) == [
        "Image f.png could not be classified (INVALID_ARGUMENT): the image could not be decoded"
    ]
    # Several failed images without a specimen are numbered too: OBX-3 and OBX-4 stay unique.
    several = parse_oru(to_oru(LabReport(MODEL, failures=(_failed("a.png"), _failed("b.png")))))
    assert [o.obx_4.to_er7() for o in _obx(several, "ALLXAI-CLASS")] == ["1", "2"]


# --- LOINC ---------------------------------------------------------------------------------------------


def test_the_blast_percentage_carries_the_configured_loinc_code() -> None:
    report = LabReport(MODEL, specimen=_gated_specimen())
    (blast,) = _obx(parse_oru(to_oru(report)), BLAST_LOINC)
    assert blast.obx_2.to_er7() == "NM"
    assert blast.obx_3.to_er7() == "26446-3^Blasts/100 leukocytes in Blood^LN"
    assert blast.obx_6.to_er7() == "%^percent^UCUM" and float(blast.obx_5.to_er7()) == 100.0
    other = replace(default_config(), blast_loinc=Coding("709-6", "Blasts/100 leukocytes in Bone marrow"))
    message = parse_oru(to_oru(replace(report, config=other)))
    assert _obx(message, BLAST_LOINC) == [] and _obx(message, "ALLXAI-BLAST") == []
    assert _obx(message, "709-6")[0].obx_3.to_er7() == "709-6^Blasts/100 leukocytes in Bone marrow^LN"


# --- Every kind of message, read back ------------------------------------------------------------------


def _single() -> LabReport:
    return LabReport(MODEL, classification=_gated("ood"), order_id="ORD-1", observed_at=WHEN)


def _specimen() -> LabReport:
    return LabReport(MODEL, specimen=_gated_specimen(), specimen_id="S-1", patient_id="MRN1")


KINDS: dict[str, Callable[[bytes], LabReport]] = {
    "single image": lambda png: _single(),
    "explanation with overlay": lambda png: LabReport(MODEL, explanation=_explanation(png), order_id="O-2"),
    "specimen": lambda png: _specimen(),
    "final": lambda png: replace(_specimen(), status="final", reviewer=REVIEWER),
    "corrected": lambda png: replace(
        _single(),
        classification=replace(_gated("ood"), label="Pre"),
        status="corrected",
        reviewer=REVIEWER,
        corrections=(Correction(0, "Pro", "Pre"),),
    ),
    "failures only": lambda png: LabReport(MODEL, failures=(_failed(),)),
    "specimen with failures": lambda png: replace(_specimen(), failures=(_failed(),)),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_of_message_reads_back_strictly_and_within_the_lengths(kind: str, cell_png: bytes) -> None:
    report = KINDS[kind](cell_png)
    er7 = to_oru(report, sending_facility="HAEM LAB", control_id="CTRL-1")
    message = parse_oru(er7)  # hl7apy STRICT parse and validate
    check_lengths(message)  # what was read back keeps the v2.5 lengths too
    assert str(message.to_er7()) + "\r" == er7  # nothing lost or reordered on the way
    assert message.msh.msh_10.to_er7() == "CTRL-1"
    assert message.msh.msh_15.to_er7() == message.msh.msh_16.to_er7() == ""  # original acknowledgement mode
    assert _names(message)[_names(message).index("ORC") + 1] == "OBR"
    (obr,) = segments(message, "OBR")
    assert obr.obr_25.to_er7() == report.hl7_status
    assert len(obr.obr_3.to_er7()) <= 22 and obr.obr_3.to_er7().endswith("^ALLXAI")
    for obx in segments(message, "OBX"):
        assert len(obx.obx_9.to_er7()) <= 5 and len(obx.obx_18.to_er7()) <= 22


def test_a_final_report_replaces_the_preliminary_one() -> None:
    """The same result reviewed: the same filler number (OBR-3), a new message (MSH-10)."""
    preliminary = LabReport(MODEL, specimen=_gated_specimen(), order_id="ORD-1")
    final = replace(preliminary, status="final", reviewer=REVIEWER)
    first, second = parse_oru(to_oru(preliminary)), parse_oru(to_oru(final))
    assert segments(first, "OBR")[0].obr_3.to_er7() == segments(second, "OBR")[0].obr_3.to_er7()
    assert first.msh.msh_10.to_er7() != second.msh.msh_10.to_er7()
    assert [segments(m, "OBR")[0].obr_25.to_er7() for m in (first, second)] == ["P", "F"]


def test_a_specimen_without_cells_inside_the_domain_still_fits() -> None:
    cells = [_gated("ood", "a.png"), _gated("ood", "b.png")]
    specimen = SpecimenResult(
        cells, {"Benign": 0, "Early": 0, "Pre": 0, "Pro": 2}, 0.0, [0, 1], out_of_domain=2, counted=0,
        needs_review=True, review_reason="no cell inside the domain",
    )  # fmt: skip
    message = parse_oru(to_oru(LabReport(MODEL, specimen=specimen)))
    check_lengths(message)
    (blast,) = _obx(message, BLAST_LOINC)
    assert blast.obx_5.to_er7() == "" and blast.obx_8.to_er7() == "A"
