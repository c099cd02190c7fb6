"""The surrogate fit, with the ``lime`` package's own ``LimeBase``: kernel width 0.25, cosine
distance to the unperturbed row, its feature selection, its weighted ridge regression."""

from __future__ import annotations

import logging
import threading
import warnings
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import sklearn.metrics
from lime import lime_base

KERNEL_WIDTH = 0.25

_log = logging.getLogger(__name__)
# warnings.catch_warnings swaps process-wide state (before Python 3.14): two threads entering and
# leaving it out of order would leave a filter behind, so the fits that catch warnings take turns.
# A fit takes milliseconds; the lock costs nothing the model would notice.
_WARNINGS = threading.Lock()


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
    """Fit as ``LimeImageExplainer.explain_instance`` does after its sampling.

    What sklearn or numpy warn about on degenerate samples (R² of one sample is undefined, ...) is
    logged at DEBUG, not printed on the server's stderr: the quality figures say it to the reader.
    """
    with _WARNINGS, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        distances = sklearn.metrics.pairwise_distances(
            masks, masks[0].reshape(1, -1), metric="cosine"
        ).ravel()
        base = lime_base.LimeBase(_kernel, verbose=False, random_state=random_state)
        intercept, exp, score, local_pred = base.explain_instance_with_data(
            masks, probs, distances, label, num_features, feature_selection=feature_selection
        )
    for warning in caught:
        _log.debug("surrogate fit on %d samples: %s", len(masks), warning.message)
    return SurrogateFit(
        float(intercept), [(int(s), float(w)) for s, w in exp], float(score), float(np.ravel(local_pred)[0])
    )


def top_k_separated(
    masks: npt.NDArray[np.int64],
    target: npt.NDArray[np.float32],
    k: int,
    z: float,
    positive_only: bool = True,
    features: list[int] | None = None,
) -> bool:
    """Whether the top-k superpixels, chosen as :func:`result.top_segments` chooses them, are ``z``
    standard errors clear of the rest in lime's weighted ridge regression.

    The fit is lime's final one in closed form (``sigma^2 (X'WX + I)^-1`` on centred data) over
    ``features``, the superpixels lime's feature selection kept (default: all). The boundary tested:
    by signed weight, the k-th against the (k+1)-th when ``positive_only`` and at least k weights are
    positive; with fewer positive weights the set is all of them, so the smallest positive one must
    be clear above zero and the largest other one clear below it; by absolute weight otherwise.
    A target that never changes has nothing to separate: more samples cannot change its top-k.
    """
    x = masks.astype(np.float64)
    if features is not None:
        x = x[:, features]
    y = target.astype(np.float64)
    if np.ptp(y) == 0:
        return True
    beta, cov = _weighted_ridge(x, y)
    n = beta.size

    def clear(i: int, j: int, sign_i: float, sign_j: float) -> bool:
        gap = sign_i * beta[i] - sign_j * beta[j]
        variance = cov[i, i] + cov[j, j] - 2 * sign_i * sign_j * cov[i, j]
        return bool(gap > z * np.sqrt(max(variance, 1e-18)))

    if positive_only:
        order = np.argsort(-beta)
        positives = int((beta > 0).sum())
        if positives >= k:
            return n == k or clear(order[k - 1], order[k], 1.0, 1.0)

        # Fewer than k positive weights: the set changes when a weight changes sign.
        def off_zero(i: int, sign: float) -> bool:
            return bool(sign * beta[i] > z * np.sqrt(max(cov[i, i], 1e-18)))

        above = positives == 0 or off_zero(order[positives - 1], 1.0)
        below = positives == n or off_zero(order[positives], -1.0)
        return above and below
    if n <= k:
        return True
    order = np.argsort(-np.abs(beta))
    i, j = order[k - 1], order[k]
    return clear(i, j, float(np.sign(beta[i])), float(np.sign(beta[j])))


def _weighted_ridge(
    x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """lime's Ridge(alpha=1), weighted by the kernel of the distance to row 0: weights, covariance."""
    distances = sklearn.metrics.pairwise_distances(x, x[:1], metric="cosine").ravel()
    w = _kernel(distances)
    mean_x, mean_y = w @ x / w.sum(), w @ y / w.sum()
    xc, yc = x - mean_x, y - mean_y
    gram = xc.T @ (xc * w[:, None]) + np.eye(x.shape[1])
    inverse = np.linalg.inv(gram)
    beta = inverse @ (xc.T @ (w * yc))
    residual = yc - xc @ beta
    dof = max(1.0, w.sum() - x.shape[1] - 1)
    return beta, (w @ residual**2) / dof * inverse
