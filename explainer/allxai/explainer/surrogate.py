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


def top_k_separated(masks: npt.NDArray[np.int64], target: npt.NDArray[np.float32], k: int, z: float) -> bool:
    """Whether the k-th and (k+1)-th strongest weights of lime's weighted ridge regression differ
    by more than ``z`` standard errors (closed form: sigma^2 (X'WX + I)^-1 on centred data)."""
    x = masks.astype(np.float64)
    if x.shape[1] <= k:
        return True
    distances = sklearn.metrics.pairwise_distances(x, x[:1], metric="cosine").ravel()
    w = _kernel(distances)
    y = target.astype(np.float64)
    mean_x, mean_y = w @ x / w.sum(), w @ y / w.sum()
    xc, yc = x - mean_x, y - mean_y
    gram = xc.T @ (xc * w[:, None]) + np.eye(x.shape[1])  # Ridge(alpha=1), as LimeBase fits it
    inverse = np.linalg.inv(gram)
    beta = inverse @ (xc.T @ (w * yc))
    residual = yc - xc @ beta
    dof = max(1.0, w.sum() - x.shape[1] - 1)
    cov = (w @ residual**2) / dof * inverse
    order = np.argsort(-beta)
    i, j = order[k - 1], order[k]
    se = np.sqrt(max(cov[i, i] + cov[j, j] - 2 * cov[i, j], 1e-18))
    return bool(beta[i] - beta[j] > z * se)
