"""Training curves, confusion matrices and model comparisons as PNG pictures.

Matplotlib draws off-screen (the Agg backend), so this runs on servers without a display.
Every figure is closed after saving: a cross-validation draws many, and open figures leak memory.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
from matplotlib.ticker import MaxNLocator

DPI = 110
_TITLES = {"accuracy": "accuracy", "loss": "loss", "f1": "F1-score"}
#: A word that is a file path: rooted (``/``, ``~``, ``./``, ``C:\\``) or of at least two separators (a
#: plain "train/validation" is a phrase, not a path).
_PATH = re.compile(r"^(?:[/\\~]|\.{1,2}[/\\]|[A-Za-z]:[/\\])|[/\\].*[/\\]")


def _series(values: Sequence[Any]) -> npt.NDArray[np.float64]:
    """One number per epoch; a per-class metric (Keras' F1Score without averaging) is averaged."""
    array = np.asarray(values, dtype=np.float64)
    return array.reshape(len(array), -1).mean(axis=1) if array.ndim > 1 else array


def _metric_keys(history: Mapping[str, Sequence[Any]]) -> dict[str, str]:
    """Panel name -> training key, for accuracy, loss and the first key naming F1."""
    keys: dict[str, str] = {}
    for panel in ("accuracy", "loss"):
        if panel in history or f"val_{panel}" in history:
            keys[panel] = panel
    f1 = sorted(k.removeprefix("val_") for k in history if "f1" in k.lower())
    if f1:
        keys["f1"] = f1[0]
    return keys


def path_free(text: str) -> str:
    """``text`` with every file path cut to its last name: a title names the data, it does not say
    where one machine keeps it (``"allnet on /data/aria-all/Original"`` -> ``"allnet on Original"``)."""
    words = []
    for word in text.split(" "):
        core = word.rstrip(",;:)")
        if _PATH.search(core):
            parts = [part for part in re.split(r"[/\\]", core) if part]
            word = (parts[-1] if parts else "") + word[len(core) :]
        words.append(word)
    return " ".join(words)


def _save(fig: Any, path: Path, title: str) -> None:
    if title:
        fig.suptitle(path_free(title))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _empty(path: Path, title: str, message: str) -> None:
    """A small picture that says what is missing, so links in a report never break."""
    fig, ax = plt.subplots(figsize=(5, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center")
    _save(fig, path, title)


def plot_curves(history: dict[str, list[float]], path: Path, title: str = "") -> None:
    """Accuracy, loss and F1 per epoch, training against validation (paper 1's ``plot_metrics``).

    ``history`` is Keras' ``History.history``: ``accuracy``/``val_accuracy``, ``loss``/``val_loss``
    and any key containing ``f1`` (such as ``f1_score``/``val_f1_score``). One panel per metric found.
    """
    panels = _metric_keys(history)
    if not panels:
        _empty(path, title, "no training history")
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    for ax, (panel, key) in zip(axes[0], panels.items(), strict=True):
        for name, label in ((key, "training"), (f"val_{key}", "validation")):
            if history.get(name):
                values = _series(history[name])
                ax.plot(np.arange(1, len(values) + 1), values, marker="o", markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(_TITLES[panel][0].upper() + _TITLES[panel][1:])
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path, title)


def plot_fold_curves(histories: Sequence[dict[str, list[float]]], path: Path, title: str = "") -> None:
    """The validation curves of every cross-validation fold: one panel per metric, one line per fold."""
    panels: dict[str, str] = {}
    for history in histories:
        for panel, key in _metric_keys(history).items():
            if f"val_{key}" in history:
                panels.setdefault(panel, key)
    if not panels:
        _empty(path, title, "no validation history")
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    for ax, (panel, key) in zip(axes[0], panels.items(), strict=True):
        for fold, history in enumerate(histories, start=1):
            # Folds may name F1 differently only if their models differ; fall back to any F1 key.
            name = f"val_{_metric_keys(history).get(panel, key)}"
            if history.get(name):
                values = _series(history[name])
                ax.plot(np.arange(1, len(values) + 1), values, label=f"fold {fold}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"Validation {_TITLES[panel]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    _save(fig, path, title)


def plot_confusion(
    confusion: Sequence[Sequence[int]] | npt.NDArray[np.integer[Any]],
    class_names: Sequence[str],
    path: Path,
    title: str = "",
    normalize: bool = False,
) -> None:
    """The confusion matrix with counts in each cell; rows are true classes, columns predictions.

    With ``normalize`` the colours follow each row's fractions and every cell also shows its
    percentage of the row, which reads better when the classes are imbalanced.
    """
    matrix = np.asarray(confusion, dtype=np.int64)
    rows = matrix.sum(axis=1, keepdims=True)
    fractions = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    shade = fractions if normalize else matrix.astype(np.float64)
    side = 1.1 * len(class_names) + 2.5
    fig, ax = plt.subplots(figsize=(side + 0.8, side))
    image = ax.imshow(
        shade, cmap="Blues", vmin=0, vmax=1 if normalize else max(int(matrix.max(initial=0)), 1)
    )
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = (1.0 if normalize else float(matrix.max(initial=0))) / 2
    for (i, j), value in np.ndenumerate(matrix):
        text = f"{value}\n{100 * fractions[i, j]:.1f}%" if normalize else str(value)
        colour = "white" if shade[i, j] > threshold else "black"
        ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=9)
    _save(fig, path, title)


def plot_comparison(rows: Sequence[Mapping[str, Any]], path: Path, metric: str = "accuracy") -> None:
    """Bars of each architecture's mean ``metric`` (in %) with its standard deviation over folds.

    ``rows`` are `comparison.write_comparison` rows: ``{"model", "summary": {metric: {"mean", "sd"}}}``;
    a model without the metric is drawn without a bar.
    """
    names = [str(row["model"]) for row in rows]
    stats = [row.get("summary", {}).get(metric) or {} for row in rows]
    means = np.array([100 * s["mean"] if s.get("mean") is not None else np.nan for s in stats])
    sds = np.array([100 * (s.get("sd") or 0.0) for s in stats])
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(names) + 2), 4))
    positions = np.arange(len(names))
    ax.bar(positions, np.nan_to_num(means), yerr=sds, capsize=4, color="tab:blue", alpha=0.8)
    for x, mean, sd in zip(positions, means, sds, strict=True):
        if not np.isnan(mean):
            ax.text(float(x), mean + sd + 0.5, f"{mean:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(
        positions, names, rotation=30 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center"
    )
    known = ~np.isnan(means)
    low = max(0.0, float((means[known] - sds[known]).min()) - 5) if known.any() else 0.0
    high = float((means[known] + sds[known]).max()) + 3 if known.any() else 100.0
    # Start the axis near the lowest bar: architectures differ by a few points, not tens.
    ax.set_ylim(low, high)
    ax.set_ylabel(f"{metric.replace('_', ' ')} (%, mean ± sd)")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path, f"{metric.replace('_', ' ').capitalize()} by architecture")
