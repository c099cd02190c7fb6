"""The model card's schema and the class-name rules: round trips, and each refusal in words."""

from __future__ import annotations

import json
from typing import Any

import pytest

from allxai.contract.card import (
    CardError,
    ModelCard,
    check_class_names,
    dump_card,
    normal_classes,
    parse_card,
)

#: A card as the trainer writes it (shortened), with a field the contract does not know.
FULL: dict[str, Any] = {
    "name": "allnet",
    "version": 3,
    "architecture": "allnet",
    "class_names": ["Benign", "Early", "Pre", "Pro"],
    "display_names": {"Benign": "Benign (hematogones)", "Pre": "Pre-B ALL"},
    "normal_class_names": ["Benign"],
    "input_size": [224, 224],
    "preprocessing": "decode, convert to RGB, resize",
    "data": {"classes": {"Benign": 10, "Early": 12}, "sources": ["aria"]},
    "metrics": {"cross_validation": {"accuracy": {"mean": 0.9}}, "test": None},
    "training": {"epochs": 1, "seed": 1},
    "source_commit": "83e667e",
    "software": {"python": "3.11.9", "tensorflow": "2.17.0"},
    "future_field": [1, {"a": None}],
}


def test_a_full_card_round_trips_through_json_and_dicts() -> None:
    card = parse_card(json.dumps(FULL), "card.json", complete=True)
    assert card.class_names == ("Benign", "Early", "Pre", "Pro")
    assert card.input_size == (224, 224)
    assert card.normal_class_names == ("Benign",)
    assert card.version == 3 and card.metrics is not None and card.metrics["test"] is None
    assert card.extra == {"future_field": [1, {"a": None}]}
    assert card.to_dict() == FULL
    assert json.loads(dump_card(card)) == FULL
    assert parse_card(dump_card(card, indent=2).encode()) == card
    assert parse_card(FULL) == card
    # Sorted keys: equal cards give equal text.
    assert dump_card(card) == json.dumps(FULL, sort_keys=True)


def test_a_partial_card_gives_only_what_it_has() -> None:
    card = parse_card(b'{"input_size": [40, 32]}', "assets.extra/model_card.json")
    assert card == ModelCard(input_size=(40, 32))
    assert card.to_dict() == {"input_size": [40, 32]}
    assert parse_card({}) == ModelCard() and ModelCard().to_dict() == {}


def test_a_card_built_in_code_serialises_as_json() -> None:
    card = ModelCard(class_names=("a", "b"), input_size=(8, 6), extra={"note": "x", "class_names": "ignored"})
    assert json.loads(dump_card(card)) == {"class_names": ["a", "b"], "input_size": [8, 6], "note": "x"}
    assert card.classes_and_size() == (("a", "b"), (8, 6))


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"{", r"^the model card \(card.json\) is not valid JSON: Expecting"),
        (b'{"a": "\xff"}', r"^the model card \(card.json\) is not valid JSON"),
        ("[1]", r"^the model card \(card.json\) is not a JSON object$"),
        ({1: "a"}, r"^the model card \(card.json\) is not a JSON object$"),
        (None, r"^the model card \(card.json\) is not a JSON object$"),
        (
            '{"class_names": "abc"}',
            r"^the model card \(card.json\) must give class_names as a list of non-empty strings$",
        ),
        ('{"class_names": []}', "must give class_names as a list of non-empty strings"),
        ('{"class_names": ["a", " "]}', "must give class_names as a list of non-empty strings"),
        ('{"class_names": ["a", 1]}', "must give class_names as a list of non-empty strings"),
        ('{"class_names": null}', "must give class_names as a list of non-empty strings"),
        (
            '{"class_names": ["b", "a", "b", "a"]}',
            r"^the model card \(card.json\) names a class twice \(a, b\)$",
        ),
        (
            '{"input_size": [224]}',
            r"^the model card \(card.json\) gives input_size \[224\]; expected \[height, w",
        ),
        ('{"input_size": [0, 2]}', r"gives input_size \[0, 2\]; expected \[height, width\]$"),
        ('{"input_size": [2.0, 2]}', r"gives input_size \[2.0, 2\]; expected"),
        ('{"input_size": [true, 2]}', r"gives input_size \[True, 2\]; expected"),
        ('{"input_size": "224x224"}', r"gives input_size '224x224'; expected"),
        (
            '{"normal_class_names": "Benign"}',
            r"gives normal_class_names 'Benign'; expected a list of class names$",
        ),
        (
            '{"class_names": ["a", "b"], "normal_class_names": ["c"]}',
            r"^the model card's normal_class_names \['c'\] must list some of its classes \(a, b\)$",
        ),
        (
            '{"class_names": ["a"], "display_names": {"b": "B"}}',
            r"gives display_names for 'b', which it does not list among its classes \(a\)$",
        ),
        ('{"display_names": {"a": 1}}', "gives display_names {'a': 1}; expected a JSON object of strings$"),
        ('{"preprocessing": 5}', "gives preprocessing 5; expected a string$"),
        ('{"version": "3"}', "gives version '3'; expected an integer$"),
        ('{"version": true}', "gives version True; expected an integer$"),
        ('{"metrics": [1, 2]}', r"gives metrics \[1, 2\]; expected a JSON object$"),
        ('{"data": null}', "gives data None; expected a JSON object$"),
        ('{"software": {"python": 3}}', "gives software {'python': 3}; expected a JSON object of strings$"),
        ('{"source_commit": ["x"]}', r"gives source_commit \['x'\]; expected a string$"),
    ],
)
def test_a_card_that_breaks_the_schema_is_refused_in_words(raw: object, words: str) -> None:
    with pytest.raises(CardError, match=words):
        parse_card(raw, "card.json")


def test_long_values_are_shortened_in_messages() -> None:
    with pytest.raises(CardError) as refused:
        parse_card({"architecture": list(range(1000))})
    assert str(refused.value).startswith("the model card gives architecture [0, 1, 2")
    assert "..." in str(refused.value) and len(str(refused.value)) < 150


def test_an_export_card_must_give_class_names_and_input_size() -> None:
    with pytest.raises(CardError, match=r"^the model card \(sig\) gives no class_names and no input_size; "):
        parse_card("{}", "sig", complete=True)
    with pytest.raises(CardError, match=r"^the model card gives no input_size; "):
        parse_card({"class_names": ["a"]}, complete=True)
    with pytest.raises(CardError, match="gives no class_names;"):
        ModelCard(input_size=(2, 2)).classes_and_size()


def test_class_names_are_distinct_and_not_blank() -> None:
    assert check_class_names(["a", "b"], "the setting X") == ("a", "b")
    assert check_class_names(("a",), "the setting X") == ("a",)
    with pytest.raises(CardError, match=r"^the setting X names a class twice \(a\)$"):
        check_class_names(["a", "b", "a"], "the setting X")
    for bad in ([], [""], ["a", "\t"], "ab", None, [None]):
        with pytest.raises(CardError, match=r"^the setting X must give class_names as a list of non-empty"):
            check_class_names(bad, "the setting X")


def test_the_normal_classes_are_the_cards_word_else_the_trainers_rule() -> None:
    assert normal_classes(["Benign", "Early", "hem", "normal", "Normal"]) == ("Benign", "hem", "normal")
    assert normal_classes(["all", "blast"]) == ()
    assert normal_classes(["a", "b"], ["b"]) == ("b",)
    assert normal_classes(["a", "Benign"], []) == (), "a card may say that no class is normal"
    with pytest.raises(
        CardError, match=r"normal_class_names \['Benign'\] must list some of its classes \(x, y\)"
    ):
        normal_classes(["x", "y"], ("Benign",))
