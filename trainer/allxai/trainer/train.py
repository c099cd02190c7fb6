"""Train a model on a folder-per-class dataset and export it under the model contract."""

from __future__ import annotations

import json
import logging
import platform
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from allxai.trainer import preprocessing
from allxai.trainer.datasets import LoadedDataset, list_folder_dataset, load_images

log = logging.getLogger(__name__)

#: Human names for the class folders of the two papers' datasets (Aria et al.; C-NMC 2019).
DISPLAY_NAMES = {
    "Benign": "Benign (hematogones)",
    "Early": "Early pre-B ALL",
    "Pre": "Pre-B ALL",
    "Pro": "Pro-B ALL",
    "all": "ALL blast",
    "hem": "Normal (hem)",
}


@dataclass
class TrainConfig:
    """What to train, on what, and where to export it."""

    data: Path
    out: Path
    name: str = "allnet"
    version: int = 1
    arch: str = "allnet"
    input_size: int = 224
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    test_fraction: float = 0.2
    max_per_class: int = 0
    seed: int = 42
    normal_classes: tuple[str, ...] = ("Benign", "hem", "normal")
    reports: Path | None = None


@dataclass
class TrainResult:
    """Where the export went and how the model did on the held-out images."""

    export_path: Path
    test_accuracy: float
    confusion: list[list[int]]
    class_names: list[str]
    history: dict[str, list[float]]
    seconds: float


def balanced_class_weights(labels: npt.NDArray[np.int64], num_classes: int) -> dict[int, float]:
    """n_samples / (n_classes * bincount), as scikit-learn's "balanced" and paper 1 compute them."""
    counts = np.bincount(labels, minlength=num_classes)
    return {i: float(len(labels) / (num_classes * c)) if c else 0.0 for i, c in enumerate(counts)}


def _subsample(items: list[tuple[Path, int]], max_per_class: int, seed: int) -> list[tuple[Path, int]]:
    if max_per_class <= 0:
        return items
    rng = random.Random(seed)
    by_label: dict[int, list[tuple[Path, int]]] = {}
    for item in items:
        by_label.setdefault(item[1], []).append(item)
    chosen: list[tuple[Path, int]] = []
    for label in sorted(by_label):
        group = by_label[label]
        chosen.extend(sorted(rng.sample(group, min(max_per_class, len(group)))))
    return chosen


def source_commit() -> str:
    """The git commit the trainer runs from, or "unknown" outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def train(config: TrainConfig) -> TrainResult:
    """Load, split, train, evaluate and export; write the reports when ``config.reports`` is set."""
    import keras  # noqa: PLC0415  (TensorFlow loads only when training is asked for)
    from allxai.trainer.export import export_model  # noqa: PLC0415
    from allxai.trainer.models import build_model  # noqa: PLC0415
    from sklearn.model_selection import train_test_split  # noqa: PLC0415

    started = time.monotonic()
    keras.utils.set_random_seed(config.seed)
    size = (config.input_size, config.input_size)
    class_names, items = list_folder_dataset(config.data)
    items = _subsample(items, config.max_per_class, config.seed)
    data: LoadedDataset = load_images(items, class_names, size)
    counts = np.bincount(data.labels, minlength=len(class_names))
    if (counts < 2).any():
        lonely = [class_names[i] for i in np.flatnonzero(counts < 2)]
        raise ValueError(f"classes with fewer than two usable images cannot be split: {', '.join(lonely)}")
    train_idx, test_idx = train_test_split(
        np.arange(len(data.labels)),
        test_size=config.test_fraction,
        stratify=data.labels,
        random_state=config.seed,
    )
    x_train, y_train = data.images[train_idx], data.labels[train_idx]
    x_test, y_test = data.images[test_idx], data.labels[test_idx]
    log.info("training %s on %d images, testing on %d", config.arch, len(x_train), len(x_test))

    model = build_model(config.arch, len(class_names), size)
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    fit = model.fit(
        x_train.astype(np.float32),
        y_train,
        validation_data=(x_test.astype(np.float32), y_test),
        epochs=config.epochs,
        batch_size=config.batch_size,
        class_weight=balanced_class_weights(y_train, len(class_names)),
        verbose=1 if sys.stdout.isatty() else 2,
    )
    probs = np.asarray(model.predict(x_test.astype(np.float32), batch_size=64, verbose=0))
    predicted = probs.argmax(axis=1)
    accuracy = float((predicted == y_test).mean())
    confusion = np.zeros((len(class_names), len(class_names)), np.int64)
    np.add.at(confusion, (y_test, predicted), 1)
    history = {k: [float(v) for v in vals] for k, vals in fit.history.items()}

    card: dict[str, Any] = {
        "name": config.name,
        "version": config.version,
        "architecture": config.arch,
        "class_names": class_names,
        "normal_class_names": [c for c in class_names if c in config.normal_classes],
        "display_names": {c: DISPLAY_NAMES[c] for c in class_names if c in DISPLAY_NAMES},
        "input_size": [config.input_size, config.input_size],
        "preprocessing": preprocessing.DESCRIPTION,
        "data": {
            "root": str(config.data),
            "counts": {k: int(v) for k, v in data.counts().items()},
            "skipped": [[str(p), why] for p, why in data.skipped],
            "split": f"stratified random {1 - config.test_fraction:.0%}/{config.test_fraction:.0%}",
            "train_images": len(x_train),
            "test_images": len(x_test),
        },
        "metrics": {"test_accuracy": accuracy, "confusion_matrix": confusion.tolist()},
        "training": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "source_commit": source_commit(),
        "software": {"python": platform.python_version(), "keras": keras.__version__},
    }
    export_path = export_model(model, config.out, config.name, config.version, card, x_test[:8])
    result = TrainResult(
        export_path, accuracy, confusion.tolist(), class_names, history, time.monotonic() - started
    )
    if config.reports is not None:
        from allxai.trainer.plots import write_reports  # noqa: PLC0415

        write_reports(result, config.reports)
        (config.reports / "model_card.json").write_text(json.dumps(card, indent=2))
    return result
