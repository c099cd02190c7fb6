"""What every LIS report must do in both formats: no made-up identifiers, filler numbers, reviewers."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime

import pytest

from allxai.client import (
    SpecimenResult,
)
from allxai.lis import (
    LabReport,
    Reviewer,
    parse_bundle,
    parse_oru,
    to_fhir_json,
    to_oru,
)
from allxai.lis.hl7 import segments
from tests.lis.reports import (
    ISSUED,
    MODEL,
    WHEN,
    _cell,
    _gated,
    _notes_after,
)


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
        assert "specimen" not in resource and "basedOn" not in resource
        if resource["resourceType"] in ("Observation", "DiagnosticReport"):
            assert datetime.fromisoformat(resource["issued"]) == ISSUED
            # FHIR servers sort results by effective time: the time of the analysis stands in, and the
            # narrative says that is what it is (no collection time is invented).
            assert datetime.fromisoformat(resource["effectiveDateTime"]) == ISSUED
            assert "the time of the analysis (the LIS gave no time of collection" in resource["text"]["div"]


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
    with pytest.raises(ValueError, match="reviewer"):
        LabReport(MODEL, classification=_cell(), status="final")
    reviewer = Reviewer("HAEM1", "Haem", "Dr A.")
    report = LabReport(MODEL, classification=_cell(), status="final", reviewer=reviewer)
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


def test_a_specimen_with_no_cell_inside_the_domain_files_no_blast_fraction() -> None:
    cells = [_gated("ood", "a.png"), _gated("ood", "b.png")]
    reason = "none of the 2 cells lies inside the model's training domain"
    specimen = SpecimenResult(
        cells, {"Benign": 0, "Early": 0, "Pre": 0, "Pro": 2}, 0.0, [0, 1],
        out_of_domain=2, counted=0, needs_review=True, review_reason=reason,
    )  # fmt: skip
    message = parse_oru(to_oru(LabReport(MODEL, specimen=specimen, observed_at=WHEN)))
    # OBX-3 is the LOINC code of lis.toml (the local code when a configuration has none).
    (blast,) = [
        o for o in segments(message, "OBX") if o.obx_3.to_er7().split("^")[0] in ("26446-3", "ALLXAI-BLAST")
    ]
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
        and any(c["code"] == "ALLXAI-BLAST" for c in e["resource"]["code"]["coding"])
    ]
    assert "valueQuantity" not in observation
    assert observation["dataAbsentReason"]["coding"][0]["code"] == "not-performed"
