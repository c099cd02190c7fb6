"""The one interface every model backend implements."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from allxai.contract import names as contract
from allxai.contract.calibration import ConformalSets, DomainGate
from allxai.contract.card import ModelCard, dump_card, normal_classes
from allxai.contract.cellrecipe import CellRecipe
from allxai.explainer.perturb import Composition

#: Who is waiting on a prediction: a person (Classify) or an explanation's many perturbation batches.
#: Backends serve ``interactive`` work first, so Explain traffic cannot starve Classify.
Lane = Literal["interactive", "bulk"]


@dataclass(frozen=True)
class ModelSpec:
    """Which model a request asks for; empty fields mean the defaults."""

    name: str = ""
    version: int | None = None
    version_label: str | None = None


@dataclass(frozen=True)
class ModelInfo:
    """What the gateway needs to know of a loaded model (read from its model card).

    ``serving_input`` and ``serving_output`` are the keys of ``serving_default``'s image input and
    score output: the contract's names for our exports, whatever a model from elsewhere calls them.
    """

    name: str
    version: int
    class_names: tuple[str, ...]
    input_size: tuple[int, int]
    normal_class_names: tuple[str, ...] = ()
    preprocessing: str = ""
    has_composition: bool = False
    card_json: str = "{}"
    available_versions: tuple[int, ...] = field(default_factory=tuple)
    serving_input: str = contract.SERVING_INPUT
    serving_output: str = contract.OUTPUT
    #: The input-domain gate the card promises (its score is ``serving_default``'s output
    #: ``domain.output``); ``None``: the model makes no domain check.
    domain: DomainGate | None = None
    #: The conformal calibration of the card; ``None``: no prediction sets.
    conformal: ConformalSets | None = None
    #: How the card says a cell-centred model's input is made; ``None``: a field model (the whole image).
    cell_input: CellRecipe | None = None

    @property
    def serving_outputs(self) -> tuple[str, ...]:
        """The outputs a prediction fetches from ``serving_default``: the scores, then the domain score."""
        return (self.serving_output,) if self.domain is None else (self.serving_output, self.domain.output)

    @property
    def row_width(self) -> int:
        """Columns of ``Backend.predict``'s rows: one per class, one more for a domain score."""
        return len(self.class_names) + (self.domain is not None)

    @classmethod
    def from_card(
        cls,
        name: str,
        version: int,
        card: ModelCard,
        has_composition: bool,
        available_versions: tuple[int, ...],
    ) -> ModelInfo:
        """What a model card says (the model's own, or the one the gateway derived), the same way for
        every backend; the normal classes by the contract's rule. A card without class names or input
        size is a :class:`~allxai.contract.card.CardError`."""
        class_names, input_size = card.classes_and_size()
        return cls(
            name=name,
            version=version,
            class_names=class_names,
            input_size=input_size,
            normal_class_names=normal_classes(class_names, card.normal_class_names),
            preprocessing=card.preprocessing or "",
            has_composition=has_composition,
            card_json=dump_card(card),
            available_versions=available_versions,
            domain=card.domain,
            conformal=card.conformal,
            cell_input=card.cell_input,
        )


class Backend(Protocol):
    """A place where models run: in-process, or TensorFlow Serving."""

    async def start(self) -> None:
        """Load the models and answer one warm-up prediction each; raise if none can serve."""

    async def close(self) -> None:
        """Release the models and channels."""

    async def check(self) -> bool:
        """Whether the backend can answer now (polled for the health service)."""

    async def resolve(self, spec: ModelSpec, timeout: float | None = None) -> ModelInfo:
        """The model a spec names, or raise ``ModelNotFound``; ``timeout`` bounds any remote lookup."""

    def interactive(self) -> AbstractContextManager[None]:
        """A scope around a whole interactive call (Classify, from decoding to the answer), during which
        the backend holds its bulk work back where it shares the gateway's cores with it."""

    async def predict(
        self,
        model: ModelInfo,
        images: npt.NDArray[np.uint8],
        timeout: float | None,
        lane: Lane = "interactive",
    ) -> npt.NDArray[np.float32]:
        """Rows ``[N, model.row_width]`` for uint8 images ``[N, H, W, 3]`` at the model's input size: the
        class probabilities, then (for a model with a domain gate) its out-of-domain score.

        One float32 matrix per batch, so batches coalesce, queue and concatenate as one array whatever the
        model gives; :func:`split_rows` takes them apart."""

    async def predict_composed(
        self, model: ModelInfo, composition: Composition, timeout: float | None, lane: Lane = "bulk"
    ) -> npt.NDArray[np.float32]:
        """Probabilities of the perturbed images the model's ``compose`` signature builds from
        ``composition`` (one per mask row); only for models with ``has_composition``."""


def split_rows(
    model: ModelInfo, rows: npt.NDArray[np.float32]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
    """``Backend.predict``'s rows as the probabilities ``[N, C]`` and the domain scores ``[N]`` (or None)."""
    classes = len(model.class_names)
    return rows[:, :classes], (rows[:, classes] if model.domain is not None else None)


def compose_inputs(composition: Composition) -> dict[str, npt.NDArray[np.generic]]:
    """The ``compose`` signature's inputs, by the contract's names."""
    values = (composition.image, composition.fill, composition.segments, composition.masks)
    return dict(zip(contract.COMPOSE_INPUTS, values, strict=True))
