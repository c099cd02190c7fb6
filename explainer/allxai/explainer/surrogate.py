"""The surrogate fit, with the ``lime`` package's own ``LimeBase``: kernel width 0.25, cosine
distance to the unperturbed row, its feature selection, its weighted ridge regression."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import sklearn.metrics
from lime import lime_base

KERNEL_WIDTH = 0.25


def _kernel(d: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    # lime_image.LimeImageExplainer's kernel with kernel_width=0.25.
    return np.asarray(np.sqrt(np.exp(-(d**2) / KERNEL_WIDTH**2)))


@dataclass(frozen=True)
class SurrogateFit:
    """The local linear model for one label."""

    intercept: float
    weights: list[tuple[int, float]]  # (segment, weight), strongest |weight| first, as lime orders them
    score: float  # R^2 on the weighted samples
    local_prediction: float  # the surrogate's value for the unperturbed image


def fit(
    masks: npt.NDArray[np.int64],
    probs: npt.NDArray[np.float32],
    label: int,
    random_state: np.random.RandomState,
    num_features: int = 100000,
    feature_selection: str = "auto",
) -> SurrogateFit:
    """Fit as ``LimeImageExplainer.explain_instance`` does after its sampling."""
    distances = sklearn.metrics.pairwise_distances(masks, masks[0].reshape(1, -1), metric="cosine").ravel()
    base = lime_base.LimeBase(_kernel, verbose=False, random_state=random_state)
    intercept, exp, score, local_pred = base.explain_instance_with_data(
        masks, probs, distances, label, num_features, feature_selection=feature_selection
    )
    return SurrogateFit(
        float(intercept), [(int(s), float(w)) for s, w in exp], float(score), float(np.ravel(local_pred)[0])
    )
