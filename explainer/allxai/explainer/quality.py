"""The quality figures of an explanation: surrogate fit, stability, and where the weight lies."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from allxai.explainer import regions, surrogate
from allxai.explainer.result import MIN_STABILITY_SAMPLES, NOISE_FLOOR, Quality, top_segments

if TYPE_CHECKING:
    from allxai.explainer.engine import ExplainSettings

Image = npt.NDArray[np.uint8]
Probs = npt.NDArray[np.float32]


def measure(
    image: Image,
    segments: npt.NDArray[np.int32],
    masks: npt.NDArray[np.int64],
    probs: Probs,
    label: int,
    fit: surrogate.SurrogateFit,
    model_prediction: float,
    settings: ExplainSettings,
    cells: npt.NDArray[np.bool_] | None,
) -> Quality:
    """How far to trust an explanation: the fit, its stability over half-samples, where its weight lies.

    ``cells`` marks the white cells (the gateway's preprocessing found them); without it, or when it does
    not match the segmentation's shape, the localiser runs on ``image``. A figure that cannot be had
    is None rather than a number that looks measured: R² with fewer than two samples, stability with
    fewer than :data:`MIN_STABILITY_SAMPLES`. Weights that are only noise have no stability and no
    place: their top-k is empty and their shares are 0 (the shares of noise would point anywhere).
    """
    empty = no_evidence(fit.weights)
    reference = set(top_segments(fit.weights, settings.top_k, settings.positive_only))
    overlaps = []
    rng = np.random.default_rng(settings.seed + 1)
    half = max(2, len(masks) // 2)
    measured = len(masks) >= MIN_STABILITY_SAMPLES and not empty
    for _ in range(settings.stability_refits if measured else 0):
        # Refit on a random half (always with the unperturbed row first, as lime's distances need).
        rows = np.concatenate([[0], 1 + rng.choice(len(masks) - 1, size=half - 1, replace=False)])
        refit = surrogate.fit(
            masks[rows], probs[rows], label, np.random.RandomState(0), settings.num_features
        )
        other = set(top_segments(refit.weights, settings.top_k, settings.positive_only))
        union = reference | other
        overlaps.append(len(reference & other) / len(union) if union else 1.0)
    if cells is None or cells.shape != segments.shape:
        cells = regions.cell_mask(image)
    cell, background, corner = (
        (0.0, 0.0, 0.0) if empty else regions.weight_shares(segments, fit.weights, cells)
    )
    return Quality(
        r2=fit.score if np.isfinite(fit.score) else None,
        local_prediction=fit.local_prediction,
        model_prediction=model_prediction,
        stability=float(np.mean(overlaps)) if overlaps else None,
        cell_share=cell,
        background_share=background,
        corner_share=corner,
        no_evidence=empty,
    )


def no_evidence(weights: list[tuple[int, float]]) -> bool:
    """Whether no weight stands clear of the model's numerical noise (:data:`NOISE_FLOOR`)."""
    return max((abs(w) for _, w in weights), default=0.0) < NOISE_FLOOR
