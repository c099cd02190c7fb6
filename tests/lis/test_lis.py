"""The LIS adapter: HL7 v2.5 ORU^R01 in hl7apy's strict mode, the FHIR bundle, and the folder watcher."""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest

from allxai.client import (
    AllxaiClientError,
    ClassifyResult,
    Client,
    ExplainResult,
    ModelDescription,
    SpecimenResult,
)
from allxai.lis import AIAST_CODE, AIAST_SYSTEM, LabReport, parse_bundle, parse_oru, to_fhir_json, to_oru
from allxai.lis import _folder as files
from allxai.lis import _watcher as watcher_module
from allxai.lis.hl7 import MAX_ED_DATA_CHARS, ed_bytes, segments
from allxai.lis.watch import Options, Watcher, main
from tests.conftest import RunningGateway, png_bytes

MODEL = ModelDescription(
    name="allnet",
    version=3,
    class_names=["Benign", "Early", "Pre", "Pro"],
    input_size=(48, 48),
    card={"display_names": {"Pro": "Pro-B ALL", "Pre": "Pre|B & co^"}},
)
SCORES = {"Benign": 0.02, "Early": 0.05, "Pre": 0.1, "Pro": 0.83}
WHEN = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
ISSUED = datetime(2026, 3, 4, 6, 0, 0, tzinfo=UTC)


def _cell(label: str = "Pro", confidence: float = 0.83, image_id: str = "cell-1.png") -> ClassifyResult:
    scores = dict(SCORES) if label == "Pro" else {**{k: 0.0 for k in SCORES}, label: confidence}
    return ClassifyResult(label, confidence, scores, "allnet", 3, "req-42", image_id)


def _explanation(png: bytes) -> ExplainResult:
    return ExplainResult(
        classification=_cell(),
        label="Pro",
        weights=[(4, 0.3), (1, 0.1)],
        top_segments=[4, 1],
        seed=7,
        num_samples=100,
        score=0.61,
        pictures={"overlay": png},
        quality={"r2": 0.61, "stability": 0.9},
    )


def _obx(message: Any, code: str) -> list[Any]:
    return [o for o in segments(message, "OBX") if o.obx_3.to_er7().split("^")[0] == code]


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

    (predicted,) = _obx(message, "ALLXAI-CLASS")
    assert predicted.obx_2.to_er7() == "CWE"
    assert predicted.obx_5.to_er7() == "Pro^Pro-B ALL^99ALX"
    assert float(predicted.obx_9.to_er7()) == pytest.approx(0.83)
    (confidence,) = _obx(message, "ALLXAI-CONF")
    assert confidence.obx_2.to_er7() == "NM" and float(confidence.obx_9.to_er7()) == pytest.approx(0.83)
    for label, score in SCORES.items():
        (obx,) = _obx(message, f"ALLXAI-P-{label}")
        assert float(obx.obx_5.to_er7()) == pytest.approx(score) == float(obx.obx_9.to_er7())
    # HL7 delimiters in a display name are escaped, not taken as structure.
    assert (
        _obx(message, "ALLXAI-P-Pre")[0].obx_3.to_er7()
        == "ALLXAI-P-Pre^Probability of Pre\\F\\B \\T\\ co\\S\\^99ALX"
    )

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
    assert any("LIME explanation of Pro-B ALL: 100 samples, seed 7" in n for n in notes)


def test_hl7_specimen_summary_without_patient(cell_png: bytes) -> None:
    cells = [_cell("Pro", 0.9, "a.png"), _cell("Benign", 0.6, "b.png"), _cell("Pro", 0.7, "c.png")]
    specimen = SpecimenResult(cells, {"Benign": 1, "Early": 0, "Pre": 0, "Pro": 2}, 2 / 3, [1, 2, 0])
    message = parse_oru(to_oru(LabReport(MODEL, specimen=specimen, specimen_id="S-9", observed_at=WHEN)))
    assert segments(message, "PID") == []  # no patient id: the optional PATIENT group is left out
    assert [int(_obx(message, f"ALLXAI-N-{k}")[0].obx_5.to_er7()) for k in MODEL.class_names] == [1, 0, 0, 2]
    assert int(_obx(message, "ALLXAI-NCELLS")[0].obx_5.to_er7()) == 3
    (blast,) = _obx(message, "ALLXAI-BLAST")
    assert float(blast.obx_5.to_er7()) == pytest.approx(66.666667) and blast.obx_6.to_er7().startswith("%^")
    per_cell = _obx(message, "ALLXAI-CLASS")
    assert [o.obx_4.to_er7() for o in per_cell] == ["1", "2", "3"]
    assert [o.obx_5.to_er7().split("^")[0] for o in per_cell] == ["Pro", "Benign", "Pro"]
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


def test_fhir_bundle_validates_with_presented_form_ai_label_and_device(cell_png: bytes) -> None:
    cells = [_cell("Pro", 0.9, "a.png"), _cell("Benign", 0.6, "b.png")]
    specimen = SpecimenResult(cells, {"Benign": 1, "Early": 0, "Pre": 0, "Pro": 1}, 0.5, [1, 0])
    report = LabReport(
        MODEL,
        explanation=_explanation(cell_png),
        specimen=specimen,
        specimen_id="S-1",
        order_id="ORD-1",
        patient_id="MRN123",
        observed_at=WHEN,
    )
    text = to_fhir_json(report)
    # Rebuilding the same report (same request id) gives the same resource identifiers.
    assert [e["fullUrl"] for e in json.loads(text)["entry"]] == [
        e["fullUrl"] for e in json.loads(to_fhir_json(report))["entry"]
    ]
    bundle = parse_bundle(text)  # fhir.resources (R4B models) validates while parsing
    assert bundle.type == "collection"
    by_type: dict[str, list[Any]] = {}
    urls: dict[str, Any] = {}
    for entry in bundle.entry:
        by_type.setdefault(entry.resource.get_resource_type(), []).append(entry.resource)
        urls[entry.fullUrl] = entry.resource
    (device,) = by_type["Device"]
    assert device.deviceName[0].name == "allnet" and device.version[0].value == "3"
    (diagnostic,) = by_type["DiagnosticReport"]
    (form,) = diagnostic.presentedForm
    assert form.contentType == "image/png" and form.data == cell_png  # base64Binary, decoded by the model
    assert (
        json.loads(text)["entry"][-2]["resource"]["presentedForm"][0]["data"]
        == base64.b64encode(cell_png).decode()
    )
    assert diagnostic.specimen[0].reference in urls and diagnostic.subject.reference in urls
    assert [(i.system, i.value) for i in diagnostic.identifier] == [("urn:allxai:request", "req-42")]
    (order,) = diagnostic.basedOn
    assert order.type == "ServiceRequest" and order.identifier.value == "ORD-1"
    assert order.identifier.type.coding[0].code == "PLAC"
    assert diagnostic.effectiveDateTime is not None
    label = diagnostic.meta.security[0]
    assert (label.system, label.code, label.display) == (
        AIAST_SYSTEM,
        AIAST_CODE,
        "Artificial Intelligence asserted",
    )

    observations = by_type["Observation"]
    assert [r.reference for r in diagnostic.result] == [
        u for u, r in urls.items() if r.get_resource_type() == "Observation"
    ]
    for obs in observations:
        assert urls[obs.device.reference] is device
        assert [(s.system, s.code) for s in obs.meta.security] == [(AIAST_SYSTEM, AIAST_CODE)]
        assert obs.specimen.reference == diagnostic.specimen[0].reference
    classified = [o for o in observations if o.code.coding[0].code == "ALLXAI-CLASS"]
    assert [o.valueCodeableConcept.coding[0].code for o in classified] == ["Pro", "Pro", "Benign"]
    confidence = classified[0].component[0]
    assert confidence.code.coding[0].code == "ALLXAI-CONF" and float(confidence.valueQuantity.value) == 0.83
    (blast,) = [o for o in observations if o.code.coding[0].code == "ALLXAI-BLAST"]
    assert float(blast.valueQuantity.value) == 50.0 and blast.valueQuantity.code == "%"
    (provenance,) = by_type["Provenance"]
    assert provenance.agent[0].who.reference == observations[0].device.reference
    assert {t.reference for t in provenance.target} == {r.reference for r in diagnostic.result} | {
        u for u, r in urls.items() if r is diagnostic
    }


def test_lab_report_refuses_empty_or_naive_input() -> None:
    with pytest.raises(ValueError, match="needs a classification"):
        LabReport(MODEL)
    with pytest.raises(ValueError, match="time zone"):
        LabReport(MODEL, classification=_cell(), observed_at=datetime(2026, 1, 1))


def test_without_lis_identifiers_or_time_nothing_is_made_up() -> None:
    """No specimen, order or observation time unless the LIS gave them; the result time is labelled so."""
    report = LabReport(MODEL, classification=_cell(), issued_at=ISSUED)
    message = parse_oru(to_oru(report))
    (obr,) = segments(message, "OBR")
    assert obr.obr_2.to_er7() == "" and obr.obr_3.to_er7() == "req-42^ALLXAI"
    assert obr.obr_7.to_er7() == "" and obr.obr_22.to_er7() == "20260304060000+0000"
    assert segments(message, "SPM") == []
    for obx in segments(message, "OBX"):
        assert obx.obx_14.to_er7() == "" and obx.obx_19.to_er7() == "20260304060000+0000"
    document = json.loads(to_fhir_json(report))
    parse_bundle(json.dumps(document))
    kinds = [e["resource"]["resourceType"] for e in document["entry"]]
    assert "Specimen" not in kinds
    for entry in document["entry"]:
        resource = entry["resource"]
        assert (
            "effectiveDateTime" not in resource and "specimen" not in resource and "basedOn" not in resource
        )
        if resource["resourceType"] in ("Observation", "DiagnosticReport"):
            assert datetime.fromisoformat(resource["issued"]) == ISSUED


def test_per_cell_reports_of_one_specimen_have_their_own_filler_numbers() -> None:
    """A receiver must not take the second cell's report for a correction of the first."""
    fillers = set()
    for request_id in ("req-1", "req-2"):
        cell = replace(_cell(), request_id=request_id)
        report = LabReport(MODEL, classification=cell, specimen_id="S-1", order_id="ORD-1")
        (obr,) = segments(parse_oru(to_oru(report)), "OBR")
        assert obr.obr_2.to_er7() == "ORD-1^ALLXAI"  # the same order...
        fillers.add(obr.obr_3.to_er7())  # ...but each result its own filler number
        (diagnostic,) = [
            e["resource"]
            for e in json.loads(to_fhir_json(report))["entry"]
            if e["resource"]["resourceType"] == "DiagnosticReport"
        ]
        assert diagnostic["identifier"] == [{"system": "urn:allxai:request", "value": request_id}]
    assert fillers == {"req-1^ALLXAI", "req-2^ALLXAI"}


def test_a_final_report_needs_the_reviewer_and_names_them() -> None:
    with pytest.raises(ValueError, match="reviewed_by"):
        LabReport(MODEL, classification=_cell(), status="final")
    report = LabReport(MODEL, classification=_cell(), status="final", reviewed_by="Dr A. Haem")
    message = parse_oru(to_oru(report))
    (obr,) = segments(message, "OBR")
    assert obr.obr_25.to_er7() == "F"
    note = segments(message, "NTE")[0].nte_3.to_er7()
    assert "reviewed and confirmed by Dr A. Haem" in note and "without human review" not in note
    bundle = json.loads(to_fhir_json(report))
    (diagnostic,) = [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport"
    ]
    assert diagnostic["status"] == "final" and "reviewed and confirmed by" in diagnostic["conclusion"]
    parse_bundle(json.dumps(bundle))


# --- the domain gate and the prediction sets ----------------------------------------------------------------


def _gated(
    kind: str = "ood", image_id: str = "cell-1.png", request_id: str = "req-42", coverage: float | None = 0.95
) -> ClassifyResult:
    """A classification as a gated model gives it: ``ood`` (outside, ambiguous set), ``amb`` (inside,
    ambiguous), ``in`` (inside, one class), ``none`` (a model without a check or calibration)."""
    if kind == "none":
        return _cell(image_id=image_id)
    label, confidence = {"ood": ("Pro", 0.999), "amb": ("Pre", 0.56), "in": ("Pro", 0.95)}[kind]
    members = {"ood": ["Pro", "Pre"], "amb": ["Pre", "Pro"], "in": ["Pro"]}[kind]
    return replace(
        _cell(label, confidence, image_id),
        request_id=request_id,
        in_domain=kind != "ood",
        domain_score={"ood": 41.2, "amb": 7.5, "in": 3.5}[kind],
        domain_threshold=12.0,
        prediction_set=members if coverage is not None else [],
        coverage=coverage,
    )


def _notes_after(message: Any, obx: Any) -> list[str]:
    """The NTE texts of the observation group that ``obx`` opens."""
    return [n.nte_3.to_er7() for n in obx.parent.children if n.name == "NTE"]


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
    assert notes[1].startswith("Prediction set at 95% coverage: Pro-B ALL, Pre\\F\\B \\T\\ co\\S\\.")
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
    assert [m.to_er7().split("^")[0] for m in members.obx_5] == ["Pro", "Pre"]  # one CWE repetition each
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
    assert [m.to_er7().split("^")[0] for m in _obx(message, "ALLXAI-SET")[0].obx_5] == ["Pre", "Pro"]
    assert len(segments(message, "NTE")) == 1 + 2  # the AI label; the domain and the set: no warning
    single = parse_oru(to_oru(LabReport(MODEL, classification=_gated("in"))))
    (members,) = _obx(single, "ALLXAI-SET")
    assert [m.to_er7() for m in members.obx_5] == ["Pro^Pro-B ALL^99ALX"]
    assert "Pro-B ALL alone" in _notes_after(single, _obx(single, "ALLXAI-CLASS")[0])[1]


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


def _gated_specimen(needs_review: bool = True) -> SpecimenResult:
    cells = [_gated("ood", "a.png"), _gated("in", "b.png"), _gated("amb", "c.png"), _gated("ood", "d.png")]
    reason = "2 of 4 cells (50%) lie outside the model's training domain, more than the 25% allowed"
    return SpecimenResult(
        cells,
        {"Benign": 0, "Early": 0, "Pre": 1, "Pro": 3},
        1.0,
        [0, 3, 2, 1],
        out_of_domain=2,
        ambiguous=3,
        counted=2,
        needs_review=needs_review,
        review_reason=reason if needs_review else "",
    )


def test_a_specimen_with_no_cell_inside_the_domain_files_no_blast_fraction() -> None:
    cells = [_gated("ood", "a.png"), _gated("ood", "b.png")]
    reason = "none of the 2 cells lies inside the model's training domain"
    specimen = SpecimenResult(
        cells, {"Benign": 0, "Early": 0, "Pre": 0, "Pro": 2}, 0.0, [0, 1],
        out_of_domain=2, counted=0, needs_review=True, review_reason=reason,
    )  # fmt: skip
    message = parse_oru(to_oru(LabReport(MODEL, specimen=specimen, observed_at=WHEN)))
    (blast,) = _obx(message, "ALLXAI-BLAST")
    assert blast.obx_5.to_er7() == "" and blast.obx_8.to_er7() == "A"
    assert (
        _notes_after(message, blast)[0]
        == "No blast fraction: no cell lies inside the model's training domain."
    )
    bundle = json.loads(to_fhir_json(LabReport(MODEL, specimen=specimen, observed_at=WHEN)))
    (observation,) = [
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Observation"
        and e["resource"]["code"]["coding"][0]["code"] == "ALLXAI-BLAST"
    ]
    assert "valueQuantity" not in observation
    assert observation["dataAbsentReason"]["coding"][0]["code"] == "not-performed"


def test_hl7_specimen_counts_cells_outside_the_domain_and_says_it_needs_review() -> None:
    report = LabReport(MODEL, specimen=_gated_specimen(), specimen_id="S-3", observed_at=WHEN)
    message = parse_oru(to_oru(report))
    counts = {
        code: int(_obx(message, code)[0].obx_5.to_er7())
        for code in ("ALLXAI-NCELLS", "ALLXAI-NCOUNT", "ALLXAI-NOOD", "ALLXAI-NAMB")
    }
    assert counts == {"ALLXAI-NCELLS": 4, "ALLXAI-NCOUNT": 2, "ALLXAI-NOOD": 2, "ALLXAI-NAMB": 3}
    (blast,) = _obx(message, "ALLXAI-BLAST")
    assert _notes_after(message, blast)[0] == (
        "The blast fraction counts only the 2 of 4 cells inside the model's training domain; the 2 cells "
        "outside it are left out."
    )
    (review,) = _obx(message, "ALLXAI-REVIEW")
    assert review.obx_5.to_er7() == "Y^Yes^HL70136" and review.obx_8.to_er7() == "A"
    assert _notes_after(message, review) == [
        "Needs review: 2 of 4 cells (50%) lie outside the model's training domain, more than the 25% allowed"
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
    # A model without a check: every cell counted, and the note says why.
    cells = [_cell("Pro", 0.9, "a.png"), _cell("Benign", 0.6, "b.png")]
    plain = SpecimenResult(cells, {"Benign": 1, "Early": 0, "Pre": 0, "Pro": 1}, 0.5, [1, 0])
    message = parse_oru(to_oru(LabReport(MODEL, specimen=plain)))
    assert int(_obx(message, "ALLXAI-NCOUNT")[0].obx_5.to_er7()) == 2
    assert _notes_after(message, _obx(message, "ALLXAI-BLAST")[0])[0] == (
        "No domain check: the model carries none, so the blast fraction counts all 2 cells."
    )
    assert not [o for o in segments(message, "OBX") if o.obx_8.to_er7()]


def test_hl7_explanation_warnings_follow_the_overlay(cell_png: bytes) -> None:
    warning = "the image lies outside the model's training domain: the explanation shows what it looked at"
    explained = replace(_explanation(cell_png), classification=_gated("ood"), warnings=[warning])
    message = parse_oru(to_oru(LabReport(MODEL, explanation=explained)))
    (overlay,) = _obx(message, "ALLXAI-LIME")
    assert _notes_after(message, overlay)[1] == f"Warning: {warning}"


def _resources(text: str) -> dict[str, list[dict[str, Any]]]:
    parse_bundle(text)  # fhir.resources validates while parsing
    found: dict[str, list[dict[str, Any]]] = {}
    for entry in json.loads(text)["entry"]:
        found.setdefault(entry["resource"]["resourceType"], []).append(entry["resource"])
    return found


def _code(resource: dict[str, Any]) -> str:
    return str(resource["code"]["coding"][0]["code"])


def test_fhir_interprets_an_image_outside_the_domain_and_gives_its_set() -> None:
    resources = _resources(to_fhir_json(LabReport(MODEL, classification=_gated("ood"))))
    (observation,) = [o for o in resources["Observation"] if _code(o) == "ALLXAI-CLASS"]
    (interpretation,) = observation["interpretation"]
    assert interpretation["coding"] == [
        {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
            "code": "EX",
            "display": "outside threshold",
        }
    ]
    assert interpretation["text"] == "Outside the model's training domain: not for diagnosis"
    notes = [n["text"] for n in observation["note"]]
    assert notes[0].startswith("The image lies outside the model's training domain (domain score 41.2")
    assert notes[1].startswith("Prediction set at 95% coverage: Pro-B ALL, Pre|B & co^.")
    parts = {}
    for component in observation["component"]:
        parts.setdefault(_code(component), []).append(component)
    assert parts["ALLXAI-DOMAIN"][0]["valueCodeableConcept"]["coding"][0]["code"] == "OUT"
    (score,) = parts["ALLXAI-DSCORE"]
    assert score["valueQuantity"]["value"] == 41.2 and score["referenceRange"][0]["high"]["value"] == 12.0
    assert score["interpretation"][0]["coding"][0]["code"] == "EX"
    assert [c["valueCodeableConcept"]["coding"][0]["code"] for c in parts["ALLXAI-SET"]] == ["Pro", "Pre"]
    assert parts["ALLXAI-COVER"][0]["valueQuantity"]["value"] == 0.95
    (diagnostic,) = resources["DiagnosticReport"]
    assert diagnostic["conclusion"].endswith(
        "WARNING: the image lies outside the model's training domain; its classification is not for "
        "diagnosis."
    )


def test_fhir_inside_the_domain_or_without_a_check_has_no_interpretation() -> None:
    for kind, first_note in (
        ("amb", "The image lies inside the model's training domain"),
        ("none", "No domain check: the model carries none"),
    ):
        resources = _resources(to_fhir_json(LabReport(MODEL, classification=_gated(kind))))
        (observation,) = [o for o in resources["Observation"] if _code(o) == "ALLXAI-CLASS"]
        assert "interpretation" not in observation, kind
        assert observation["note"][0]["text"].startswith(first_note)
        (diagnostic,) = resources["DiagnosticReport"]
        assert "WARNING" not in diagnostic["conclusion"]
    parts = {_code(c) for c in observation["component"]}
    assert "ALLXAI-DOMAIN" in parts and not parts & {"ALLXAI-DSCORE", "ALLXAI-SET", "ALLXAI-COVER"}
    assert observation["note"][1]["text"] == "No prediction set: the model carries no conformal calibration."


def test_fhir_specimen_counts_cells_outside_the_domain_and_says_it_needs_review(cell_png: bytes) -> None:
    warning = "the image lies outside the model's training domain"
    explained = replace(_explanation(cell_png), classification=_gated("ood"), warnings=[warning])
    report = LabReport(MODEL, explanation=explained, specimen=_gated_specimen(), specimen_id="S-3")
    resources = _resources(to_fhir_json(report))
    by_code: dict[str, list[dict[str, Any]]] = {}
    for observation in resources["Observation"]:
        by_code.setdefault(_code(observation), []).append(observation)
    values = {
        c: by_code[c][0]["valueQuantity"]["value"] for c in ("ALLXAI-NCOUNT", "ALLXAI-NOOD", "ALLXAI-NAMB")
    }
    assert values == {"ALLXAI-NCOUNT": 2, "ALLXAI-NOOD": 2, "ALLXAI-NAMB": 3}
    (review,) = by_code["ALLXAI-REVIEW"]
    assert review["valueBoolean"] is True
    assert review["note"][0]["text"].startswith("Needs review: 2 of 4 cells (50%) lie outside")
    (blast,) = by_code["ALLXAI-BLAST"]
    assert blast["note"][0]["text"].startswith("The blast fraction counts only the 2 of 4 cells inside")
    cells = by_code["ALLXAI-CLASS"][1:]  # after the explained image's own
    assert ["interpretation" in c for c in cells] == [True, False, False, True]
    assert [len(c.get("note", [])) for c in cells] == [1, 0, 1, 1]
    (explanation,) = by_code["ALLXAI-LIME"]
    assert explanation["note"][1]["text"] == f"Warning: {warning}"
    (diagnostic,) = resources["DiagnosticReport"]
    assert (
        "WARNING: the specimen needs review before its numbers are used: 2 of 4 cells"
        in diagnostic["conclusion"]
    )
    assert diagnostic["conclusion"].endswith(f"Explanation: {warning}")


# --- the folder watcher, against the real gateway ---------------------------------------------------------


def _outputs_complete(image: Path, explain: bool) -> dict[str, Any]:
    """Check every output of a processed image parses, and return its marker."""
    marker = files.read_marker(image)
    assert marker is not None and marker["status"] == "ok", image.name
    summary = json.loads(files.output(image, files.JSON_SUFFIX).read_text())
    assert summary["image"] == image.name and summary["label"] in MODEL.class_names
    parse_oru(files.output(image, files.HL7_SUFFIX).read_text())
    parse_bundle(files.output(image, files.FHIR_SUFFIX).read_text())
    overlay = files.output(image, files.OVERLAY_SUFFIX)
    assert overlay.exists() == explain
    if explain:
        assert overlay.read_bytes().startswith(b"\x89PNG")
        assert summary["explanation"]["overlay"] == overlay.name
    return marker


def _no_leftovers(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".allxai-tmp")]


def _images(folder: Path, cell_png: bytes, count: int) -> list[Path]:
    paths = []
    for i in range(count):
        path = folder / f"cell-{i}.png"
        path.write_bytes(cell_png)
        paths.append(path)
    return paths


def test_watch_once_processes_each_image_records_corrupt_ones_and_skips_done_on_restart(
    gateway: RunningGateway, cell_png: bytes, tmp_path: Path
) -> None:
    images = _images(tmp_path, cell_png, 2)
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "arriving.png.part").write_bytes(cell_png[:10])
    argv = [
        str(tmp_path),
        "--target",
        gateway.target,
        "--once",
        "--explain",
        "--samples",
        "60",
        "--seed",
        "1",
    ]
    assert main([*argv, "--settle", "0"]) == 0

    markers = {p.name: _outputs_complete(p, explain=True) for p in images}
    error = json.loads(files.output(bad, files.ERROR_SUFFIX).read_text())
    assert error["code"] == "INVALID_ARGUMENT"
    assert (files.read_marker(bad) or {}).get("status") == "error"
    assert not files.output(bad, files.HL7_SUFFIX).exists()
    assert not list(tmp_path.glob("notes.txt.*")) and not list(tmp_path.glob("arriving.png.part.*"))
    _no_leftovers(tmp_path)

    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert main([*argv, "--settle", "0"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before
    assert {p.name: files.read_marker(p) for p in images} == markers

    # A replaced image (new bytes under the same name) is processed again.
    images[0].write_bytes(png_bytes(np.full((48, 48, 3), 200, dtype=np.uint8)))
    assert main([*argv, "--settle", "0"]) == 0
    assert _outputs_complete(images[0], explain=True)["sha256"] != markers[images[0].name]["sha256"]
    assert files.read_marker(images[1]) == markers[images[1].name]


def test_watch_waits_for_a_file_being_written(
    gateway: RunningGateway, cell_png: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = tmp_path / "growing.png"
    # The watcher's clock is the test's: a loaded machine that stalls between two polls cannot make a
    # half-written file look settled, and the test waits for nothing.
    clock = [0.0]
    wall = time.time()
    fake = SimpleNamespace(monotonic=lambda: clock[0], time=lambda: wall + clock[0])
    monkeypatch.setattr(watcher_module, "time", fake)

    def written_now() -> None:  # the file's mtime on the same clock
        os.utime(image, ns=(int((wall + clock[0]) * 1e9),) * 2)

    with Client(gateway.target, timeout=60) as client:
        watcher = Watcher(tmp_path, client, Options(settle=2.0))
        with open(image, "wb") as f:
            f.write(cell_png[:200])
            f.flush()
            written_now()
            assert watcher.poll() == 1  # seen, not yet settled
            clock[0] += 0.5
            f.write(cell_png[200:400])
            f.flush()
            written_now()
            assert watcher.poll() == 1  # changed: the settle clock starts again
            clock[0] += 1.5
            assert watcher.poll() == 1  # 1.5 s since the last change is not enough
            assert files.read_marker(image) is None
            f.write(cell_png[400:])
        written_now()
        assert watcher.poll() == 1  # complete now, but only just written
        assert files.read_marker(image) is None
        clock[0] += 2.5  # steps exact in binary: no rounding at the settle boundary
        assert watcher.poll() == 0
    marker = _outputs_complete(image, explain=False)
    assert marker["size"] == len(cell_png)  # the whole file, not a prefix


def test_watch_stopped_between_outputs_and_marker_redoes_only_that_image(
    gateway: RunningGateway, cell_png: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = _images(tmp_path, cell_png, 3)
    real_mark = Watcher._mark
    calls = []

    def crash_on_second(self: Watcher, path: Path, *args: Any) -> None:
        calls.append(path.name)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if killed after the outputs, before the marker
        real_mark(self, path, *args)

    monkeypatch.setattr(Watcher, "_mark", crash_on_second)
    argv = [str(tmp_path), "--target", gateway.target, "--once", "--settle", "0"]
    assert main(argv) == 130
    first = files.read_marker(images[0])
    assert first is not None and files.read_marker(images[1]) is None and files.read_marker(images[2]) is None
    assert files.output(images[1], files.HL7_SUFFIX).exists()  # outputs written, marker missing

    monkeypatch.setattr(Watcher, "_mark", real_mark)
    assert main(argv) == 0
    assert files.read_marker(images[0]) == first  # done before the stop: not processed again
    for image in images:
        _outputs_complete(image, explain=False)
    _no_leftovers(tmp_path)


def test_watch_killed_with_sigkill_then_restarted_processes_every_image_once(
    gateway: RunningGateway, cell_png: bytes, tmp_path: Path
) -> None:
    images = _images(tmp_path, cell_png, 6)
    command = [sys.executable, "-m", "allxai.lis.watch", str(tmp_path), "--target", gateway.target]
    options = [
        "--explain",
        "--samples",
        "150",
        "--settle",
        "0",
        "--interval",
        "0.1",
        "--log-level",
        "WARNING",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([*command, *options], env=env)
    try:
        deadline = time.monotonic() + 60
        while not any(files.read_marker(p) for p in images):
            assert time.monotonic() < deadline, "the watcher processed nothing"
            assert process.poll() is None, "the watcher exited"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=10) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    before = {p.name: files.read_marker(p) for p in images}
    assert 1 <= sum(m is not None for m in before.values()) < len(images)  # killed part-way through

    finished = subprocess.run([*command, *options, "--once"], env=env, timeout=120, check=False)
    assert finished.returncode == 0
    after = {p.name: _outputs_complete(p, explain=True) for p in images}
    for name, marker in before.items():
        if marker is not None:
            assert after[name] == marker  # done before the kill: untouched
    _no_leftovers(tmp_path)


def test_watch_refuses_a_second_watcher_on_the_same_folder(tmp_path: Path) -> None:
    with files.folder_lock(tmp_path) as locked:
        assert locked
        assert main([str(tmp_path), "--once", "--target", "127.0.0.1:1"]) == 2


def test_watch_retries_when_the_gateway_is_down_and_finishes_later(
    gateway: RunningGateway, cell_png: bytes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (image,) = _images(tmp_path, cell_png, 1)
    down = ["--target", "127.0.0.1:9", "--timeout", "5", "--retry-after", "0", "--interval", "0.05"]
    with caplog.at_level(logging.WARNING, logger="allxai.lis"):
        assert main([str(tmp_path), *down, "--once", "--settle", "0", "--max-attempts", "2"]) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert "cell-0.png: attempt 1 failed (UNAVAILABLE); retrying in 0 s" in messages
    assert "cell-0.png: gave up after 2 attempts (last: UNAVAILABLE); not marked done" in messages
    assert files.read_marker(image) is None and not files.output(image, files.HL7_SUFFIX).exists()

    assert main([str(tmp_path), "--target", gateway.target, "--once", "--settle", "0"]) == 0
    _outputs_complete(image, explain=False)


def test_watch_reports_bad_security_settings_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main([str(tmp_path), "--once", "--target", "127.0.0.1:9", "--tls-ca", str(tmp_path / "no.pem")]) == 2
    )
    assert "no.pem" in capsys.readouterr().err


# --- the watcher's own decisions, with a client that answers as told -------------------------------------


class FakeClient:
    """Stands in for ``Client``: records the calls, answers with ``cell`` (default ``_cell()``) or fails with
    ``error``, and fails ``model_info`` as often as told."""

    def __init__(
        self,
        model_info_failures: int = 0,
        cell: ClassifyResult | None = None,
        error: AllxaiClientError | None = None,
    ) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.model_info_failures = model_info_failures
        self.cell = cell
        self.error = error

    def _answer(self) -> ClassifyResult:
        if self.error is not None:
            raise self.error
        return self.cell or _cell()

    def classify(self, data: bytes, **ids: Any) -> ClassifyResult:
        self.calls.append(("classify", ids))
        return replace(self._answer(), image_id=ids["image_id"])

    def explain(self, data: bytes, **params: Any) -> ExplainResult:
        self.calls.append(("explain", params))
        explained = _explanation(png_bytes(np.zeros((8, 8, 3), dtype=np.uint8)))
        return replace(explained, classification=self._answer())

    def model_info(self) -> ModelDescription:
        if self.model_info_failures:
            self.model_info_failures -= 1
            raise AllxaiClientError("UNAVAILABLE", "the gateway went away")
        return MODEL


def _watcher(folder: Path, client: FakeClient, **options: Any) -> Watcher:
    return Watcher(folder, cast(Client, client), Options(settle=0, retry_after=0, **options))


def test_watch_retries_a_gateway_lost_between_classify_and_model_info(
    cell_png: bytes, tmp_path: Path
) -> None:
    (image,) = _images(tmp_path, cell_png, 1)
    client = FakeClient(model_info_failures=1)
    watcher = _watcher(tmp_path, client, max_attempts=3)
    assert watcher.poll() == 1  # UNAVAILABLE from model_info: retried, not a crash
    assert files.read_marker(image) is None
    assert watcher.poll() == 0
    _outputs_complete(image, explain=False)
    assert len(client.calls) == 2


def test_watch_retries_when_the_results_cannot_be_written(
    cell_png: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (image,) = _images(tmp_path, cell_png, 1)
    real_write = files.write_atomic

    def disk_full(*args: Any, **kwargs: Any) -> None:
        monkeypatch.setattr(files, "write_atomic", real_write)  # full once, then space again
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files, "write_atomic", disk_full)
    watcher = _watcher(tmp_path, FakeClient(), max_attempts=3)
    assert watcher.poll() == 1 and files.read_marker(image) is None
    assert watcher.poll() == 0
    _outputs_complete(image, explain=False)


def test_watch_records_an_image_it_cannot_report_and_goes_on(
    cell_png: bytes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file stem too long for HL7 OBR-2 (199 characters) fails that image only, not the watcher."""
    long = tmp_path / f"{'x' * 220}.png"
    long.write_bytes(cell_png)
    (short,) = _images(tmp_path, cell_png, 1)
    with caplog.at_level(logging.ERROR, logger="allxai.lis"):
        assert _watcher(tmp_path, FakeClient(), order_id_from="stem").poll() == 0
    error = json.loads(files.output(long, files.ERROR_SUFFIX).read_text())
    assert error["code"] == "REPORT_ERROR" and "MaxLengthReached" in error["message"]
    assert (files.read_marker(long) or {}).get("status") == "error"
    assert not files.output(long, files.HL7_SUFFIX).exists()
    assert any("cannot be put into HL7/FHIR" in r.getMessage() for r in caplog.records)
    marker = _outputs_complete(short, explain=False)  # sorted after the long name: still processed
    # A restart does not meet the same failure first forever: the error is recorded and marked done.
    assert _watcher(tmp_path, FakeClient(), order_id_from="stem").poll() == 0
    assert files.read_marker(short) == marker


def test_watch_sends_the_same_ids_from_classify_and_explain_and_invents_no_specimen(
    cell_png: bytes, tmp_path: Path
) -> None:
    (image,) = _images(tmp_path, cell_png, 1)
    plain = FakeClient()
    assert _watcher(tmp_path, plain).poll() == 0
    assert plain.calls == [("classify", {"image_id": "cell-0.png", "specimen_id": "", "alpha": None})]
    hl7 = parse_oru(files.output(image, files.HL7_SUFFIX).read_text())
    (obr,) = segments(hl7, "OBR")
    assert obr.obr_2.to_er7() == "" and obr.obr_3.to_er7() == "req-42^ALLXAI" and obr.obr_7.to_er7() == ""
    assert segments(hl7, "SPM") == [] and obr.obr_25.to_er7() == "P"  # always preliminary
    fhir = json.loads(files.output(image, files.FHIR_SUFFIX).read_text())
    assert "Specimen" not in {e["resource"]["resourceType"] for e in fhir["entry"]}

    files.output(image, files.MARKER_SUFFIX).unlink()
    explained = FakeClient()
    watcher = _watcher(tmp_path, explained, explain=True, order_id_from="stem", order_namespace="LIS")
    assert watcher.poll() == 0
    ((method, params),) = explained.calls
    assert method == "explain"
    assert (params["image_id"], params["specimen_id"]) == ("cell-0.png", "cell-0")
    (obr,) = segments(parse_oru(files.output(image, files.HL7_SUFFIX).read_text()), "OBR")
    assert obr.obr_2.to_er7() == "cell-0^LIS"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sending-facility", "F" * 30], "bad HL7 option (MaxLengthReached)"),
        (["--order-namespace", "N" * 30], "bad HL7 option (MaxLengthReached)"),
        (["--seed", str(2**40)], "--seed: must be from 0 to"),
        (["--samples", "3000000000"], "--samples: must be from 0 to"),
        (["--status", "final"], "unrecognized arguments: --status"),
    ],
)
def test_watch_refuses_bad_options_at_start_up(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main([str(tmp_path), "--once", "--target", "127.0.0.1:9", *args])
    except SystemExit as exited:
        code = exited.code  # argparse's own errors
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_watch_reports_an_image_outside_the_domain_flagged_and_sends_alpha(
    cell_png: bytes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (image,) = _images(tmp_path, cell_png, 1)
    client = FakeClient(cell=_gated("ood"))
    with caplog.at_level(logging.INFO, logger="allxai.lis"):
        assert _watcher(tmp_path, client, alpha=0.1).poll() == 0
    assert client.calls == [("classify", {"image_id": "cell-0.png", "specimen_id": "", "alpha": 0.1})]
    assert any("OUTSIDE THE TRAINING DOMAIN, not for diagnosis" in r.getMessage() for r in caplog.records)
    _outputs_complete(image, explain=False)
    summary = json.loads(files.output(image, files.JSON_SUFFIX).read_text())
    assert summary["in_domain"] is False and summary["prediction_set"] == ["Pro", "Pre"]
    assert (summary["domain_score"], summary["domain_threshold"], summary["coverage"]) == (41.2, 12.0, 0.95)
    (predicted,) = _obx(parse_oru(files.output(image, files.HL7_SUFFIX).read_text()), "ALLXAI-CLASS")
    assert predicted.obx_8.to_er7() == "A"
    fhir = json.loads(files.output(image, files.FHIR_SUFFIX).read_text())
    (observation,) = [
        e["resource"]
        for e in fhir["entry"]
        if e["resource"]["resourceType"] == "Observation" and _code(e["resource"]) == "ALLXAI-CLASS"
    ]
    assert observation["interpretation"][0]["coding"][0]["code"] == "EX"

    # Explained: the alpha goes with the explanation, and no NaN reaches the JSON.
    files.output(image, files.MARKER_SUFFIX).unlink()
    nan = replace(_gated("in"), domain_score=float("nan"))
    explained = FakeClient(cell=nan)
    assert _watcher(tmp_path, explained, explain=True, alpha=0.2).poll() == 0
    assert explained.calls[0][1]["alpha"] == 0.2
    text = files.output(image, files.JSON_SUFFIX).read_text()
    assert "NaN" not in text and json.loads(text)["domain_score"] is None


def test_watch_records_an_image_the_gateway_refuses_as_outside_the_domain(
    cell_png: bytes, tmp_path: Path
) -> None:
    """Under the gateway's refuse policy an image outside the domain stays outside: recorded, not retried."""
    (image,) = _images(tmp_path, cell_png, 1)
    refused = AllxaiClientError("FAILED_PRECONDITION", "the image lies outside the training domain of model")
    client = FakeClient(error=refused)
    assert _watcher(tmp_path, client, max_attempts=3).poll() == 0
    error = json.loads(files.output(image, files.ERROR_SUFFIX).read_text())
    assert error["code"] == "FAILED_PRECONDITION" and "outside the training domain" in error["message"]
    assert (files.read_marker(image) or {}).get("status") == "error" and len(client.calls) == 1


def test_watch_never_records_a_refused_alpha_against_the_image(
    cell_png: bytes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (image,) = _images(tmp_path, cell_png, 1)
    wrong = AllxaiClientError("INVALID_ARGUMENT", "alpha: alpha 0.07 was not calibrated; choose one of 0.05")
    watcher = _watcher(tmp_path, FakeClient(error=wrong), alpha=0.07, max_attempts=2)
    with caplog.at_level(logging.ERROR, logger="allxai.lis"):
        assert watcher.poll() == 1 and watcher.poll() == 0
    assert watcher.given_up == {image.name} and files.read_marker(image) is None
    assert not files.output(image, files.ERROR_SUFFIX).exists()
    assert any("the gateway refuses --alpha" in r.getMessage() for r in caplog.records)


def test_watch_refuses_an_alpha_that_cannot_be_a_level(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([str(tmp_path), "--once", "--target", "127.0.0.1:9", "--alpha", "1.5"])
    assert exited.value.code == 2 and "--alpha: must be between 0 and 1" in capsys.readouterr().err
