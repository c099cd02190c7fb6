"""HL7 v2.5 ORU^R01 from reports, validated in hl7apy's strict mode."""

from __future__ import annotations

import base64
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from allxai.client import (
    SpecimenResult,
)
from allxai.lis import (
    LabReport,
    UnmappedClassError,
    build_oru,
    load_config,
    parse_oru,
    to_oru,
)
from allxai.lis.hl7 import MAX_ED_DATA_CHARS, ed_bytes, segments
from tests.conftest import png_bytes
from tests.lis.reports import (
    ISSUED,
    MODEL,
    SCORES,
    WHEN,
    _cell,
    _explanation,
    _gated,
    _gated_specimen,
    _notes_after,
    _obx,
)

#: The stable class codes of the built-in lis.toml: what the LIS files, whatever the model calls its classes.
CODES = {"Benign": "BENIGN", "Early": "ALL-EPREB", "Pre": "ALL-PREB", "Pro": "ALL-PROB"}
#: The blast percentage's OBX-3 code under the built-in lis.toml (LOINC 26446-3).
BLAST_LOINC = "26446-3"


def test_hl7_oru_validates_strictly_with_class_confidence_overlay_model_and_ai_label(cell_png: bytes) -> None:
    report = LabReport(
        MODEL,
        explanation=_explanation(cell_png),
        specimen_id="S-2026-001",
        order_id="ORD-7",
        order_namespace="LIS",
        patient_id="MRN123",
        patient_id_authority="HOSP",
        observed_at=WHEN,
        issued_at=ISSUED,
    )
    er7 = to_oru(report, sending_facility="HAEM LAB")
    assert er7.startswith("MSH|^~\\&|ALLXAI|HAEM LAB|") and er7.endswith("\r") and "\n" not in er7
    message = parse_oru(er7)  # strict parse, then hl7apy's strict validate()

    assert message.msh.msh_9.to_er7() == "ORU^R01^ORU_R01" and message.msh.msh_12.to_er7() == "2.5"
    (pid,) = segments(message, "PID")
    assert pid.pid_3.to_er7() == "MRN123^^^HOSP^MR"
    (obr,) = segments(message, "OBR")
    # The LIS's order as placer, allxai's own result id (the request id) as filler, the specimen in SPM.
    assert obr.obr_2.to_er7() == "ORD-7^LIS" and obr.obr_3.to_er7() == "req-42^ALLXAI"
    assert obr.obr_4.to_er7() == "ALLXAI-CLS^Leukaemia cell classification^99ALX"
    assert obr.obr_7.to_er7() == "20260304050607+0000" and obr.obr_25.to_er7() == "P"
    (spm,) = segments(message, "SPM")
    assert spm.spm_2.to_er7() == "S-2026-001&LIS" and spm.spm_4.to_er7().startswith("UNK^")

    # The class as the LIS's stable code (lis.toml), never the model's class name.
    (predicted,) = _obx(message, "ALLXAI-CLASS")
    assert predicted.obx_2.to_er7() == "CWE"
    assert predicted.obx_5.to_er7() == "ALL-PROB^Pro-B ALL blast^99ALX"
    assert float(predicted.obx_9.to_er7()) == pytest.approx(0.83)
    (confidence,) = _obx(message, "ALLXAI-CONF")
    assert confidence.obx_2.to_er7() == "NM" and float(confidence.obx_9.to_er7()) == pytest.approx(0.83)
    for label, score in SCORES.items():
        (obx,) = _obx(message, f"ALLXAI-P-{CODES[label]}")
        assert float(obx.obx_5.to_er7()) == pytest.approx(score) == float(obx.obx_9.to_er7())
    assert (
        _obx(message, "ALLXAI-P-ALL-PREB")[0].obx_3.to_er7()
        == "ALLXAI-P-ALL-PREB^Probability of Pre-B ALL blast^99ALX"
    )
    assert _obx(message, "ALLXAI-REQID")[0].obx_5.to_er7() == "req-42"

    (overlay,) = _obx(message, "ALLXAI-LIME")
    assert overlay.obx_2.to_er7() == "ED"
    assert overlay.obx_5.to_er7().startswith("^IM^PNG^Base64^")
    assert ed_bytes(overlay) == cell_png

    # The model as the equipment of every observation, and once in words.
    for obx in segments(message, "OBX"):
        assert obx.obx_18.to_er7() == "allnet:3^ALLXAI"
        assert obx.obx_11.to_er7() == "P"
        assert obx.obx_14.to_er7() == "20260304050607+0000"  # the LIS's time of the observation
        assert obx.obx_19.to_er7() == "20260304060000+0000"  # when allxai analysed it
    assert _obx(message, "ALLXAI-MODEL")[0].obx_5.to_er7() == "allnet version 3"

    # The AI transparency label: coded (AIAST) and in words.
    (label,) = _obx(message, "ALLXAI-AILABEL")
    assert label.obx_5.to_er7().split("^")[:2] == ["AIAST", "Artificial Intelligence asserted"]
    notes = [n.nte_3.to_er7() for n in segments(message, "NTE")]
    assert any("AI-generated result (AIAST" in n for n in notes)
    assert any("LIME explanation of Pro-B ALL blast: 100 samples, seed 7" in n for n in notes)


def test_hl7_specimen_summary_without_patient(cell_png: bytes) -> None:
    cells = [_cell("Pro", 0.9, "a.png"), _cell("Benign", 0.6, "b.png"), _cell("Pro", 0.7, "c.png")]
    specimen = SpecimenResult(cells, {"Benign": 1, "Early": 0, "Pre": 0, "Pro": 2}, 2 / 3, [1, 2, 0])
    message = parse_oru(to_oru(LabReport(MODEL, specimen=specimen, specimen_id="S-9", observed_at=WHEN)))
    assert segments(message, "PID") == []  # no patient id: the optional PATIENT group is left out
    counts = [int(_obx(message, f"ALLXAI-N-{CODES[k]}")[0].obx_5.to_er7()) for k in MODEL.class_names]
    assert counts == [1, 0, 0, 2]
    assert int(_obx(message, "ALLXAI-NCELLS")[0].obx_5.to_er7()) == 3
    (blast,) = _obx(message, BLAST_LOINC)
    assert float(blast.obx_5.to_er7()) == pytest.approx(66.666667) and blast.obx_6.to_er7().startswith("%^")
    per_cell = _obx(message, "ALLXAI-CLASS")
    assert [o.obx_4.to_er7() for o in per_cell] == ["1", "2", "3"]
    assert [o.obx_5.to_er7().split("^")[0] for o in per_cell] == ["ALL-PROB", "BENIGN", "ALL-PROB"]
    assert [float(o.obx_9.to_er7()) for o in per_cell] == pytest.approx([0.9, 0.6, 0.7])


def test_hl7_overlay_too_large_to_embed_goes_by_reference() -> None:
    noise = np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8)
    big = png_bytes(noise)
    assert len(base64.b64encode(big)) > MAX_ED_DATA_CHARS
    report = LabReport(
        MODEL, explanation=_explanation(big), observed_at=WHEN, overlay_reference="cell-1.png.overlay.png"
    )
    (overlay,) = _obx(parse_oru(to_oru(report)), "ALLXAI-LIME")
    assert overlay.obx_2.to_er7() == "RP"
    assert overlay.obx_5.to_er7() == "cell-1.png.overlay.png^ALLXAI^IM^PNG"


def test_hl7_flags_an_image_outside_the_domain_and_carries_its_set() -> None:
    report = LabReport(MODEL, classification=_gated("ood"), issued_at=ISSUED)
    message = parse_oru(to_oru(report))  # strict parse and validate
    (predicted,) = _obx(message, "ALLXAI-CLASS")
    assert predicted.obx_8.to_er7() == "A"  # abnormal flag: read the note
    notes = _notes_after(message, predicted)
    assert notes[0].startswith(
        "The image lies outside the model's training domain (domain score 41.2, above the calibrated "
        "threshold 12.0): the classification is not for diagnosis."
    )
    assert notes[1].startswith("Prediction set at 95% coverage: Pro-B ALL blast, Pre-B ALL blast.")
    assert "ambiguous" in notes[1]
    # The report's own notes: the AI label, then the warning, before any result.
    obr_notes = [n.nte_3.to_er7() for n in segments(message, "NTE")][:2]
    assert obr_notes[1] == (
        "WARNING: the image lies outside the model's training domain; its classification is not for "
        "diagnosis."
    )
    (domain,) = _obx(message, "ALLXAI-DOMAIN")
    assert (
        domain.obx_5.to_er7().startswith("OUT^Outside the model's training domain")
        and domain.obx_8.to_er7() == "A"
    )
    (score,) = _obx(message, "ALLXAI-DSCORE")
    assert float(score.obx_5.to_er7()) == 41.2 and score.obx_8.to_er7() == "H"
    (threshold,) = _obx(message, "ALLXAI-DTHRESH")
    assert float(threshold.obx_5.to_er7()) == 12.0
    (members,) = _obx(message, "ALLXAI-SET")
    # One CWE repetition each.
    assert [m.to_er7().split("^")[0] for m in members.obx_5] == ["ALL-PROB", "ALL-PREB"]
    (coverage,) = _obx(message, "ALLXAI-COVER")
    assert float(coverage.obx_5.to_er7()) == 0.95
    # Only what is out of the ordinary is flagged.
    flagged = {o.obx_3.to_er7().split("^")[0] for o in segments(message, "OBX") if o.obx_8.to_er7()}
    assert flagged == {"ALLXAI-CLASS", "ALLXAI-DOMAIN", "ALLXAI-DSCORE"}


def test_hl7_inside_the_domain_is_not_flagged_and_says_so() -> None:
    message = parse_oru(to_oru(LabReport(MODEL, classification=_gated("amb"))))
    assert not [o for o in segments(message, "OBX") if o.obx_8.to_er7()]
    (predicted,) = _obx(message, "ALLXAI-CLASS")
    notes = _notes_after(message, predicted)
    assert notes[0] == (
        "The image lies inside the model's training domain (domain score 7.5, within the calibrated "
        "threshold 12.0)."
    )
    assert _obx(message, "ALLXAI-DOMAIN")[0].obx_5.to_er7().startswith("IN^")
    assert [m.to_er7().split("^")[0] for m in _obx(message, "ALLXAI-SET")[0].obx_5] == [
        "ALL-PREB",
        "ALL-PROB",
    ]
    assert len(segments(message, "NTE")) == 1 + 2  # the AI label; the domain and the set: no warning
    single = parse_oru(to_oru(LabReport(MODEL, classification=_gated("in"))))
    (members,) = _obx(single, "ALLXAI-SET")
    assert [m.to_er7() for m in members.obx_5] == ["ALL-PROB^Pro-B ALL blast^99ALX"]
    assert "Pro-B ALL blast alone" in _notes_after(single, _obx(single, "ALLXAI-CLASS")[0])[1]


def test_hl7_without_a_domain_check_says_so_and_flags_nothing() -> None:
    message = parse_oru(to_oru(LabReport(MODEL, classification=_gated("none"))))
    assert not [o for o in segments(message, "OBX") if o.obx_8.to_er7()]
    (predicted,) = _obx(message, "ALLXAI-CLASS")
    assert _notes_after(message, predicted) == [
        "No domain check: the model carries none, so it was not checked whether the image is like the images "
        "the model was trained on.",
        "No prediction set: the model carries no conformal calibration.",
    ]
    assert (
        _obx(message, "ALLXAI-DOMAIN")[0].obx_5.to_er7() == "NONE^No domain check: the model has none^99ALX"
    )
    for code in ("ALLXAI-DSCORE", "ALLXAI-DTHRESH", "ALLXAI-SET", "ALLXAI-COVER"):
        assert _obx(message, code) == [], code
    # Calibrated, with an empty set: the coverage, and words for what the empty set means.
    empty = replace(_gated("in"), prediction_set=[])
    message = parse_oru(to_oru(LabReport(MODEL, classification=empty)))
    assert _obx(message, "ALLXAI-SET") == [] and len(_obx(message, "ALLXAI-COVER")) == 1
    assert "empty (no class was needed" in _notes_after(message, _obx(message, "ALLXAI-CLASS")[0])[1]


def test_hl7_specimen_counts_cells_outside_the_domain_and_says_it_needs_review() -> None:
    report = LabReport(MODEL, specimen=_gated_specimen(), specimen_id="S-3", observed_at=WHEN)
    message = parse_oru(to_oru(report))
    counts = {
        code: int(_obx(message, code)[0].obx_5.to_er7())
        for code in ("ALLXAI-NCELLS", "ALLXAI-NCOUNT", "ALLXAI-NOOD", "ALLXAI-NAMB")
    }
    assert counts == {"ALLXAI-NCELLS": 4, "ALLXAI-NCOUNT": 2, "ALLXAI-NOOD": 2, "ALLXAI-NAMB": 3}
    (blast,) = _obx(message, BLAST_LOINC)
    assert _notes_after(message, blast)[0] == (
        "The blast fraction counts only the 2 of 4 cells inside the model's training domain; the 2 cells "
        "outside it are left out."
    )
    (review,) = _obx(message, "ALLXAI-REVIEW")
    assert review.obx_5.to_er7() == "Y^Yes^HL70136" and review.obx_8.to_er7() == "A"
    assert _notes_after(message, review) == [
        "Needs review: 2 of 4 cells (50%) lie outside the model's training domain, more than the 25% allowed",
        "Cells to review first (outside the training domain, then least confident): 1, 4, 3, 2",
    ]
    assert any(
        n.nte_3.to_er7().startswith("WARNING: the specimen needs review") for n in segments(message, "NTE")
    )
    per_cell = _obx(message, "ALLXAI-CLASS")
    assert [o.obx_8.to_er7() for o in per_cell] == ["A", "", "", "A"]
    assert _notes_after(message, per_cell[0])[0].startswith(
        "Outside the model's training domain: not for diagnosis."
    )
    assert _notes_after(message, per_cell[1]) == []  # inside, one class: nothing to say
    assert _notes_after(message, per_cell[2])[0].startswith("Ambiguous: prediction set at 95% coverage: Pre")

    calm = parse_oru(to_oru(LabReport(MODEL, specimen=_gated_specimen(needs_review=False))))
    (review,) = _obx(calm, "ALLXAI-REVIEW")
    assert review.obx_5.to_er7() == "N^No^HL70136" and review.obx_8.to_er7() == ""
    assert _notes_after(calm, review) == []
    # No review asked for: the cells to look at first go with the blast percentage instead.
    assert _notes_after(calm, _obx(calm, BLAST_LOINC)[0])[-1] == (
        "Cells to review first (outside the training domain, then least confident): 1, 4, 3, 2"
    )
    # A model without a check: every cell counted, and the note says why.
    cells = [_cell("Pro", 0.9, "a.png"), _cell("Benign", 0.6, "b.png")]
    plain = SpecimenResult(cells, {"Benign": 1, "Early": 0, "Pre": 0, "Pro": 1}, 0.5, [1, 0])
    message = parse_oru(to_oru(LabReport(MODEL, specimen=plain)))
    assert int(_obx(message, "ALLXAI-NCOUNT")[0].obx_5.to_er7()) == 2
    assert _notes_after(message, _obx(message, BLAST_LOINC)[0])[0] == (
        "No domain check: the model carries none, so the blast fraction counts all 2 cells."
    )
    assert not [o for o in segments(message, "OBX") if o.obx_8.to_er7()]


def test_hl7_explanation_warnings_follow_the_overlay(cell_png: bytes) -> None:
    warning = "the image lies outside the model's training domain: the explanation shows what it looked at"
    explained = replace(_explanation(cell_png), classification=_gated("ood"), warnings=[warning])
    message = parse_oru(to_oru(LabReport(MODEL, explanation=explained)))
    (overlay,) = _obx(message, "ALLXAI-LIME")
    assert _notes_after(message, overlay)[1] == f"Warning: {warning}"


def test_hl7_a_class_the_lis_configuration_lacks_is_refused_before_anything_is_built() -> None:
    odd = replace(_cell(), label="Myelo", scores={**SCORES, "Myelo": 0.0})
    with pytest.raises(UnmappedClassError, match="'Myelo' has no code"):
        build_oru(LabReport(MODEL, classification=odd))
    # A specimen's cell too, although a specimen sends no per-class probability of it.
    cells = [_cell("Pro", 0.9, "a.png"), replace(_cell("Benign", 0.6, "b.png"), label="Myelo")]
    specimen = SpecimenResult(cells, {"Benign": 0, "Early": 0, "Pre": 0, "Pro": 1}, 0.5, [1, 0])
    with pytest.raises(UnmappedClassError, match="Myelo"):
        build_oru(LabReport(MODEL, specimen=specimen))


def test_hl7_uses_the_lis_teams_own_configuration(tmp_path: Path) -> None:
    """Another lis.toml: its codes and displays (escaped), and without a LOINC code the local blast code."""
    path = tmp_path / "lis.toml"
    classes = {"Benign": "HGON", "Early": "EPB", "Pre": "PREB", "Pro": "PROB"}
    path.write_text(
        "\n".join(
            f'[classes.{label}]\ncode = "{code}"\ndisplay = "{label} | cells & co^"'
            for label, code in classes.items()
        ),
        encoding="utf-8",
    )
    config = load_config(path)
    assert config.blast_loinc is None  # the file has no [blast_percentage]
    cells = [_cell("Pro", 0.9, "a.png"), _cell("Pre", 0.7, "b.png")]
    specimen = SpecimenResult(cells, {"Benign": 0, "Early": 0, "Pre": 1, "Pro": 1}, 1.0, [1, 0])
    report = LabReport(MODEL, classification=_cell(), specimen=specimen, config=config)
    message = parse_oru(to_oru(report))
    (single, *per_cell) = _obx(message, "ALLXAI-CLASS")
    # HL7 delimiters in a display name are escaped, not taken as structure.
    assert single.obx_5.to_er7() == "PROB^Pro \\F\\ cells \\T\\ co\\S\\^99ALX"
    assert [o.obx_5.to_er7().split("^")[0] for o in per_cell] == ["PROB", "PREB"]
    assert _obx(message, "ALLXAI-P-HGON")[0].obx_3.to_er7() == (
        "ALLXAI-P-HGON^Probability of Benign \\F\\ cells \\T\\ co\\S\\^99ALX"
    )
    assert int(_obx(message, "ALLXAI-N-PREB")[0].obx_5.to_er7()) == 1
    (blast,) = _obx(message, "ALLXAI-BLAST")
    assert blast.obx_3.to_er7() == "ALLXAI-BLAST^Blast fraction^99ALX" and _obx(message, BLAST_LOINC) == []
