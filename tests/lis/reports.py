"""What the LIS tests share: a model description, classifications, explanations and specimens made by hand."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from allxai.client import (
    ClassifyResult,
    ExplainResult,
    ModelDescription,
    SpecimenResult,
)
from allxai.lis import (
    parse_bundle,
)
from allxai.lis.hl7 import segments

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


def _resources(text: str) -> dict[str, list[dict[str, Any]]]:
    parse_bundle(text)  # fhir.resources validates while parsing
    found: dict[str, list[dict[str, Any]]] = {}
    for entry in json.loads(text)["entry"]:
        found.setdefault(entry["resource"]["resourceType"], []).append(entry["resource"])
    return found


def _code(resource: dict[str, Any]) -> str:
    return str(resource["code"]["coding"][0]["code"])
