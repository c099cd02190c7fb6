"""The FHIR bundle as a transaction a server takes: requests, identifiers, narrative, reviewer, failures."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from allxai.client import SpecimenResult
from allxai.lis import (
    Correction,
    Failure,
    LabReport,
    Reviewer,
    load_config,
    parse_bundle,
    to_fhir_json,
)
from allxai.lis._fhir_transaction import identifier_query
from allxai.lis.fhir import bundle_key
from tests.lis.reports import ISSUED, MODEL, WHEN, _cell, _explanation, _gated, _gated_specimen

REVIEWER = Reviewer("HAEM1", "Haem", "Dr A.")
PARTIES = ("Patient", "Specimen", "Device", "Organization", "Practitioner")
XHTML = "{http://www.w3.org/1999/xhtml}div"


def _relabelled(specimen: SpecimenResult, cell: int, label: str) -> SpecimenResult:
    """The specimen with cell ``cell`` (1-based) given the reviewer's ``label``, as a correction needs."""
    cells = list(specimen.cells)
    cells[cell - 1] = replace(cells[cell - 1], label=label)
    return replace(specimen, cells=cells)


#: Every kind of report the adapter sends, by name (``png`` is the explanation's overlay).
KINDS: dict[str, Callable[[bytes], LabReport]] = {
    "single image": lambda png: LabReport(MODEL, classification=_gated("ood"), issued_at=ISSUED),
    "explanation": lambda png: LabReport(
        MODEL, explanation=_explanation(png), patient_id="MRN123", observed_at=WHEN, issued_at=ISSUED
    ),
    "specimen": lambda png: LabReport(
        MODEL, specimen=_gated_specimen(), specimen_id="S-1", order_id="ORD-1", patient_id="MRN123"
    ),
    "final": lambda png: LabReport(
        MODEL, classification=_cell(), specimen_id="S-1", status="final", reviewer=REVIEWER
    ),
    "corrected": lambda png: LabReport(
        MODEL,
        specimen=_relabelled(_gated_specimen(), 2, "Benign"),
        specimen_id="S-1",
        status="corrected",
        reviewer=REVIEWER,
        corrections=(Correction(2, "Pro", "Benign"),),
        correction_note="smooth chromatin",
    ),
    "failures only": lambda png: LabReport(
        MODEL, failures=(Failure("bad.png", "DECODE", "cannot decode the image"),), specimen_id="S-9"
    ),
    "specimen with failures": lambda png: LabReport(
        MODEL, specimen=_gated_specimen(False), failures=(Failure("e.png", "TIMEOUT", "no answer in 30 s"),)
    ),
}


def _bundle(report: LabReport) -> dict[str, Any]:
    text = to_fhir_json(report)
    parse_bundle(text)  # fhir.resources (R4B models) validates while parsing
    document: dict[str, Any] = json.loads(text)
    return document


def _entries(document: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e for e in document["entry"] if e["resource"]["resourceType"] == kind]


def _one(document: dict[str, Any], kind: str) -> dict[str, Any]:
    (found,) = _entries(document, kind)
    return found


def _split_token(query: str) -> tuple[str, str]:
    """``identifier=<system>|<value>`` back into its parts: percent-decoded, FHIR's escapes undone."""
    assert query.startswith("identifier=")
    text, parts, current, escaped = unquote(query.removeprefix("identifier=")), [], "", False
    for char in text:
        if escaped:
            current, escaped = current + char, False
        elif char == "\\":
            escaped = True
        elif char == "|":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    system, value = parts
    return system, value


def _words(resource: dict[str, Any]) -> str:
    """The narrative's text; it must be generated, well-formed XHTML in a div."""
    assert resource["text"]["status"] == "generated"
    root = ET.fromstring(resource["text"]["div"])
    assert root.tag == XHTML
    return "".join(root.itertext())


def _identifiers(resource: dict[str, Any]) -> set[tuple[str, str]]:
    return {(i["system"], i["value"]) for i in resource.get("identifier", [])}


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_of_bundle_is_a_transaction_with_a_request_per_entry(kind: str, cell_png: bytes) -> None:
    report = KINDS[kind](cell_png)
    document = _bundle(report)
    assert document["type"] == "transaction"
    assert document["identifier"] == {"system": "urn:allxai:bundle", "value": bundle_key(report)}
    urls = [e["fullUrl"] for e in document["entry"]]
    assert len(set(urls)) == len(urls) and all(re.fullmatch(r"urn:uuid:[0-9a-f-]{36}", u) for u in urls)
    targets = []
    for entry in document["entry"]:
        resource, request = entry["resource"], entry["request"]
        kind_of = resource["resourceType"]
        if kind_of in PARTIES:
            # Conditional create on the business identifier the resource carries.
            assert request["method"] == "POST" and request["url"] == kind_of
            assert _split_token(request["ifNoneExist"]) in _identifiers(resource)
        elif kind_of in ("DiagnosticReport", "Observation"):
            # Conditional update on an identifier of ours: a later status replaces this one.
            assert request["method"] == "PUT" and "ifNoneExist" not in request
            path, query = request["url"].split("?", 1)
            assert path == kind_of and _split_token(query) == tuple(resource["identifier"][0].values())
            targets.append(request["url"])
        else:
            assert kind_of == "Provenance"
            assert request == {"method": "PUT", "url": f"Provenance/{resource['id']}"}
            assert entry["fullUrl"] == f"urn:uuid:{resource['id']}"
        _words(resource)  # every resource has a narrative
    # A transaction that updates one identifier twice is refused by the server.
    assert len(set(targets)) == len(targets)
    # Every reference points into the bundle (the server rewrites them to its own ids).
    references = re.findall(r'"reference":\s*"([^"]+)"', json.dumps(document))
    assert references and set(references) <= set(urls)


@pytest.mark.parametrize("kind", list(KINDS))
def test_results_have_narrative_performer_and_effective_time(kind: str, cell_png: bytes) -> None:
    report = KINDS[kind](cell_png)
    document = _bundle(report)
    laboratory = _one(document, "Organization")
    assert laboratory["resource"]["name"] == "Haematology laboratory"
    moment = report.observed_at or report.issued_at
    for entry in _entries(document, "DiagnosticReport") + _entries(document, "Observation"):
        resource = entry["resource"]
        assert resource["performer"] == [{"reference": laboratory["fullUrl"]}]
        assert datetime.fromisoformat(resource["effectiveDateTime"]) == moment
        words = _words(resource)
        assert "AIAST: Artificial Intelligence asserted" in words
        assert f"Status: {resource['status']}" in words
        if report.observed_at is not None:
            assert "when the specimen was collected or imaged, as the LIS gave it" in words
        else:
            assert "the time of the analysis (the LIS gave no time of collection or imaging)" in words
        if "valueCodeableConcept" in resource and resource["code"]["coding"][0]["code"] == "ALLXAI-CLASS":
            concept = resource["valueCodeableConcept"]
            assert f"Class: {concept['text']} ({concept['coding'][0]['code']}), confidence" in words
            assert "Domain check: " in words
    for kind_of in ("Device", "Organization"):
        assert _words(_one(document, kind_of)["resource"])


def test_the_report_narrative_gives_class_confidence_domain_status_and_label() -> None:
    document = _bundle(LabReport(MODEL, classification=_gated("ood"), issued_at=ISSUED))
    words = _words(_one(document, "DiagnosticReport")["resource"])
    assert "Class: Pro-B ALL blast (ALL-PROB), confidence 99.9%." in words
    assert "Domain check: The image lies outside the model's training domain (domain score 41.2" in words
    assert "Status: preliminary (not reviewed" in words
    assert "Performed by Haematology laboratory." in words
    assert "AI-generated result (AIAST: Artificial Intelligence asserted)" in words
    assert "without human review" in words


def test_narrative_escapes_what_comes_from_outside() -> None:
    reviewer = Reviewer("<id>", "O'Brien & <b>Sons</b>", "<script>x()</script>")
    report = LabReport(
        MODEL,
        classification=_cell(),
        status="final",
        reviewer=reviewer,
        failures=(Failure("<img src=x>.png", "BAD", "a <i>broken</i> & odd image"),),
    )
    document = _bundle(report)
    for entry in document["entry"]:
        root = ET.fromstring(entry["resource"]["text"]["div"])
        # Only our own markup: a div, paragraphs and the bold title.
        assert {element.tag.split("}")[1] for element in root.iter()} <= {"div", "p", "b"}
    words = _words(_one(document, "Practitioner")["resource"])
    assert "<script>x()</script> O'Brien & <b>Sons</b> (<id>)" in words
    (failed,) = [e for e in _entries(document, "Observation") if e["resource"]["status"] == "cancelled"]
    assert "a <i>broken</i> & odd image" in _words(failed["resource"])


def test_identifiers_and_requests_use_the_configured_systems(tmp_path: Path) -> None:
    config_file = tmp_path / "lis.toml"
    classes = "".join(
        f'[classes.{label}]\ncode = "{code}"\ndisplay = "{label} cells"\n'
        for label, code in (("Benign", "B"), ("Early", "E"), ("Pre", "P"), ("Pro", "R"))
    )
    systems = {
        "patient": "urn:oid:1.2.3.1",
        "specimen": "urn:oid:1.2.3.2",
        "order": "urn:oid:1.2.3.3",
        "practitioner": "urn:oid:1.2.3.4",
        "laboratory": "urn:oid:1.2.3.5",
        "result": "https://lab.example/results",
        "device": "https://lab.example/devices",
        "observation": "https://lab.example/observations",
    }
    config_file.write_text(
        '[laboratory]\nname = "City Lab"\nidentifier = "LAB-7"\n\n[identifiers]\n'
        + "".join(f'{key} = "{value}"\n' for key, value in systems.items())
        + classes,  # no [blast_percentage]: the blast keeps its local code alone
        encoding="utf-8",
    )
    config = load_config(config_file)
    report = LabReport(
        MODEL,
        specimen=_gated_specimen(),
        specimen_id="S-1",
        order_id="ORD-1",
        patient_id="MRN123",
        status="final",
        reviewer=REVIEWER,
        config=config,
    )
    document = _bundle(report)
    expected = {
        "Patient": ("patient", "MRN123"),
        "Specimen": ("specimen", "S-1"),
        "Device": ("device", "allnet:3"),
        "Organization": ("laboratory", "LAB-7"),
        "Practitioner": ("practitioner", "HAEM1"),
    }
    for kind_of, (key, value) in expected.items():
        entry = _one(document, kind_of)
        assert (systems[key], value) in _identifiers(entry["resource"]), kind_of
        assert entry["request"]["ifNoneExist"] == f"identifier={systems[key]}|{value}"
    specimen = _one(document, "Specimen")["resource"]
    assert specimen["accessionIdentifier"] == {"system": systems["specimen"], "value": "S-1"}
    assert _one(document, "Organization")["resource"]["name"] == "City Lab"
    diagnostic = _one(document, "DiagnosticReport")
    assert diagnostic["resource"]["identifier"] == [{"system": systems["result"], "value": "req-42"}]
    assert diagnostic["request"]["url"] == f"DiagnosticReport?identifier={systems['result']}|req-42"
    assert diagnostic["resource"]["basedOn"][0]["identifier"]["system"] == systems["order"]
    assert diagnostic["resource"]["basedOn"][0]["identifier"]["value"] == "ORD-1"
    observations = _entries(document, "Observation")
    for entry in observations:
        first = entry["resource"]["identifier"][0]
        assert first["system"] == systems["observation"]
        assert entry["request"]["url"] == f"Observation?identifier={systems['observation']}|{first['value']}"
    (blast,) = [e["resource"] for e in observations if "BLAST" in json.dumps(e["resource"]["code"])]
    assert [c["code"] for c in blast["code"]["coding"]] == ["ALLXAI-BLAST"]
    classes_sent = {
        e["resource"]["valueCodeableConcept"]["coding"][0]["code"]
        for e in observations
        if "valueCodeableConcept" in e["resource"]
    }
    assert classes_sent == {"R", "P"}


def test_without_a_laboratory_identifier_the_organization_is_found_by_its_name() -> None:
    document = _bundle(LabReport(MODEL, classification=_cell()))
    organization = _one(document, "Organization")
    assert _identifiers(organization["resource"]) == {("urn:allxai:lis:laboratory", "Haematology_laboratory")}
    assert (
        organization["request"]["ifNoneExist"]
        == "identifier=urn:allxai:lis:laboratory|Haematology_laboratory"
    )


def test_search_values_are_escaped_for_fhir_and_for_the_url() -> None:
    query = identifier_query("urn:oid:1.2.3", "S 1|a,b$c\\d&e=f#g")
    assert query.startswith("identifier=urn:oid:1.2.3|S%201%5C%7Ca%5C%2Cb")
    assert not set("& #=") & set(query.removeprefix("identifier="))  # nothing that ends or splits a query
    assert _split_token(query) == ("urn:oid:1.2.3", "S 1|a,b$c\\d&e=f#g")


def test_a_later_status_updates_the_same_resources_under_a_new_bundle_key() -> None:
    specimen = _gated_specimen()
    base = LabReport(MODEL, specimen=specimen, specimen_id="S-1", issued_at=ISSUED)
    versions = [
        base,
        replace(base, status="final", reviewer=REVIEWER),
        replace(
            base,
            specimen=_relabelled(specimen, 1, "Pre"),
            status="corrected",
            reviewer=REVIEWER,
            corrections=(Correction(1, "Pro", "Pre"),),
        ),
        replace(
            base,
            specimen=_relabelled(specimen, 1, "Benign"),
            status="corrected",
            reviewer=REVIEWER,
            corrections=(Correction(1, "Pro", "Benign"),),
        ),
    ]
    documents = [_bundle(report) for report in versions]

    def updates(document: dict[str, Any]) -> list[str]:
        return [e["request"]["url"] for e in document["entry"] if e["request"]["method"] == "PUT"]

    # DiagnosticReport and Observations: the same conditional updates each time (the server replaces them).
    results = [[u for u in updates(d) if not u.startswith("Provenance/")] for d in documents]
    assert all(r == results[0] for r in results)
    # Each status and each revision: a bundle key and a Provenance of its own...
    keys = [d["identifier"]["value"] for d in documents]
    provenances = [[u for u in updates(d) if u.startswith("Provenance/")] for d in documents]
    assert len(set(keys)) == 4 and len({p[0] for p in provenances}) == 4
    # ...the same when the same report is built again (an outbox stores it once, a server once).
    again = _bundle(replace(versions[1]))
    assert again["identifier"]["value"] == keys[1] and updates(again) == updates(documents[1])
    statuses = {e["resource"]["status"] for e in documents[2]["entry"] if "status" in e["resource"]}
    assert statuses == {"corrected", "active"}  # the Device is active; every result is corrected


def test_a_final_report_names_its_reviewer_as_interpreter_and_verifier() -> None:
    preliminary = _bundle(LabReport(MODEL, classification=_cell()))
    assert not _entries(preliminary, "Practitioner")
    assert "resultsInterpreter" not in _one(preliminary, "DiagnosticReport")["resource"]
    (author,) = _one(preliminary, "Provenance")["resource"]["agent"]
    assert author["type"]["coding"][0]["code"] == "author"

    document = _bundle(LabReport(MODEL, classification=_cell(), status="final", reviewer=REVIEWER))
    practitioner = _one(document, "Practitioner")
    assert practitioner["resource"]["name"] == [{"family": "Haem", "given": ["Dr A."], "text": "Dr A. Haem"}]
    assert _identifiers(practitioner["resource"]) == {("urn:allxai:lis:practitioner", "HAEM1")}
    diagnostic = _one(document, "DiagnosticReport")["resource"]
    assert diagnostic["status"] == "final"
    assert diagnostic["resultsInterpreter"] == [{"reference": practitioner["fullUrl"]}]
    assert "reviewed and confirmed by Dr A. Haem (HAEM1)" in _words(diagnostic)
    agents = _one(document, "Provenance")["resource"]["agent"]
    participant = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
    assert [(a["type"]["coding"][0]["system"], a["type"]["coding"][0]["code"]) for a in agents] == [
        (participant, "author"),
        (participant, "verifier"),
    ]
    assert agents[0]["who"] == {"reference": _one(document, "Device")["fullUrl"]}
    assert agents[1]["who"] == {"reference": practitioner["fullUrl"]}
    assert {e["resource"]["status"] for e in _entries(document, "Observation")} == {"final"}


def test_a_corrected_report_notes_the_change_on_the_corrected_cell() -> None:
    specimen = _gated_specimen()
    cells = list(specimen.cells)
    cells[1] = replace(cells[1], label="Benign")  # the classification carries the reviewer's label
    report = LabReport(
        MODEL,
        specimen=replace(specimen, cells=cells),
        status="corrected",
        reviewer=REVIEWER,
        corrections=(Correction(2, "Pro", "Benign"),),
        correction_note="smooth chromatin",
    )
    document = _bundle(report)
    by_image = {}
    for entry in _entries(document, "Observation"):
        for system, value in _identifiers(entry["resource"]):
            if system == "urn:allxai:image":
                by_image[value] = entry["resource"]
    corrected = by_image["b.png"]
    assert corrected["status"] == "corrected"
    assert corrected["valueCodeableConcept"]["coding"][0]["code"] == "BENIGN"
    assert corrected["note"][0]["text"] == (
        "Corrected by Dr A. Haem (HAEM1): the AI model classified cell 2 as Pro-B ALL blast (ALL-PROB); the "
        "reviewer's class is Benign lymphoid precursor (hematogone) (BENIGN). Reason: smooth chromatin."
    )
    assert corrected["note"][0]["text"] in _words(corrected)
    for image in ("a.png", "c.png", "d.png"):
        assert all("Corrected by" not in n["text"] for n in by_image[image].get("note", []))
    diagnostic = _one(document, "DiagnosticReport")["resource"]
    assert diagnostic["status"] == "corrected"
    assert "cell 2 changed from Pro-B ALL blast to Benign lymphoid precursor" in diagnostic["conclusion"]


def test_a_correction_of_a_cell_the_report_lacks_is_refused() -> None:
    for cell in (0, 5):
        with pytest.raises(ValueError, match="correction of"):
            LabReport(
                MODEL,
                specimen=_gated_specimen(),
                status="corrected",
                reviewer=REVIEWER,
                corrections=(Correction(cell, "Pro", "Pre"),),
            )


def test_a_report_of_failures_only_is_cancelled_and_says_why() -> None:
    report = LabReport(
        MODEL,
        failures=(
            Failure("bad.png", "DECODE", "cannot decode the image"),
            Failure("big.png", "TOO_LARGE", "the image is larger than 20 MB"),
        ),
        specimen_id="S-9",
    )
    document = _bundle(report)
    diagnostic = _one(document, "DiagnosticReport")["resource"]
    assert diagnostic["status"] == "cancelled"
    assert diagnostic["conclusion"] == (
        "Nothing could be classified. 2 images could not be classified: bad.png (DECODE: cannot decode the "
        "image); big.png (TOO_LARGE: the image is larger than 20 MB)."
    )
    assert "Status: cancelled (nothing could be classified)." in _words(diagnostic)
    observations = [e["resource"] for e in _entries(document, "Observation")]
    assert len(observations) == 2 and len(diagnostic["result"]) == 2
    first = observations[0]
    assert first["status"] == "cancelled" and first["code"]["coding"][0]["code"] == "ALLXAI-CLASS"
    assert "valueCodeableConcept" not in first
    assert first["dataAbsentReason"]["coding"] == [
        {
            "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
            "code": "error",
            "display": "Error",
        }
    ]
    assert first["note"] == [
        {"text": "The image bad.png could not be classified (DECODE: cannot decode the image); no class is "
                 "reported for it."}
    ]  # fmt: skip
    (ours,) = [i for i in first["identifier"] if i["system"] == "urn:allxai:observation"]
    assert first["identifier"][1] == {"system": "urn:allxai:image", "value": "bad.png"}
    assert ours["value"] != observations[1]["identifier"][0]["value"]

    # Another image's failure in the same specimen is another result, not an update of this one.
    other = _bundle(replace(report, failures=(Failure("odd.png", "DECODE", "cannot decode the image"),)))
    assert other["identifier"]["value"] != document["identifier"]["value"]
    assert (
        _one(other, "DiagnosticReport")["request"]["url"]
        != _one(document, "DiagnosticReport")["request"]["url"]
    )


def test_failed_cells_of_a_specimen_are_cancelled_beside_the_classified_ones() -> None:
    report = KINDS["specimen with failures"](b"")
    document = _bundle(report)
    diagnostic = _one(document, "DiagnosticReport")["resource"]
    assert diagnostic["status"] == "preliminary"
    assert diagnostic["conclusion"].endswith(
        "1 image could not be classified: e.png (TIMEOUT: no answer in 30 s)."
    )
    statuses = [e["resource"]["status"] for e in _entries(document, "Observation")]
    assert statuses.count("cancelled") == 1 and statuses.count("preliminary") == len(statuses) - 1


def test_bundle_key_ignores_rebuilds_and_follows_the_review() -> None:
    cells = [_cell("Pro", 0.9, "a.png")]
    specimen = SpecimenResult(cells, {"Benign": 0, "Early": 0, "Pre": 0, "Pro": 1}, 1.0, [0])
    report = LabReport(MODEL, specimen=specimen, specimen_id="S-1", issued_at=ISSUED)
    assert bundle_key(report) == bundle_key(replace(report, issued_at=WHEN))  # a resend is the same bundle
    final = replace(report, status="final", reviewer=REVIEWER)
    assert bundle_key(final) != bundle_key(report)
    assert bundle_key(final) != bundle_key(replace(final, reviewer=Reviewer("HAEM2")))


def test_an_image_that_failed_twice_gets_two_observations() -> None:
    twice = (Failure("bad.png", "DECODE", "cannot decode"), Failure("bad.png", "TIMEOUT", "no answer"))
    document = _bundle(LabReport(MODEL, failures=twice))
    keys = [e["resource"]["identifier"][0]["value"] for e in _entries(document, "Observation")]
    assert len(set(keys)) == 2


def test_a_preliminary_report_names_no_interpreter_even_with_a_reviewer_given() -> None:
    """AI output nobody has confirmed: no Practitioner, no verifier, whoever the caller names."""
    document = _bundle(LabReport(MODEL, classification=_cell(), reviewer=REVIEWER))
    assert not _entries(document, "Practitioner")
    assert "resultsInterpreter" not in _one(document, "DiagnosticReport")["resource"]
    assert len(_one(document, "Provenance")["resource"]["agent"]) == 1
    assert document["identifier"]["value"] == bundle_key(LabReport(MODEL, classification=_cell()))
