"""Split-conformal prediction sets (adaptive prediction sets, APS), shared by the trainer and the gateway.

The trainer calibrates at export: on a calibration split held out by group, each image's conformity score is
the probability mass of the classes ranked above its true class plus a uniform share ``u`` of the true class's
own (randomised APS, Romano, Sesia and Candès 2020). For a level ``alpha``, ``qhat`` is the
``ceil((n + 1) (1 - alpha)) / n`` quantile of those scores. The gateway then answers with every class whose
score stays within ``qhat``: on exchangeable images the set holds the true class with probability at least
``1 - alpha`` and, because the scores are randomised, not much more than that.

Randomised sets need a uniform draw per image. Drawn afresh, the same image could get another set on a retry,
so ``u`` is derived from the image's bytes: the same image always gets the same set, and across images the
draws are uniform. An empty set is possible (at large ``alpha`` on a confident answer): it means no class is
needed to reach the level, not that no class fits; the gateway reports it as it is.

NumPy only: no TensorFlow, nothing else of ours.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

#: The levels calibrated at export; a request chooses one of them.
DEFAULT_ALPHAS = (0.01, 0.05, 0.1, 0.2)
#: The level an answer uses unless the request asks for another.
DEFAULT_ALPHA = 0.05

Floats = npt.NDArray[np.float64]


def uniform_from_bytes(data: bytes) -> float:
    """A draw from [0, 1) that is the same for the same bytes: the APS randomisation of one image."""
    digest = hashlib.sha256(data).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def scores(probabilities: npt.ArrayLike, labels: npt.ArrayLike, draws: npt.ArrayLike) -> Floats:
    """Randomised APS conformity scores of calibration images with known ``labels``: ``[N]``."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    u = np.asarray(draws, dtype=np.float64)
    rows = np.arange(len(p))
    own = p[rows, y]
    # Mass strictly above the true class; ties are broken by class index, as in prediction_sets.
    order = np.argsort(-p, axis=1, kind="stable")
    rank = np.argsort(order, axis=1, kind="stable")[rows, y]
    sorted_p = np.take_along_axis(p, order, axis=1)
    above = np.where(np.arange(p.shape[1])[None, :] < rank[:, None], sorted_p, 0.0).sum(axis=1)
    return above + u * own  # type: ignore[no-any-return]


def quantile(calibration_scores: npt.ArrayLike, alpha: float) -> float:
    """``qhat`` for level ``alpha``: the finite-sample-corrected quantile of the calibration scores.

    With too few calibration images for the level (``ceil((n + 1)(1 - alpha)) > n``) every class is
    needed: the answer is ``inf``, and every set is the whole list of classes.
    """
    s = np.sort(np.asarray(calibration_scores, dtype=np.float64))
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be between 0 and 1, exclusive; got {alpha}")
    k = math.ceil((len(s) + 1) * (1.0 - alpha))
    return math.inf if k > len(s) else float(s[k - 1])


def prediction_set(probabilities: Sequence[float] | npt.ArrayLike, qhat: float, draw: float) -> list[int]:
    """The class indices of one image's set at the level ``qhat`` was calibrated for, most probable first."""
    p = np.asarray(probabilities, dtype=np.float64)
    order = np.argsort(-p, kind="stable")
    before = np.concatenate([[0.0], np.cumsum(p[order])[:-1]])
    keep = before + draw * p[order] <= qhat
    return [int(i) for i in order[keep]]


def prediction_sets(probabilities: npt.ArrayLike, qhat: float, draws: npt.ArrayLike) -> list[list[int]]:
    """``prediction_set`` for each row of ``probabilities`` ``[N, C]`` with its own draw."""
    p = np.asarray(probabilities, dtype=np.float64)
    u = np.asarray(draws, dtype=np.float64)
    return [prediction_set(row, qhat, float(d)) for row, d in zip(p, u, strict=True)]


def coverage(sets: Sequence[Sequence[int]], labels: npt.ArrayLike) -> float:
    """The share of sets that hold their true label."""
    y = np.asarray(labels, dtype=np.int64)
    if len(sets) == 0:
        raise ValueError("no sets to measure")
    return float(np.mean([int(label) in s for s, label in zip(sets, y, strict=True)]))
