"""A reviewer finalises or corrects a report: the record, the SDK (``allxai.lis.review``) and the CLI."""

from __future__ import annotations

import json
import math
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from allxai.client import ClassifyResult
from allxai.lis import Failure, LabReport, Reviewer, UnmappedClassError, parse_oru, to_fhir_json, to_oru
from allxai.lis.commands import default_output, main
from allxai.lis.config import Coding, default_config
from allxai.lis.hl7 import segments
from allxai.lis.outbox import Outbox, control_id_of
from allxai.lis.record import (
    FORMAT,
    RecordError,
    next_record,
    read_record,
    record_hl7_options,
    report_from_record,
    report_to_record,
    write_record,
)
from allxai.lis.review import correct, finalize

from .reports import ISSUED, MODEL, WHEN, _cell, _explanation, _gated, _gated_specimen, _resources

#: A model whose Benign class is normal: a blast is any other class (the gateway refuses a specimen without).
NORMAL_MODEL = replace(MODEL, normal_class_names=["Benign"], available_versions=[2, 3])
REVIEWER = Reviewer("HAEM1", "Haem", "Dr A.")
OTHER = Reviewer("HAEM2")
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
LATER = ISSUED + timedelta(hours=2)


def _single() -> LabReport:
    return LabReport(MODEL, classification=_cell(), order_id="S123", issued_at=ISSUED)


def _explained() -> LabReport:
    explanation = _explanation(PNG)
    return LabReport(
        MODEL,
        classification=explanation.classification,
        explanation=explanation,
        overlay_reference="cell-1.png.overlay.png",
        issued_at=ISSUED,
    )


def _specimen() -> LabReport:
    return LabReport(
        NORMAL_MODEL,
        specimen=_gated_specimen(),
        specimen_id="SP-9",
        order_id="O-1",
        order_namespace="LAB",
        patient_id="P-7",
        patient_id_authority="HOSP",
        observed_at=WHEN.astimezone(timezone(timedelta(hours=2))),  # a zone other than UTC survives
        issued_at=ISSUED,
    )


def _obr(message: str) -> Any:
    (obr,) = segments(parse_oru(message), "OBR")
    return obr


def _diagnostic(report: LabReport) -> dict[str, Any]:
    (diagnostic,) = _resources(to_fhir_json(report))["DiagnosticReport"]
    return diagnostic


def _same(a: LabReport, b: LabReport) -> None:
    """Field by field, so that a failure names the field."""
    for f in fields(LabReport):
        assert getattr(a, f.name) == getattr(b, f.name), f.name


# ---- the record ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        _single,
        _explained,
        _specimen,
        lambda: LabReport(MODEL, failures=(Failure("x.png", "INVALID_ARGUMENT", "not an image"),)),
        lambda: LabReport(
            NORMAL_MODEL,
            specimen=_gated_specimen(needs_review=False),
            failures=(Failure("e.png", "INVALID_ARGUMENT", "truncated PNG"),),
            issued_at=ISSUED,
        ),
        lambda: finalize(_single(), REVIEWER, at=LATER),
        lambda: correct(finalize(_specimen(), REVIEWER), OTHER, {2: "Benign", 1: "Early"}, "smudged"),
        lambda: correct(finalize(_explained(), REVIEWER), REVIEWER, {0: "Pre"}, "nucleoli"),
    ],
    ids=[
        "single",
        "explanation",
        "specimen",
        "failure",
        "specimen-failures",
        "final",
        "corrected",
        "overlay",
    ],
)
def test_a_record_round_trips_every_kind_of_report(make: Any, tmp_path: Path) -> None:
    report: LabReport = make()
    record = report_to_record(report, control_id="ABC", hl7={"sending_facility": "LAB"})
    assert record["format"] == FORMAT and record["revision"] == 1
    assert record["history"][0]["status"] == report.status and record["history"][0]["control_id"] == "ABC"
    write_record(tmp_path / "r.report.json", record)
    data = read_record(tmp_path / "r.report.json")
    assert data == record  # JSON all the way: nothing is lost in the file
    back = report_from_record(data)
    _same(back, report)
    assert record_hl7_options(data) == {"sending_facility": "LAB"}
    # The messages are the same too (same ids, same overlay), past MSH and its time of sending.
    assert to_oru(back).split("\r", 1)[1] == to_oru(report).split("\r", 1)[1]


def test_the_overlay_png_and_the_zones_survive_the_record() -> None:
    back = report_from_record(json.loads(json.dumps(report_to_record(_explained()))))
    assert back.overlay_png == PNG and back.overlay_reference == "cell-1.png.overlay.png"
    specimen = _specimen()
    back = report_from_record(report_to_record(specimen))
    assert back.observed_at is not None and back.observed_at.utcoffset() == timedelta(hours=2)
    assert back.specimen is not None and back.specimen.counted == 2


def test_a_record_keeps_a_missing_number_as_nan_and_an_unknown_counted_as_unknown() -> None:
    cell = replace(_cell(), confidence=math.nan, domain_score=None)
    specimen = replace(_gated_specimen(), counted=None)
    report = LabReport(NORMAL_MODEL, classification=cell, specimen=specimen)
    text = json.dumps(report_to_record(report), allow_nan=False)  # valid JSON: no NaN written
    back = report_from_record(json.loads(text))
    assert back.cell is not None and math.isnan(back.cell.confidence) and back.cell.domain_score is None
    assert back.specimen is not None and back.specimen.counted is None


def test_write_record_of_a_report_writes_revision_one(tmp_path: Path) -> None:
    path = tmp_path / "cell.png.report.json"
    written = write_record(path, _single(), control_id="C1", hl7={"receiving_application": "LIS"})
    assert read_record(path) == written and written["revision"] == 1
    assert written["hl7"] == {"receiving_application": "LIS"}
    with pytest.raises(ValueError, match="unknown HL7 options"):
        report_to_record(_single(), hl7={"colour": "red"})
    with pytest.raises(ValueError, match="already made"):
        write_record(path, written, control_id="C2")


def test_the_config_comes_from_the_caller_not_the_record() -> None:
    config = replace(default_config(), source="the LIS team's file")
    assert "config" not in report_to_record(_single())["report"]
    assert report_from_record(report_to_record(_single()), config=config).config is config
    assert report_from_record(report_to_record(_single())).config is default_config()


def test_next_record_counts_revisions_and_keeps_the_history() -> None:
    first = report_to_record(_single(), control_id="P1", hl7={"sending_facility": "LAB"})
    final = finalize(_single(), REVIEWER, at=LATER)
    second = next_record(first, final, control_id="F1")
    fixed = correct(final, OTHER, {0: "Pre"}, "blast morphology", at=LATER + timedelta(hours=1))
    third = next_record(second, fixed, control_id="C1")
    assert third["revision"] == 3 and third["hl7"] == {"sending_facility": "LAB"}
    assert [(h["revision"], h["status"], h["reviewer"], h["control_id"]) for h in third["history"]] == [
        (1, "preliminary", "", "P1"),
        (2, "final", "HAEM1", "F1"),
        (3, "corrected", "HAEM2", "C1"),
    ]
    assert third["history"][1]["at"] == LATER.isoformat()
    assert third["history"][2]["note"] == "blast morphology" and third["history"][1]["note"] == ""


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(format="allxai-lis-report/9"), "format 'allxai-lis-report/9'"),
        (lambda d: d.pop("format"), "format None"),
        (lambda d: d["report"].update(status="draft"), "status 'draft'"),
        (lambda d: d["report"].update(issued_at="2026-03-04T06:00:00"), "no time zone"),
        (lambda d: d["report"]["classification"].update(label=3), "classification.label must be a string"),
        (lambda d: d["report"]["model"].pop("class_names"), "model.class_names is missing"),
        (lambda d: d["report"].update(status="final"), "needs a reviewer"),
        (lambda d: d["report"].update(reviewer={"id": " "}), "reviewer"),
    ],
)
def test_a_broken_record_is_refused_with_a_clear_error(change: Any, message: str) -> None:
    data = report_to_record(_single())
    change(data)
    with pytest.raises(RecordError, match=message):
        report_from_record(data)


def test_read_record_refuses_what_is_not_a_record(tmp_path: Path) -> None:
    path = tmp_path / "x.report.json"
    with pytest.raises(RecordError, match="cannot read"):
        read_record(path)
    path.write_text("{not json")
    with pytest.raises(RecordError, match="not JSON"):
        read_record(path)
    path.write_text("[1]")
    with pytest.raises(RecordError, match="not a JSON object"):
        read_record(path)
    path.write_text('{"format": "allxai-lis-report/0"}')
    with pytest.raises(RecordError, match="another version"):
        read_record(path)


# ---- finalize and correct -----------------------------------------------------------------------------


def test_finalize_makes_a_preliminary_report_final_and_names_the_reviewer() -> None:
    preliminary = _explained()
    final = finalize(preliminary, REVIEWER, at=LATER)
    assert final.status == "final" and final.reviewer == REVIEWER and final.issued_at == LATER
    assert final.request_id == preliminary.request_id
    message = to_oru(final)
    assert _obr(message).obr_25.to_er7() == "F"
    assert _obr(message).obr_32.to_er7() == "HAEM1&Haem&Dr A."
    assert {(o.obx_11.to_er7(), o.obx_16.to_er7()) for o in segments(parse_oru(message), "OBX")} == {
        ("F", "HAEM1^Haem^Dr A.")
    }
    diagnostic = _diagnostic(final)
    (practitioner,) = _resources(to_fhir_json(final))["Practitioner"]
    assert diagnostic["status"] == "final"
    assert practitioner["identifier"][0]["value"] == "HAEM1"
    assert diagnostic["resultsInterpreter"][0]["reference"].startswith("urn:uuid:")
    (provenance,) = _resources(to_fhir_json(final))["Provenance"]
    assert [a["type"]["coding"][0]["code"] for a in provenance["agent"]] == ["author", "verifier"]
    # The overlay travels in the final report as it did in the preliminary one.
    assert final.overlay_png == PNG
    # Without a time, now.
    assert finalize(preliminary, REVIEWER).issued_at > ISSUED


def test_preliminary_final_and_corrected_share_obr3_and_the_fhir_identifier() -> None:
    preliminary = _specimen()
    final = finalize(preliminary, REVIEWER)
    fixed = correct(final, REVIEWER, {2: "Benign"}, "a lymphocyte")
    fillers = {_obr(to_oru(r)).obr_3.to_er7() for r in (preliminary, final, fixed)}
    assert fillers == {f"{preliminary.filler_number}^ALLXAI"}
    identifiers = {json.dumps(_diagnostic(r)["identifier"]) for r in (preliminary, final, fixed)}
    assert len(identifiers) == 1
    assert [_obr(to_oru(r)).obr_25.to_er7() for r in (preliminary, final, fixed)] == ["P", "F", "C"]


def test_correct_relabels_the_single_image_and_its_explanation() -> None:
    final = finalize(_explained(), REVIEWER)
    fixed = correct(final, OTHER, {0: "Pre"}, " nucleoli seen ", at=LATER)
    assert fixed.status == "corrected" and fixed.reviewer == OTHER and fixed.issued_at == LATER
    assert fixed.classification is not None and fixed.classification.label == "Pre"
    assert fixed.explanation is not None and fixed.explanation.classification.label == "Pre"
    assert fixed.explanation.label == "Pro"  # LIME explained the model's class
    assert fixed.classification.confidence == 0.83  # the model's confidence stays the model's
    assert [(c.cell, c.ai_label, c.label) for c in fixed.corrections] == [(0, "Pro", "Pre")]
    assert fixed.correction_note == "nucleoli seen"
    message = to_oru(fixed)
    assert _obr(message).obr_25.to_er7() == "C" and _obr(message).obr_32.to_er7() == "HAEM2"
    assert {o.obx_16.to_er7() for o in segments(parse_oru(message), "OBX")} == {"HAEM2"}
    diagnostic = _diagnostic(fixed)
    assert diagnostic["status"] == "corrected" and "resultsInterpreter" in diagnostic
    assert (
        "the image changed from Pro-B ALL blast to Pre-B ALL blast. Reason: nucleoli seen." in fixed.ai_note()
    )


def test_correcting_a_specimen_recomputes_counts_and_the_blast_fraction() -> None:
    final = finalize(_specimen(), REVIEWER)
    assert final.specimen is not None and final.specimen.blast_fraction == 1.0
    # Cell 2 (b.png, inside the domain) was Pro: as Benign it is no blast; cell 1 lies outside the domain,
    # so its change shows in the counts but not in the fraction.
    fixed = correct(final, REVIEWER, {2: "Benign", 1: "Early"}, "two cells misread")
    specimen = fixed.specimen
    assert specimen is not None
    assert [c.label for c in specimen.cells] == ["Early", "Benign", "Pre", "Pro"]
    assert specimen.counts == {"Benign": 1, "Early": 1, "Pre": 1, "Pro": 1}
    assert specimen.blast_fraction == 0.5
    original = _gated_specimen()
    assert (specimen.out_of_domain, specimen.ambiguous, specimen.counted) == (2, 3, 2)
    assert (specimen.needs_review, specimen.review_reason) == (True, original.review_reason)
    assert specimen.review_first == original.review_first
    assert [(c.cell, c.ai_label, c.label) for c in fixed.corrections] == [
        (1, "Pro", "Early"),
        (2, "Pro", "Benign"),
    ]
    # The blast percentage the LIS receives is the recomputed one.
    (blast,) = [
        o for o in segments(parse_oru(to_oru(fixed)), "OBX") if o.obx_3.to_er7().startswith("26446-3")
    ]
    assert float(blast.obx_5.to_er7()) == 50.0


def test_a_later_correction_accumulates_and_replaces_one_of_the_same_cell() -> None:
    final = finalize(_specimen(), REVIEWER)
    first = correct(final, REVIEWER, {2: "Benign", 3: "Early"}, "first look")
    second = correct(first, OTHER, {2: "Early"}, "second look")
    assert [(c.cell, c.ai_label, c.label) for c in second.corrections] == [
        (2, "Pro", "Early"),
        (3, "Pre", "Early"),
    ]
    assert second.correction_note == "second look" and second.reviewer == OTHER
    assert second.specimen is not None and second.specimen.blast_fraction == 1.0  # Early is a blast
    # Back to what the model said: that cell has no correction left.
    third = correct(second, OTHER, {2: "Pro"}, "it was right")
    assert [(c.cell, c.ai_label, c.label) for c in third.corrections] == [(3, "Pre", "Early")]
    assert third.specimen is not None and third.specimen.cells[1].label == "Pro"


@pytest.mark.parametrize(
    ("act", "message"),
    [
        (lambda: finalize(finalize(_single(), REVIEWER), REVIEWER), "final, not preliminary"),
        (
            lambda: finalize(LabReport(MODEL, failures=(Failure("x.png", "E", "bad"),)), REVIEWER),
            "no result to confirm",
        ),
        (lambda: correct(_single(), REVIEWER, {0: "Pre"}, "why"), "finalise it before"),
        (
            lambda: correct(finalize(_single(), REVIEWER), REVIEWER, {0: "Blast"}, "why"),
            "'Blast' is not a class",
        ),
        (
            lambda: correct(finalize(_single(), REVIEWER), REVIEWER, {1: "Pre"}, "why"),
            "cell 1 is out of range",
        ),
        (lambda: correct(finalize(_specimen(), REVIEWER), REVIEWER, {5: "Pre"}, "why"), "cells 1 to 4"),
        (
            lambda: correct(finalize(_specimen(), REVIEWER), REVIEWER, {0: "Pre"}, "why"),
            "cell 0 is the single",
        ),
        (lambda: correct(finalize(_single(), REVIEWER), REVIEWER, {0: "Pro"}, "why"), "changes nothing"),
        (lambda: correct(finalize(_single(), REVIEWER), REVIEWER, {}, "why"), "at least one change"),
        (lambda: correct(finalize(_single(), REVIEWER), REVIEWER, {0: "Pre"}, "  "), "needs a note"),
        (lambda: finalize(_single(), Reviewer("")), "reviewer needs an id"),
        (lambda: finalize(_single(), REVIEWER, at=datetime(2026, 1, 1)), "time zone"),
        (
            lambda: correct(finalize(replace(_specimen(), model=MODEL), REVIEWER), REVIEWER, {2: "Pre"}, "x"),
            "names no normal class",
        ),
    ],
)
def test_a_review_is_refused_with_a_clear_message(act: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        act()


def test_a_report_given_a_reviewer_with_a_blank_id_is_refused() -> None:
    blank = object.__new__(Reviewer)
    object.__setattr__(blank, "id", " ")
    object.__setattr__(blank, "family", "")
    object.__setattr__(blank, "given", "")
    with pytest.raises(ValueError, match="reviewer's id"):
        finalize(_single(), blank)


# ---- the CLI ------------------------------------------------------------------------------------------


def _outbox(tmp_path: Path) -> Path:
    path = tmp_path / ".allxai-outbox.sqlite"
    Outbox(path).close()  # the watcher creates it; the review only queues into it
    return path


def _review_args(record: Path, *more: str) -> list[str]:
    return [
        str(record),
        "--reviewer-id",
        "HAEM1",
        "--reviewer-family",
        "Haem",
        "--reviewer-given",
        "Dr A.",
        *more,
    ]


def test_default_outputs_sit_next_to_the_record(tmp_path: Path) -> None:
    assert default_output(tmp_path / "c.png.report.json", ".hl7") == tmp_path / "c.png.hl7"
    assert (
        default_output(tmp_path / "SP1" / "report.json", ".fhir.json")
        == tmp_path / "SP1" / "report.fhir.json"
    )
    assert default_output(tmp_path / "other.json", ".hl7") == tmp_path / "other.hl7"


def test_cli_finalize_then_correct_writes_files_record_and_outbox(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = tmp_path / "cell-1.png.report.json"
    preliminary = _explained()
    first = to_oru(preliminary, sending_facility="LAB")
    write_record(record, preliminary, control_id=control_id_of(first), hl7={"sending_facility": "LAB"})
    outbox = _outbox(tmp_path)

    assert main(["finalize", *_review_args(record, "--outbox", str(outbox))]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and out[-1].endswith("revision 2, final by Dr A. Haem (HAEM1)")
    hl7 = (tmp_path / "cell-1.png.hl7").read_bytes().decode()
    message = parse_oru(hl7)
    (obr,) = segments(message, "OBR")
    assert obr.obr_25.to_er7() == "F" and obr.obr_32.to_er7() == "HAEM1&Haem&Dr A."
    assert obr.obr_3.to_er7() == _obr(first).obr_3.to_er7()
    assert segments(message, "MSH")[0].msh_4.to_er7() == "LAB"  # the record's HL7 options
    bundle = json.loads((tmp_path / "cell-1.png.fhir.json").read_text())
    (diagnostic,) = [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport"
    ]
    assert diagnostic["status"] == "final" and "resultsInterpreter" in diagnostic
    data = read_record(record)
    assert data["revision"] == 2 and data["report"]["status"] == "final"
    assert [h["status"] for h in data["history"]] == ["preliminary", "final"]
    assert data["history"][1]["control_id"] == control_id_of(hl7)
    with Outbox(outbox) as box:
        (entry,) = box.entries(("pending",))
        assert entry.control_id == control_id_of(hl7)
        assert entry.source == "review:cell-1.png.report.json#2"
        head = box.head()
        assert head is not None and head[1] == hl7

    # The same record cannot be finalised twice; the files stay as they are.
    assert main(["finalize", *_review_args(record)]) == 1
    assert "final, not preliminary" in capsys.readouterr().err
    assert read_record(record)["revision"] == 2

    args = _review_args(record, "--cell", "0=Pre", "--note", "nucleoli", "--outbox", str(outbox))
    assert main(["correct", *args]) == 0
    capsys.readouterr()
    fixed = parse_oru((tmp_path / "cell-1.png.hl7").read_bytes().decode())
    (obr,) = segments(fixed, "OBR")
    assert obr.obr_25.to_er7() == "C" and obr.obr_3.to_er7() == _obr(first).obr_3.to_er7()
    data = read_record(record)
    assert data["revision"] == 3 and data["report"]["corrections"] == [
        {"cell": 0, "ai_label": "Pro", "label": "Pre"}
    ]
    assert data["history"][2]["note"] == "nucleoli"
    assert report_from_record(data).overlay_png == PNG
    with Outbox(outbox) as box:
        assert len(box.entries(("pending",))) == 2
    # The outbox commands still work beside the review ones, and list what the reviews queued.
    assert main(["outbox", "--path", str(outbox), "list"]) == 0
    listing = capsys.readouterr().out
    assert "review:cell-1.png.report.json#3" in listing and "depth: pending 2" in listing


def test_cli_correct_a_specimen_with_explicit_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "SP-9"
    folder.mkdir()
    record = folder / "report.json"
    write_record(record, finalize(_specimen(), REVIEWER))
    hl7, fhir = tmp_path / "out.hl7", tmp_path / "out.fhir.json"
    args = [
        "--cell",
        "2=Benign",
        "--cell",
        "4=Early",
        "--note",
        "recount",
        "--hl7",
        str(hl7),
        "--fhir",
        str(fhir),
    ]
    assert main(["correct", *_review_args(record, *args)]) == 0
    assert not (folder / "report.hl7").exists()
    (obr,) = segments(parse_oru(hl7.read_bytes().decode()), "OBR")
    assert obr.obr_25.to_er7() == "C"
    specimen = report_from_record(read_record(record)).specimen
    assert specimen is not None and specimen.blast_fraction == 0.5
    (diagnostic,) = _resources(fhir.read_text())["DiagnosticReport"]
    assert diagnostic["status"] == "corrected"
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == [str(hl7), str(fhir), str(record)]  # no outbox given
    assert read_record(record)["history"][-1]["note"] == "recount"


def test_cli_refusals_and_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record = tmp_path / "c.png.report.json"
    write_record(record, _single())
    before = record.read_bytes()

    def run(*argv: str) -> tuple[int, str]:
        code = main(list(argv))
        return code, capsys.readouterr().err

    assert run("correct", *_review_args(record, "--cell", "0=Pre", "--note", "x"))[1].endswith(
        "finalise it before correcting it\n"
    )
    code, err = run("finalize", str(record), "--reviewer-id", " ")
    assert code == 1 and "reviewer needs an id" in err
    code, err = run("finalize", *_review_args(tmp_path / "missing.report.json"))
    assert code == 1 and "cannot read the report record" in err
    (tmp_path / "bad.report.json").write_text('{"format": "other/1"}')
    code, err = run("finalize", *_review_args(tmp_path / "bad.report.json"))
    assert code == 1 and "has format 'other/1'" in err
    # A LIS configuration that lacks one of the model's classes: nothing is sent or written.
    config = tmp_path / "lis.toml"
    config.write_text('[classes]\nPro = { code = "PRO", display = "Pro-B" }\n')
    code, err = run("finalize", *_review_args(record, "--lis-config", str(config)))
    assert code == 1 and "has no code in" in err
    assert not (tmp_path / "c.png.hl7").exists() and record.read_bytes() == before
    # Usage: a missing option, a malformed --cell, a cell twice, an outbox that does not exist, outputs
    # that would overwrite the record.
    assert run("finalize", str(record))[0] == 2
    assert run("correct", *_review_args(record, "--note", "x"))[0] == 2
    code, err = run("correct", *_review_args(record, "--cell", "two=Pre", "--note", "x"))
    assert code == 2 and "N=CLASS" in err
    assert run("correct", *_review_args(record, "--cell", "1=Pre", "--cell", "1=Pro", "--note", "x"))[0] == 2
    code, err = run("finalize", *_review_args(record, "--outbox", str(tmp_path / "none.sqlite")))
    assert code == 2 and "no outbox" in err
    assert run("finalize", *_review_args(record, "--hl7", str(record)))[0] == 2
    assert record.read_bytes() == before and not (tmp_path / "none.sqlite").exists()
    # The review itself then works.
    assert run("finalize", *_review_args(record))[0] == 0


def test_an_unmapped_class_is_refused_by_the_sdk_builders_too() -> None:
    config = replace(default_config(), classes={"Pro": Coding("PRO", "Pro-B")})
    final = finalize(replace(_single(), config=config), REVIEWER)
    with pytest.raises(UnmappedClassError):
        to_oru(final)


def test_a_relabelled_cell_keeps_everything_but_its_class() -> None:
    cell: ClassifyResult = _gated("amb", "c.png")
    final = finalize(LabReport(NORMAL_MODEL, classification=cell), REVIEWER)
    fixed = correct(final, REVIEWER, {0: "Benign"}, "normal")
    assert fixed.cell == replace(cell, label="Benign")
    assert fixed.issued_at.tzinfo is UTC or fixed.issued_at.utcoffset() == timedelta(0)
