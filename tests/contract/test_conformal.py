"""Split-conformal APS sets: the guarantee on exchangeable data, repeatable draws, and the edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from allxai.contract import conformal


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A 4-class problem whose probabilities are calibrated: labels drawn from them."""
    rng = np.random.default_rng(seed)
    probs = _softmax(rng.normal(0, 2.5, size=(n, 4)))
    labels = np.array([rng.choice(4, p=p) for p in probs])
    return probs, labels


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
def test_coverage_is_close_to_the_level_on_exchangeable_data(alpha: float) -> None:
    probs, labels = _data(6000, seed=1)
    rng = np.random.default_rng(2)
    u = rng.uniform(size=len(probs))
    cal, test = slice(0, 3000), slice(3000, 6000)
    qhat = conformal.quantile(conformal.scores(probs[cal], labels[cal], u[cal]), alpha)
    sets = conformal.prediction_sets(probs[test], qhat, u[test])
    covered = conformal.coverage(sets, labels[test])
    # Within 1.5 points of 1 - alpha: randomised APS neither under- nor over-covers.
    assert covered == pytest.approx(1 - alpha, abs=0.015)
    assert all(s == sorted(s, key=lambda i, p=p: -p[i]) for s, p in zip(sets, probs[test], strict=True))


def test_a_class_is_in_the_set_exactly_when_its_score_is_within_qhat() -> None:
    probs, _ = _data(200, seed=3)
    u = np.random.default_rng(4).uniform(size=200)
    qhat = 0.8
    for p, d in zip(probs, u, strict=True):
        members = set(conformal.prediction_set(p, qhat, float(d)))
        for k in range(4):
            score = conformal.scores(p[None], [k], [d])[0]
            assert (k in members) == (score <= qhat)


def test_the_draw_depends_only_on_the_bytes() -> None:
    a = conformal.uniform_from_bytes(b"cell one")
    assert a == conformal.uniform_from_bytes(b"cell one")
    assert a != conformal.uniform_from_bytes(b"cell two")
    draws = [conformal.uniform_from_bytes(i.to_bytes(4, "big")) for i in range(4000)]
    assert min(draws) >= 0 and max(draws) < 1
    assert np.mean(draws) == pytest.approx(0.5, abs=0.02)


def test_too_few_calibration_images_for_a_level_give_every_class() -> None:
    assert conformal.quantile([0.2, 0.4, 0.6], 0.01) == math.inf
    assert conformal.prediction_set([0.7, 0.2, 0.1], math.inf, 0.5) == [0, 1, 2]
    assert conformal.quantile([0.1, 0.2, 0.3, 0.4], 0.2) == pytest.approx(0.4)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5])
def test_levels_outside_zero_and_one_are_refused(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha must be between 0 and 1"):
        conformal.quantile([0.1, 0.2], alpha)
