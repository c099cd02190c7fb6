"""FHIR R4 bundles from reports, validated by fhir.resources."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from typing import Any

import pytest

from allxai.client import (
    SpecimenResult,
)
from allxai.lis import (
    AIAST_CODE,
    AIAST_SYSTEM,
    LabReport,
    parse_bundle,
    to_fhir_json,
)
from allxai.lis._report import FHIR_CLASS_SYSTEM
from tests.lis.reports import (
    MODEL,
    WHEN,
    _cell,
    _code,
    _explanation,
    _gated,
    _gated_specimen,
    _resources,
)


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
    assert bundle.type == "transaction"
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
    assert order.identifier.system == "urn:allxai:lis:order"  # lis.toml's [identifiers] order
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
    # The LIS's stable class codes (lis.toml), not the model's class names.
    assert [o.valueCodeableConcept.coding[0].code for o in classified] == ["ALL-PROB", "ALL-PROB", "BENIGN"]
    assert {o.valueCodeableConcept.coding[0].system for o in classified} == {FHIR_CLASS_SYSTEM}
    assert classified[0].valueCodeableConcept.text == "Pro-B ALL blast"
    scores = {c.code.coding[0].code: float(c.valueQuantity.value) for c in classified[0].component[1:5]}
    assert scores == pytest.approx(
        {
            "ALLXAI-P-BENIGN": 0.02,
            "ALLXAI-P-ALL-EPREB": 0.05,
            "ALLXAI-P-ALL-PREB": 0.1,
            "ALLXAI-P-ALL-PROB": 0.83,
        }
    )
    confidence = classified[0].component[0]
    assert confidence.code.coding[0].code == "ALLXAI-CONF"
    assert float(confidence.valueQuantity.value) == pytest.approx(0.83)
    counts = {
        o.code.coding[0].code: o.valueQuantity.value
        for o in observations
        if o.code.coding[0].code.startswith("ALLXAI-N-")
    }
    assert counts == {
        "ALLXAI-N-BENIGN": 1,
        "ALLXAI-N-ALL-EPREB": 0,
        "ALLXAI-N-ALL-PREB": 0,
        "ALLXAI-N-ALL-PROB": 1,
    }
    # The blast percentage: LOINC first (lis.toml's [blast_percentage]), the local code kept second.
    (blast,) = [o for o in observations if any(c.code == "ALLXAI-BLAST" for c in o.code.coding)]
    assert [(c.system, c.code) for c in blast.code.coding] == [
        ("http://loinc.org", "26446-3"),
        ("urn:allxai:codes", "ALLXAI-BLAST"),
    ]
    assert blast.code.text == "Blasts/100 leukocytes in Blood"
    assert float(blast.valueQuantity.value) == pytest.approx(50.0) and blast.valueQuantity.code == "%"
    (provenance,) = by_type["Provenance"]
    assert provenance.agent[0].who.reference == observations[0].device.reference
    assert {t.reference for t in provenance.target} == {r.reference for r in diagnostic.result} | {
        u for u, r in urls.items() if r is diagnostic
    }


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
    # The LIS configuration's display names win over the model card's.
    assert notes[1].startswith("Prediction set at 95% coverage: Pro-B ALL blast, Pre-B ALL blast.")
    parts = {}
    for component in observation["component"]:
        parts.setdefault(_code(component), []).append(component)
    assert parts["ALLXAI-DOMAIN"][0]["valueCodeableConcept"]["coding"][0]["code"] == "OUT"
    (score,) = parts["ALLXAI-DSCORE"]
    assert score["valueQuantity"]["value"] == pytest.approx(41.2)
    assert score["referenceRange"][0]["high"]["value"] == pytest.approx(12.0)
    assert score["interpretation"][0]["coding"][0]["code"] == "EX"
    set_codes = [c["valueCodeableConcept"]["coding"][0]["code"] for c in parts["ALLXAI-SET"]]
    assert set_codes == ["ALL-PROB", "ALL-PREB"]
    assert parts["ALLXAI-COVER"][0]["valueQuantity"]["value"] == pytest.approx(0.95)
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
    (blast,) = by_code["26446-3"]  # the LOINC code comes first
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
