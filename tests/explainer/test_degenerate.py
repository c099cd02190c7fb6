"""Explanations of nothing: one sample, too few samples for stability, weights that are only noise."""

from __future__ import annotations

import asyncio
import warnings

import numpy as np
import numpy.typing as npt
import pytest

from allxai.explainer import render
from allxai.explainer.engine import ExplainSettings, explain
from allxai.explainer.result import NOISE_FLOOR, ExplanationResult
from allxai.trainer.synthetic import make_cell_image
from tests.explainer.test_engine import nucleus_score
from tests.support.predictors import FnPredictor


@pytest.fixture(scope="module")
def cell() -> npt.NDArray[np.uint8]:
    return make_cell_image(3, 96, np.random.default_rng(3))


def _explain(image: npt.NDArray[np.uint8], fn, **settings: object) -> ExplanationResult:  # type: ignore[no-untyped-def]
    return asyncio.run(explain(image, FnPredictor(fn, False), ExplainSettings(seed=5, **settings), label=0))  # type: ignore[arg-type]


def test_one_sample_has_no_r2_no_stability_and_no_evidence(
    cell: npt.NDArray[np.uint8], capfd: pytest.CaptureFixture[str]
) -> None:
    # sklearn warns that R² of one sample is undefined: the warning must stay inside the fit.
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        result = _explain(cell, nucleus_score, num_samples=1)
    assert escaped == []
    assert capfd.readouterr().err == ""
    q = result.quality
    assert q is not None
    assert q.r2 is None and q.stability is None and q.no_evidence
    assert result.top_segments == []
    said = " ".join(q.warnings())
    assert "no evidence" in said and "R² is undefined" in said


def test_below_20_samples_stability_is_absent_not_perfect(cell: npt.NDArray[np.uint8]) -> None:
    few = _explain(cell, nucleus_score, num_samples=19).quality
    enough = _explain(cell, nucleus_score, num_samples=20).quality
    assert few is not None and enough is not None
    assert few.stability is None and few.r2 is not None and not few.no_evidence
    assert any("stability was not measured" in w for w in few.warnings())
    assert enough.stability is not None and 0.0 <= enough.stability <= 1.0
    assert not any("stability" in w for w in enough.warnings())


def _blank_model(images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """The same answer for every image, give or take float32 rounding that depends on the batch."""
    rng = np.random.default_rng(len(images))
    noise = rng.normal(0, 1e-8, (len(images), 3))
    return (np.full((len(images), 3), 1 / 3) + noise).astype(np.float32)


def test_noise_weights_give_no_evidence_an_empty_top_k_and_a_neutral_heatmap() -> None:
    white = np.full((96, 96, 3), 255, np.uint8)
    white[30:60, 30:60] = 250  # faint enough to change nothing, enough for quickshift to find segments
    result = _explain(white, _blank_model, num_samples=300)
    assert int(result.segments.max()) >= 1
    assert 0 < max(abs(w) for _, w in result.weights) < NOISE_FLOOR
    q = result.quality
    assert q is not None and q.no_evidence
    assert result.top_segments == []
    assert q.stability is None  # noise has nothing to be stable about
    assert (q.cell_share, q.background_share, q.corner_share) == (0.0, 0.0, 0.0)
    assert any(w.startswith("no evidence") for w in q.warnings())
    assert (render.heatmap(result) == 255).all()
    assert (render.mask_image(white, result) == 127).all()


def test_a_real_signal_is_evidence(cell: npt.NDArray[np.uint8]) -> None:
    result = _explain(cell, nucleus_score, num_samples=100)
    q = result.quality
    assert q is not None and not q.no_evidence and q.r2 is not None and q.stability is not None
    assert result.top_segments
    assert not (render.heatmap(result) == 255).all()
