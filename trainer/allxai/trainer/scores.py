"""Classification metrics of one evaluation, and their summary over cross-validation folds.

Only numpy and scikit-learn: these run on the predictions, so reports can be rebuilt
without TensorFlow. Every value returned is a plain Python number, list or dict, ready for JSON.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

#: The keys that `summarize_folds` summarises unless told otherwise.
SUMMARY_KEYS = ("accuracy", "macro_f1", "weighted_f1", "roc_auc", "ece")


def _check(
    y_true: npt.ArrayLike, probs: npt.ArrayLike
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    labels = np.asarray(y_true).astype(np.int64).reshape(-1)
    scores = np.asarray(probs, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != labels.shape[0]:
        raise ValueError(f"probs must be [N, C] with N = len(y_true) = {len(labels)}; got {scores.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= scores.shape[1]):
        raise ValueError(f"y_true holds labels outside 0..{scores.shape[1] - 1}")
    return labels, scores


def expected_calibration_error(y_true: npt.ArrayLike, probs: npt.ArrayLike, bins: int = 15) -> float:
    """Expected calibration error of the top-class confidence over ``bins`` equal-width bins.

    Bin ``b`` holds the samples whose confidence lies in ``(b / bins, (b + 1) / bins]`` (the first
    bin also takes 0); the error is the sample-weighted mean of ``|accuracy - mean confidence|``
    over the bins (Guo et al., 2017). Returns 0.0 for no samples.
    """
    if bins < 1:
        raise ValueError("bins must be at least 1")
    labels, scores = _check(y_true, probs)
    if labels.size == 0:
        return 0.0
    confidence = scores.max(axis=1)
    correct = (scores.argmax(axis=1) == labels).astype(np.float64)
    # Right-closed bins, so a confidence of exactly 1.0 falls in the last bin, not past it.
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins).astype(np.float64)
    gap = np.abs(
        np.bincount(index, weights=correct, minlength=bins)
        - np.bincount(index, weights=confidence, minlength=bins)
    )
    # Sum over bins of n_b/N * |acc_b - conf_b| = sum of |sum(correct_b) - sum(conf_b)| / N.
    return float(gap.sum() / count.sum())


def _roc_auc(
    labels: npt.NDArray[np.int64], scores: npt.NDArray[np.float64], class_names: Sequence[str]
) -> tuple[float | None, str | None]:
    """ROC-AUC, or None with the reason when it is undefined for these labels."""
    absent = [name for i, name in enumerate(class_names) if not np.any(labels == i)]
    if absent:
        return None, f"undefined: no true samples of {', '.join(absent)}"
    if len(class_names) < 2:
        return None, "undefined: fewer than two classes"
    if len(class_names) == 2:
        return float(roc_auc_score(labels, scores[:, 1])), None
    value = roc_auc_score(
        labels, scores, multi_class="ovr", average="macro", labels=list(range(len(class_names)))
    )
    return float(value), None


def evaluate(y_true: npt.ArrayLike, probs: npt.ArrayLike, class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, F1s, ROC-AUC, calibration, per-class scores and the confusion matrix.

    ``y_true`` holds integer labels ``[N]``; ``probs`` the predicted class probabilities
    ``[N, C]`` with ``C = len(class_names)``. The prediction is the most probable class.
    Macro and weighted scores average over the classes present in ``y_true`` or the predictions
    (listed in ``averaged_over``); ``per_class`` has a row for every class, and a class that is
    neither true nor predicted has zeros there with ``absent`` true.
    ``roc_auc`` is the AUC of class 1's probability for two classes and the one-vs-rest macro
    AUC otherwise; it is None, with ``roc_auc_note`` saying why, when a class is absent from
    ``y_true``. ``confusion_matrix`` has rows for true classes and columns for predictions,
    all ``C`` of each even when a class never occurs.
    """
    labels, scores = _check(y_true, probs)
    num_classes = len(class_names)
    if scores.shape[1] != num_classes:
        raise ValueError(f"probs has {scores.shape[1]} columns for {num_classes} class names")
    predicted = scores.argmax(axis=1)
    every = list(range(num_classes))
    # Averages run over the classes that occur (true or predicted), as scikit-learn does without
    # ``labels``: a class missing from a validation fold is not a model error, and counting it
    # as F1 = 0 would make a perfect fold score 2/3 on three of four classes (and pick the
    # wrong best fold). With no samples at all, every class is averaged (all zeros).
    present = sorted(set(labels.tolist()) | set(predicted.tolist())) or every

    def prf(average: str | None, which: list[int]) -> tuple[Any, Any, Any, Any]:
        # zero_division=0: a class never predicted (or never true) scores 0, without a warning.
        return precision_recall_fscore_support(  # type: ignore[no-any-return]
            labels, predicted, labels=which, average=average, zero_division=0
        )

    precision, recall, f1, support = prf(None, every)
    macro_p, macro_r, macro_f1, _ = prf("macro", present)
    _, _, weighted_f1, _ = prf("weighted", present)
    auc, note = _roc_auc(labels, scores, class_names)
    result: dict[str, Any] = {
        "n": int(labels.size),
        "accuracy": float(np.mean(predicted == labels)) if labels.size else 0.0,
        "macro_f1": float(macro_f1),
        "weighted_f1": float(weighted_f1),
        "macro_precision": float(macro_p),
        "macro_recall": float(macro_r),
        "roc_auc": auc,
        "ece": expected_calibration_error(labels, scores),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
                "absent": i not in present,
            }
            for i, name in enumerate(class_names)
        },
        "averaged_over": [class_names[i] for i in present],
        "confusion_matrix": confusion_matrix(labels, predicted, labels=every).astype(int).tolist(),
    }
    if note is not None:
        result["roc_auc_note"] = note
    return result


def summarize_folds(
    fold_metrics: Sequence[dict[str, Any]], keys: Sequence[str] = SUMMARY_KEYS
) -> dict[str, dict[str, float]]:
    """Mean, sample standard deviation (ddof=1; 0.0 for one fold), min and max of each key.

    Folds where a key is None or missing are left out of that key's summary; a key with no
    value in any fold is left out of the result.
    """
    summary: dict[str, dict[str, float]] = {}
    for key in keys:
        values = [float(m[key]) for m in fold_metrics if m.get(key) is not None]
        values = [v for v in values if not math.isnan(v)]
        if not values:
            continue
        array = np.asarray(values)
        summary[key] = {
            "mean": float(array.mean()),
            "sd": float(array.std(ddof=1)) if len(values) > 1 else 0.0,
            "min": float(array.min()),
            "max": float(array.max()),
        }
    return summary
