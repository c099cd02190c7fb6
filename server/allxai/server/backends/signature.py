"""What a model's ``serving_default`` signature and its card (if any) tell the gateway.

Both backends describe the signature's tensors in the plain terms of :class:`TensorSpec` (the
embedded backend from the loaded function, TensorFlow Serving's from ``GetModelMetadata``) and call
:func:`derive_model_info`, so the rules below are written once:

- ``serving_default`` takes one uint8 image tensor ``[N, H, W, 3]`` and gives one floating-point
  tensor ``[N, C]`` (with several outputs, the one named ``probabilities`` is taken); the tensors may
  have any names, and the backends send and read them by the names found here;
- the input size comes from the card, else from the signature's static ``H`` and ``W``;
- the class names come from the card (the ``model_card`` signature, or the embedded backend's
  ``assets.extra/model_card.json``), else from the ``ALLXAI_CLASS_NAMES`` setting, else
  ``class_0 .. class_{C-1}``; for a model without the ``model_card`` signature, the card the gateway
  returns says where each came from under ``"source"``.

The card's schema and the class-name rules are the contract's (:mod:`allxai.contract.card`); what
breaks them, and anything else, is a :class:`ContractError` naming the model and what is wrong.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from allxai.contract import names as contract
from allxai.contract.card import CardError, ModelCard, check_class_names, normal_classes, parse_card
from allxai.contract.preprocessing import DESCRIPTION as PREPROCESSING
from allxai.server.backends.base import ModelInfo

log = logging.getLogger(__name__)

#: Where class names for models without a card are configured (for messages and the card's source).
CLASS_NAMES_SETTING = "ALLXAI_CLASS_NAMES"
_FLOATS = frozenset({"float16", "bfloat16", "float32", "float64"})


class ContractError(ValueError):
    """A model the gateway cannot serve: its signature or card breaks the model contract."""


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a signature: its key, TensorFlow's dtype name, and its shape.

    ``shape`` is ``None`` when even the rank is unknown; unknown sizes within it are ``None``.
    """

    key: str
    dtype: str
    shape: tuple[int | None, ...] | None


@dataclass(frozen=True)
class CardSource:
    """A model card the backend found, and where (for messages and the card's ``source``)."""

    #: A :class:`ModelCard` (from :func:`card_from_json`), or JSON as :func:`json.loads` gives it,
    #: checked when the model is derived.
    card: Any
    where: str
    #: True for the ``model_card`` signature of our own exports: their card is returned unchanged.
    is_signature: bool = False


def derive_model_info(
    name: str,
    version: int,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    *,
    card: CardSource | None,
    configured_names: Sequence[str] | None,
    has_composition: bool,
    available_versions: tuple[int, ...],
) -> ModelInfo:
    """The :class:`ModelInfo` of ``serving_default``'s tensors and the card, or :class:`ContractError`."""
    what = f"model {name} version {version}"
    image = _image_input(what, inputs)
    scores = _score_output(what, outputs)
    own = _own_card(what, card)
    classes = scores.shape[1] if scores.shape is not None else None
    size, size_from = _input_size(what, image, own, card)
    names, names_from = _class_names(what, classes, own, card, configured_names)
    with _refused(what):
        # Without a card's word, the trainer's rule; a wrong word would have a specimen's blast
        # count quietly count every cell.
        normal = normal_classes(names, own.normal_class_names)
    if card is not None and card.is_signature:
        # Our own exports: the card as it was written (the signature matched it above).
        result = own
    else:
        result = replace(
            own,
            class_names=tuple(names),
            normal_class_names=normal,
            input_size=size,
            preprocessing=PREPROCESSING if own.preprocessing is None else own.preprocessing,
            extra={
                **own.extra,
                "source": {
                    "card": card.where if card is not None else "none",
                    "class_names": names_from,
                    "input_size": size_from,
                },
                "signature": {"input": image.key, "output": scores.key},
            },
        )
    with _refused(what):
        info = ModelInfo.from_card(name, version, result, has_composition, available_versions)
    if info.domain is not None:
        _domain_output(what, info.domain.output, outputs)
    # The tensors go by the names the signature gives them, whatever the card says.
    return replace(info, serving_input=image.key, serving_output=scores.key)


def card_from_json(
    name: str, version: int, raw: str | bytes, where: str, *, is_signature: bool = False
) -> CardSource:
    """A card read from JSON text under the contract's schema (with ``class_names`` and ``input_size``
    for the ``model_card`` signature of our exports); else a :class:`ContractError` naming the model
    and ``where``."""
    with _refused(f"model {name} version {version}"):
        return CardSource(parse_card(raw, where, complete=is_signature), where, is_signature)


def check_scores(model: ModelInfo, scores: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """The model's answer as float32 ``[N, C]``, or :class:`ContractError` for another shape or a NaN.

    Needed where the signature left ``C`` open and the class names came from elsewhere.
    """
    classes = len(model.class_names)
    if scores.ndim != 2 or scores.shape[1] != classes:
        raise ContractError(
            f"model {model.name} version {model.version} answered with shape {list(scores.shape)}, "
            f"not [N, {classes}] for its {classes} classes"
        )
    out = np.asarray(scores, dtype=np.float32)
    if not np.isfinite(out).all():
        # A NaN would become the top class, fall out of every set and reach the audit trail as invalid JSON.
        raise ContractError(
            f"model {model.name} version {model.version} answered with scores that are not finite numbers"
        )
    return out


def rows(model: ModelInfo, outputs: Mapping[str, Any]) -> npt.NDArray[np.float32]:
    """``serving_default``'s answer as the rows ``Backend.predict`` returns: the probabilities ``[N, C]``,
    then the domain score as one more column where the model has a gate; else :class:`ContractError`."""
    probabilities = check_scores(model, np.asarray(outputs[model.serving_output]))
    if model.domain is None:
        return probabilities
    scores = np.asarray(outputs[model.domain.output], dtype=np.float32)
    if scores.shape != (len(probabilities),):
        raise ContractError(
            f"model {model.name} version {model.version} answered with domain scores of shape "
            f"{list(scores.shape)}, not [{len(probabilities)}]"
        )
    return np.concatenate([probabilities, scores[:, None]], axis=1)


def _domain_output(what: str, key: str, outputs: Sequence[TensorSpec]) -> None:
    """The card promises a domain score: ``serving_default`` must give it, one float per image."""
    found = {t.key: t for t in outputs}.get(key)
    if found is None:
        raise ContractError(
            f"{what}: its card's domain gate reads the output {key!r}, which {contract.SERVING_SIGNATURE!r} "
            f"does not give ({', '.join(sorted(t.key for t in outputs))})"
        )
    if found.dtype not in _FLOATS or found.shape is None or len(found.shape) != 1:
        raise ContractError(
            f"{what}: its domain score {key!r} must be floating-point [N]; it is "
            f"{found.dtype} {_shape(found.shape)}"
        )


def _image_input(what: str, inputs: Sequence[TensorSpec]) -> TensorSpec:
    if len(inputs) != 1:
        keys = ", ".join(sorted(t.key for t in inputs)) or "none"
        raise ContractError(
            f"{what}: {contract.SERVING_SIGNATURE!r} must take exactly one input, uint8 images "
            f"[N, H, W, 3]; it takes {len(inputs)} ({keys})"
        )
    (image,) = inputs
    ok_rank = image.shape is not None and len(image.shape) == 4
    if image.dtype != "uint8" or not ok_rank or image.shape is None or image.shape[3] not in (3, None):
        raise ContractError(
            f"{what}: {contract.SERVING_SIGNATURE!r} must take uint8 images [N, H, W, 3] (scaling "
            f"belongs inside the graph); its input {image.key!r} is {image.dtype} {_shape(image.shape)}"
        )
    return image


def _score_output(what: str, outputs: Sequence[TensorSpec]) -> TensorSpec:
    by_key = {t.key: t for t in outputs}
    if len(outputs) == 1:
        (scores,) = outputs
    elif contract.OUTPUT in by_key:
        scores = by_key[contract.OUTPUT]
    else:
        keys = ", ".join(sorted(by_key)) or "none"
        raise ContractError(
            f"{what}: {contract.SERVING_SIGNATURE!r} must give exactly one output, class scores "
            f"[N, C] (or one named {contract.OUTPUT!r}); it gives {len(outputs)} ({keys})"
        )
    if scores.dtype not in _FLOATS or scores.shape is None or len(scores.shape) != 2:
        raise ContractError(
            f"{what}: {contract.SERVING_SIGNATURE!r} must give floating-point class scores [N, C]; "
            f"its output {scores.key!r} is {scores.dtype} {_shape(scores.shape)}"
        )
    if scores.shape[1] is not None and scores.shape[1] < 1:
        raise ContractError(f"{what}: its output {scores.key!r} has no classes ({_shape(scores.shape)})")
    return scores


@contextmanager
def _refused(what: str) -> Iterator[None]:
    """The contract's :class:`CardError` as this model's :class:`ContractError`."""
    try:
        yield
    except CardError as exc:
        raise ContractError(f"{what}: {exc}") from exc


def _own_card(what: str, card: CardSource | None) -> ModelCard:
    """The card under the contract's schema; an empty one when there is none."""
    if card is None:
        return ModelCard()
    with _refused(what):
        own = card.card if isinstance(card.card, ModelCard) else parse_card(card.card, card.where)
        if card.is_signature:
            own.classes_and_size(card.where)
        return own


def _input_size(
    what: str, image: TensorSpec, own: ModelCard, card: CardSource | None
) -> tuple[tuple[int, int], str]:
    assert image.shape is not None  # checked by _image_input
    height, width = image.shape[1], image.shape[2]
    if own.input_size is not None:
        size = own.input_size
        if (height is not None and height != size[0]) or (width is not None and width != size[1]):
            raise ContractError(
                f"{what}: the model card ({card.where if card else ''}) gives input size "
                f"{size[0]}x{size[1]}, but {contract.SERVING_SIGNATURE!r} takes {_shape(image.shape)}"
            )
        return size, card.where if card is not None else ""
    if height is None or width is None:
        raise ContractError(
            f"{what}: {contract.SERVING_SIGNATURE!r} leaves the input size open "
            f"({image.key!r} is {_shape(image.shape)}) and no model card gives it; add "
            f'{contract.CARD_FILE} with "input_size": [height, width] to the version folder'
        )
    return (height, width), f"the {contract.SERVING_SIGNATURE!r} signature"


def _class_names(
    what: str,
    classes: int | None,
    own: ModelCard,
    card: CardSource | None,
    configured: Sequence[str] | None,
) -> tuple[list[str], str]:
    if own.class_names is not None:
        names, source = list(own.class_names), card.where if card is not None else ""
        if configured:
            log.warning("%s: its card names the classes; %s for it is ignored", what, CLASS_NAMES_SETTING)
    elif configured:
        names, source = list(configured), f"the setting {CLASS_NAMES_SETTING}"
        with _refused(what):
            check_class_names(names, source)
    elif classes is not None:
        names, source = [f"class_{i}" for i in range(classes)], "generic (no card and no setting)"
    else:
        raise ContractError(
            f"{what}: {contract.SERVING_SIGNATURE!r} leaves the number of classes open and nothing "
            f"names them; set {CLASS_NAMES_SETTING} for this model"
        )
    if classes is not None and len(names) != classes:
        raise ContractError(
            f"{what}: {source} gives {len(names)} class names, but the model gives scores for "
            f"{classes} classes"
        )
    return names, source


def _shape(shape: tuple[int | None, ...] | None) -> str:
    if shape is None:
        return "of unknown rank"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
