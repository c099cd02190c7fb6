"""Predict functions as the explainer engine's Predictor, for tests of the engine and the explainer."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from allxai.explainer import perturb

Fn = Callable[[npt.NDArray[np.uint8]], npt.NDArray[np.float32]]


class FnPredictor:
    """A predict function as the engine's Predictor, with or without model-side composition."""

    def __init__(self, fn: Fn, composition: bool) -> None:
        self.fn = fn
        self.has_composition = composition
        self.calls: list[int] = []

    async def predict(self, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        self.calls.append(len(images))
        return self.fn(images)

    async def predict_composed(self, composition: perturb.Composition) -> npt.NDArray[np.float32]:
        self.calls.append(len(composition))
        return self.fn(composition.images())
