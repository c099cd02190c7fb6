"""The card's domain gate and conformal calibration: round trips, levels, and refusals in words."""

from __future__ import annotations

import math
import re

import pytest

from allxai.contract.calibration import CalibrationError, ConformalSets, DomainGate
from allxai.contract.card import CardError, dump_card, parse_card

GATE = {"output": "domain_score", "threshold": 3.5, "acceptance": 0.95, "method": "m", "figures": {"n": 1}}
SETS = {
    "method": "aps-randomised",
    "qhat": {"0.05": 0.9, "0.1": 0.8, "0.01": "inf"},
    "calibration_images": 40,
}


def test_both_round_trip_through_the_card() -> None:
    card = parse_card({"class_names": ["a", "b"], "input_size": [8, 8], "domain": GATE, "conformal": SETS})
    assert card.domain == DomainGate("domain_score", 3.5, 0.95, "m", {"n": 1})
    assert card.conformal is not None and card.conformal.alphas == (0.01, 0.05, 0.1)
    assert card.conformal.qhat[0.01] == math.inf
    assert parse_card(dump_card(card)) == card


def test_the_gate_compares_with_its_threshold() -> None:
    gate = DomainGate.parse(GATE)
    assert gate.in_domain(3.5) and not gate.in_domain(3.50001)
    assert not gate.in_domain(math.nan)


def test_a_request_chooses_a_calibrated_level() -> None:
    sets = ConformalSets.parse(SETS)
    assert sets.level(None) == 0.05 and sets.level(0) == 0.05
    assert sets.level(0.1) == 0.1
    with pytest.raises(CalibrationError, match=r"alpha 0\.2 was not calibrated; choose one of 0\.01, 0\.05"):
        sets.level(0.2)
    assert sets.members([0.1, 0.9], 0.01, 0.5) == [1, 0]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"domain": {**GATE, "threshold": "high"}}, "domain.threshold must be a finite number"),
        ({"domain": {**GATE, "acceptance": 1.5}}, "domain.acceptance must be in"),
        ({"domain": {**GATE, "output": ""}}, "domain.output must name"),
        ({"domain": [1]}, "domain must be a JSON object"),
        ({"conformal": {**SETS, "qhat": {}}}, "conformal.qhat must give the default level 0.05"),
        ({"conformal": {**SETS, "qhat": {"0.1": 0.8}}}, "must give the default level 0.05"),
        ({"conformal": {**SETS, "qhat": {"0.05": 1.5}}}, "must be from 0 to 1"),
        ({"conformal": {**SETS, "qhat": {"x": 0.5}}}, "not a number"),
        ({"conformal": {**SETS, "qhat": {"1.5": 0.5}}}, "outside (0, 1)"),
        ({"conformal": {**SETS, "method": "lac"}}, "not one the gateway applies"),
    ],
)
def test_unusable_entries_are_refused_in_words(entry: dict[str, object], message: str) -> None:
    with pytest.raises(CardError, match=re.escape(message)):
        parse_card({"class_names": ["a"], **entry}, "card.json")
