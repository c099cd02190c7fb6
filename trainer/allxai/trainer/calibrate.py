"""Calibration at export: fit the domain gate on the training images, set its threshold and the conformal
levels on the calibration images (the validation split, held out by group), and measure both on the test
split. What it returns goes into the model card (``domain`` and ``conformal``) and the SavedModel."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from allxai.contract import conformal, names
from allxai.contract.calibration import ConformalSets, DomainGate
from allxai.trainer.domain import DomainDetector, Floats, Gaussian, View, feature_taps, robust_scale
from allxai.trainer.domain_stats import input_statistics

log = logging.getLogger(__name__)

Images = npt.NDArray[np.uint8]
Labels = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Split:
    """Images of one split, their labels, and the encoded files they came from (for the set draws)."""

    images: Images
    labels: Labels
    files: tuple[Path, ...]

    def draws(self) -> Floats:
        """Each image's APS draw, from its file's bytes, as the gateway draws it from the request's."""
        return np.array([conformal.uniform_from_bytes(p.read_bytes()) for p in self.files])


@dataclass(frozen=True)
class Calibration:
    """The gate to build into the graph, and the card's two entries."""

    detector: DomainDetector
    gate: DomainGate
    sets: ConformalSets


def _outputs(joint: Any, images: Images, batch: int = 64) -> tuple[Floats, list[Floats]]:
    """Probabilities and feature taps of ``images``, in batches."""
    probs: list[Floats] = []
    taps: list[list[Floats]] = []
    for i in range(0, len(images), batch):
        out = joint(images[i : i + batch].astype(np.float32), training=False)
        probs.append(np.asarray(out[0], np.float64))
        taps.append([np.asarray(t, np.float64) for t in out[1:]])
    return np.concatenate(probs), [np.concatenate(parts) for parts in zip(*taps, strict=True)]


def _statistics(images: Images, batch: int = 256) -> Floats:
    return np.concatenate(
        [
            np.asarray(input_statistics(images[i : i + batch]), np.float64)
            for i in range(0, len(images), batch)
        ]
    )


def _quantile(values: Floats, level: float) -> float:
    """The ``ceil((n + 1) level)``-th smallest value: at least ``level`` of exchangeable new values fall at
    or below it. With too few values for the level, the largest (the guarantee is then weaker)."""
    ordered = np.sort(values)
    k = min(math.ceil((len(ordered) + 1) * level), len(ordered))
    return float(ordered[k - 1])


def harmless_copies(images: Images, seed: int = 0) -> Images:
    """One changed copy of each image that any laboratory's next smear could show: a flip or a quarter
    turn, and the brightness scaled by 0.88 to 1.12. Fitted beside the originals, they teach the gate to
    tolerate what is not a change of domain, from in-domain images alone."""
    rng = np.random.default_rng(seed)
    out = np.empty_like(images)
    for i, image in enumerate(images):
        turned = np.rot90(image, int(rng.integers(4)))
        if rng.random() < 0.5:
            turned = turned[:, ::-1]
        out[i] = np.clip(turned * rng.uniform(0.88, 1.12), 0, 255).astype(np.uint8)
    return out


def fit_gate(
    joint: Any,
    tap_names: list[str],
    train: Split,
    calibration: Split,
    calibration_taps: list[Floats],
    acceptance: float,
) -> DomainDetector:
    """Fit every view on ``train`` and its harmless copies, standardise and threshold on ``calibration``
    (whose feature taps the caller computed once); ``joint`` gives the probabilities and the feature taps
    (:func:`~allxai.trainer.domain.feature_taps`)."""
    images = np.concatenate([train.images, harmless_copies(train.images)])
    labels = np.concatenate([train.labels, train.labels])
    _, train_taps = _outputs(joint, images)
    gaussians: list[tuple[str, int | None, Gaussian]] = [
        (name, i, Gaussian.fit(features, labels))
        for i, (name, features) in enumerate(zip(tap_names, train_taps, strict=True))
    ]
    gaussians.append(("pixel statistics", None, Gaussian.fit(_statistics(images), standardise=True)))
    cal_stats = _statistics(calibration.images)
    views = []
    for name, tap, gaussian in gaussians:
        distances = np.asarray(gaussian.distance(cal_stats if tap is None else calibration_taps[tap]))
        median, spread = robust_scale(distances)
        views.append(View(name, tap, gaussian, median, spread))
    detector = DomainDetector(tuple(views), math.inf, acceptance)
    scores = score(detector, calibration.images, calibration_taps)
    return DomainDetector(detector.views, _quantile(scores, acceptance), acceptance)


def score(detector: DomainDetector, images: Images, taps: list[Floats], batch: int = 256) -> Floats:
    """The gate's scores of ``images`` from their feature taps, computed as the SavedModel will."""
    out = [
        np.asarray(detector.score(images[i : i + batch], [t[i : i + batch] for t in taps]), np.float64)
        for i in range(0, len(images), batch)
    ]
    return np.concatenate(out) if out else np.zeros(0)


def calibrate(
    model: Any,
    train: Split,
    calibration: Split,
    test: Split | None,
    acceptance: float = 0.975,
    alphas: tuple[float, ...] = conformal.DEFAULT_ALPHAS,
) -> Calibration:
    """The gate and the conformal levels of ``model``, with their figures on the test split."""
    joint, tap_names = feature_taps(model)
    # One pass of the model over each split: its probabilities and feature taps serve every figure.
    cal_probs, cal_taps = _outputs(joint, calibration.images)
    detector = fit_gate(joint, tap_names, train, calibration, cal_taps, acceptance)
    cal_scores = conformal.scores(cal_probs, calibration.labels, calibration.draws())
    qhat = {a: conformal.quantile(cal_scores, a) for a in alphas}
    figures: dict[str, Any] = {"calibration": {"images": len(calibration.labels)}}
    set_figures: dict[str, Any] = {}
    if test is not None and len(test.labels):
        test_probs, test_taps = _outputs(joint, test.images)
        scores = score(detector, test.images, test_taps)
        accepted = scores <= detector.threshold
        correct = test_probs.argmax(axis=1) == test.labels
        figures["test"] = {
            "images": len(test.labels),
            "flagged": float(1 - accepted.mean()),
            "accuracy_all": float(correct.mean()),
            "accuracy_accepted": float(correct[accepted].mean()) if accepted.any() else None,
        }
        draws = test.draws()
        for a, q in qhat.items():
            members = conformal.prediction_sets(test_probs, q, draws)
            set_figures[f"{a:g}"] = {
                "coverage": conformal.coverage(members, test.labels),
                "mean_set_size": float(np.mean([len(m) for m in members])),
                "empty_sets": float(np.mean([len(m) == 0 for m in members])),
            }
    log.info("domain gate: threshold %.3f; %s", detector.threshold, figures)
    gate = DomainGate(names.DOMAIN_OUTPUT, detector.threshold, acceptance, detector.describe(), figures)
    sets = ConformalSets(qhat, "aps-randomised", len(calibration.labels), {"test": set_figures})
    return Calibration(detector, gate, sets)
