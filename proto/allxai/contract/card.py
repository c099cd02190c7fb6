"""The model card: what an export says about itself, as one schema for the trainer and the gateway.

The card is a JSON object. The trainer writes it into every export (the ``model_card`` signature and
``assets.extra/model_card.json``, see :mod:`allxai.contract.names`) with :func:`dump_card`; the gateway
and ``allxai evaluate`` read it with :func:`parse_card`, from our exports and from a card file beside a
SavedModel from elsewhere, where any field may be missing. Each field the contract knows has one type
(:class:`ModelCard`); fields it does not know are kept as written, so a card round-trips unchanged.

The class-name rules, for cards and for class names configured elsewhere:

- class names are a non-empty list of distinct, non-blank strings, in the order of the model's scores;
- the normal classes (not leukaemic: a specimen's blast fraction counts every other class) are the card's
  ``normal_class_names``, some of its classes; without them, the classes named in
  :data:`~allxai.contract.names.NORMAL_CLASS_NAMES`.

Whatever breaks the schema or the rules is a :class:`CardError` that says what is wrong, and where.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from allxai.contract.calibration import CalibrationError, ConformalSets, DomainGate
from allxai.contract.cellrecipe import CellRecipe, RecipeError
from allxai.contract.names import NORMAL_CLASS_NAMES


class CardError(ValueError):
    """A model card, or a list of class names, that breaks the model contract."""


@dataclass(frozen=True)
class ModelCard:
    """A model card's fields; ``None`` where the card does not give one.

    Our exports give all of them; the gateway needs ``class_names`` and ``input_size`` (from the card or
    elsewhere) and reads ``normal_class_names`` and ``preprocessing``; the rest describe the model.
    """

    #: The classes in the order of the model's scores.
    class_names: tuple[str, ...] | None = None
    #: ``(height, width)`` of the uint8 images ``serving_default`` takes.
    input_size: tuple[int, int] | None = None
    #: The classes that are not leukaemic.
    normal_class_names: tuple[str, ...] | None = None
    #: Human names of some of the classes, by class name.
    display_names: Mapping[str, str] | None = None
    #: The preprocessing in words (:data:`allxai.contract.preprocessing.DESCRIPTION` for our exports).
    preprocessing: str | None = None
    name: str | None = None
    version: int | None = None
    architecture: str | None = None
    #: The training data summary: sources, class counts, splits.
    data: Mapping[str, Any] | None = None
    #: Evaluation results: ``cross_validation`` (mean and spread over folds) and ``test`` (held-out images).
    metrics: Mapping[str, Any] | None = None
    #: The training configuration.
    training: Mapping[str, Any] | None = None
    #: The git commit the trainer ran from.
    source_commit: str | None = None
    #: Versions of the software that trained the model (python, tensorflow, keras).
    software: Mapping[str, str] | None = None
    #: The input-domain gate: the score's output, its calibrated threshold and figures.
    domain: DomainGate | None = None
    #: The conformal prediction sets' calibration.
    conformal: ConformalSets | None = None
    #: How a cell-centred model's input is made (:mod:`allxai.contract.cellview`); absent: a field model.
    cell_input: CellRecipe | None = None
    #: Fields the contract does not know, as written (and the gateway's notes on where values came from).
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The card as a JSON object: the fields it gives, lists for tuples; unknown fields as they are."""
        known: dict[str, Any] = {}
        for name in _KNOWN:
            value = getattr(self, name)
            if isinstance(value, DomainGate | ConformalSets | CellRecipe):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            if value is not None:
                known[name] = value
        return {**self.extra, **known}

    def classes_and_size(self, where: str = "") -> tuple[tuple[str, ...], tuple[int, int]]:
        """``class_names`` and ``input_size``, or :class:`CardError` when the card lacks either."""
        if self.class_names is None or self.input_size is None:
            missing = [n for n in ("class_names", "input_size") if getattr(self, n) is None]
            raise CardError(
                f"{_the(where)} gives no {' and no '.join(missing)}; "
                "the card of an export must give class_names and input_size"
            )
        return self.class_names, self.input_size


def parse_card(raw: object, where: str = "", *, complete: bool = False) -> ModelCard:
    """The :class:`ModelCard` of JSON text or bytes, or of a mapping as :func:`json.loads` gives it.

    ``where`` names the card in messages (a file, a signature). ``complete`` requires ``class_names``
    and ``input_size``, as the card of an export must give them. Raises :class:`CardError`.
    """
    the = _the(where)
    if isinstance(raw, str | bytes | bytearray):
        try:
            raw = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise CardError(f"{the} is not valid JSON: {exc}") from exc
    if not isinstance(raw, Mapping) or not all(isinstance(key, str) for key in raw):
        raise CardError(f"{the} is not a JSON object")
    given = {key: _PARSERS[key](value, key, the) for key, value in raw.items() if key in _PARSERS}
    card = ModelCard(**given, extra={key: value for key, value in raw.items() if key not in _PARSERS})
    if card.class_names is not None:
        if card.normal_class_names is not None:
            normal_classes(card.class_names, card.normal_class_names)
        strangers = sorted(set(card.display_names or ()) - set(card.class_names))
        if strangers:
            raise CardError(
                f"{the} gives display_names for {', '.join(map(repr, strangers))}, which it does not list "
                f"among its classes ({', '.join(card.class_names)})"
            )
    if complete:
        card.classes_and_size(where)
    return card


def dump_card(card: ModelCard, *, indent: int | None = None) -> str:
    """The card as JSON text, keys sorted, so that equal cards give equal text."""
    return json.dumps(card.to_dict(), sort_keys=True, indent=indent)


def check_class_names(names: object, where: str) -> tuple[str, ...]:
    """Class names as a tuple, or :class:`CardError` unless they are a non-empty list of distinct,
    non-blank strings; ``where`` says who gave them (a card, a setting)."""
    if not (
        isinstance(names, list | tuple) and names and all(isinstance(n, str) and n.strip() for n in names)
    ):
        raise CardError(f"{where} must give class_names as a list of non-empty strings")
    twice = sorted(n for n, count in Counter(names).items() if count > 1)
    if twice:
        raise CardError(f"{where} names a class twice ({', '.join(twice)})")
    return tuple(names)


def normal_classes(class_names: Sequence[str], declared: Sequence[str] | None = None) -> tuple[str, ...]:
    """The normal classes: ``declared`` (a card's ``normal_class_names``) when given, else the classes
    named in :data:`NORMAL_CLASS_NAMES`. Declared names that are not classes are a :class:`CardError`,
    since a specimen's blast count would otherwise quietly count every cell."""
    if declared is None:
        return tuple(n for n in class_names if n in NORMAL_CLASS_NAMES)
    if not all(n in class_names for n in declared):
        raise CardError(
            f"the model card's normal_class_names {list(declared)!r} must list some of its classes "
            f"({', '.join(class_names)})"
        )
    return tuple(declared)


def _the(where: str) -> str:
    return f"the model card ({where})" if where else "the model card"


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _wrong(the: str, key: str, value: object, expected: str) -> CardError:
    return CardError(f"{the} gives {key} {_show(value)}; expected {expected}")


def _size(value: object, key: str, the: str) -> tuple[int, int]:
    if not (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise _wrong(the, key, value, "[height, width]")
    return int(value[0]), int(value[1])


def _names(value: object, key: str, the: str) -> tuple[str, ...]:
    return check_class_names(value, the)


def _name_list(value: object, key: str, the: str) -> tuple[str, ...]:
    if not (isinstance(value, list | tuple) and all(isinstance(n, str) for n in value)):
        raise _wrong(the, key, value, "a list of class names")
    return tuple(value)


def _text(value: object, key: str, the: str) -> str:
    if not isinstance(value, str):
        raise _wrong(the, key, value, "a string")
    return value


def _integer(value: object, key: str, the: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _wrong(the, key, value, "an integer")
    return value


def _object(value: object, key: str, the: str) -> dict[str, Any]:
    if not (isinstance(value, Mapping) and all(isinstance(k, str) for k in value)):
        raise _wrong(the, key, value, "a JSON object")
    return dict(value)


def _texts(value: object, key: str, the: str) -> dict[str, str]:
    if not (isinstance(value, Mapping) and all(isinstance(v, str) for v in value.values())):
        raise _wrong(the, key, value, "a JSON object of strings")
    return _object(value, key, the)


def _calibration(parse: Callable[[object], Any]) -> Callable[[object, str, str], Any]:
    def parsed(value: object, key: str, the: str) -> Any:
        try:
            return parse(value)
        except (CalibrationError, RecipeError) as exc:
            raise CardError(f"{the}: {exc}") from exc

    return parsed


_PARSERS: dict[str, Callable[[object, str, str], Any]] = {
    "class_names": _names,
    "input_size": _size,
    "normal_class_names": _name_list,
    "display_names": _texts,
    "preprocessing": _text,
    "name": _text,
    "version": _integer,
    "architecture": _text,
    "data": _object,
    "metrics": _object,
    "training": _object,
    "source_commit": _text,
    "software": _texts,
    "domain": _calibration(DomainGate.parse),
    "conformal": _calibration(ConformalSets.parse),
    "cell_input": _calibration(CellRecipe.parse),
}
_KNOWN = tuple(f.name for f in fields(ModelCard) if f.name != "extra")
assert set(_KNOWN) == set(_PARSERS), "every field of the card has exactly one parser"
