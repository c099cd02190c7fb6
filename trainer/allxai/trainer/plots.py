"""Training curves and confusion matrices as PNG pictures."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

if TYPE_CHECKING:
    from allxai.trainer.train import TrainResult


def plot_curves(history: dict[str, list[float]], path: Path) -> None:
    """Accuracy and loss per epoch, training against validation (paper 1's ``plot_metrics``)."""
    metrics = [m for m in ("accuracy", "loss") if m in history]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        epochs = np.arange(1, len(history[metric]) + 1)
        ax.plot(epochs, history[metric], label="training")
        if f"val_{metric}" in history:
            ax.plot(epochs, history[f"val_{metric}"], label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(confusion: list[list[int]], class_names: list[str], path: Path) -> None:
    """The confusion matrix with counts in each cell; rows are true classes."""
    matrix = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(1.2 * len(class_names) + 2, 1.2 * len(class_names) + 1.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", color="white" if value > threshold else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(result: TrainResult, folder: Path) -> None:
    """Write ``training_curves.png`` and ``confusion_matrix.png`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    plot_curves(result.history, folder / "training_curves.png")
    plot_confusion(result.confusion, result.class_names, folder / "confusion_matrix.png")
