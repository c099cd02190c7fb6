"""A training run: index and load the data, split by groups, train one model per fold, evaluate
on validation and held-out test images, write the reports, and export the best fold's model."""

from __future__ import annotations

import json
import logging
import platform
import random
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from allxai.contract import cellview, preprocessing
from allxai.contract.card import ModelCard, dump_card, normal_classes
from allxai.trainer.config import TrainConfig
from allxai.trainer.datasets import DatasetIndex, Sample, check_trainable, index_dataset
from allxai.trainer.fit import balanced_class_weights
from allxai.trainer.loading import load_samples, summary

__all__ = ["DISPLAY_NAMES", "RunResult", "balanced_class_weights", "run", "source_commit"]

log = logging.getLogger(__name__)

#: Human names for the class folders of the two papers' datasets (Aria et al.; C-NMC 2019).
DISPLAY_NAMES = {
    "Benign": "Benign (hematogones)",
    "Early": "Early pre-B ALL",
    "Pre": "Pre-B ALL",
    "Pro": "Pro-B ALL",
    "all": "ALL blast",
    "hem": "Normal (hem)",
    "ALL": "ALL blast",
    "normal": "Normal",
}


#: Dataset report entries that stay in report.json and out of the model card (they can be long).
_LONG_LISTS = ("duplicates", "skipped", "near_duplicate_pairs")


@dataclass
class RunResult:
    """What a run produced."""

    export_path: Path | None
    reports: dict[str, Path]
    summary: dict[str, Any]
    test: dict[str, Any] | None
    class_names: list[str]
    seconds: float
    params: int


def source_commit() -> str:
    """The git commit the trainer runs from, or "unknown" outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def _subsample(samples: list[Sample], max_per_class: int, seed: int) -> list[Sample]:
    if max_per_class <= 0:
        return samples
    rng = random.Random(seed)
    by_label: dict[int, list[Sample]] = {}
    for s in samples:
        by_label.setdefault(s.label, []).append(s)
    chosen: list[Sample] = []
    for label in sorted(by_label):
        group = by_label[label]
        chosen.extend(rng.sample(group, min(max_per_class, len(group))))
    return sorted(chosen, key=lambda s: str(s.path))


def run(config: TrainConfig) -> RunResult:
    """Train and evaluate as the config says; write reports; export the best model."""
    from allxai.trainer.fit import fit, predict  # noqa: PLC0415  (TensorFlow loads only here)
    from allxai.trainer.reports import write_run_report  # noqa: PLC0415
    from allxai.trainer.scores import evaluate, summarize_folds  # noqa: PLC0415
    from allxai.trainer.splits import group_holdout, group_kfold, split_sizes  # noqa: PLC0415

    started = time.monotonic()
    if config.export:
        from allxai.trainer.export import export_target  # noqa: PLC0415

        # Before anything is read or written (the reports, the model card): a taken version would
        # otherwise fail only at the very end of training.
        export_target(config.out, config.name, config.version)
    index: DatasetIndex = index_dataset(
        config.data, config.layout, config.task, config.block_size, config.near_duplicate_distance
    )
    folds = max(config.folds, 1)
    check_trainable(index, min_per_class=max(folds, 2) * 2 if not index.test_samples else max(folds, 2))
    samples = _subsample(index.samples, config.max_per_class, config.seed)
    size = (config.input_size, config.input_size)
    recipe = None
    if config.input == "cell":
        from allxai.trainer.cellrecipes import finished_recipe, initial_recipe  # noqa: PLC0415

        recipe = initial_recipe(config, samples)
    loaded = load_samples(samples, size, recipe, config.cells_per_field)
    if recipe is not None:
        recipe = finished_recipe(recipe, loaded)
    names = index.class_names
    if len(loaded.labels) == 0:
        raise ValueError("no usable images: every file was skipped (see the report)")

    test_loaded = None
    if index.test_samples:
        test_loaded = load_samples(index.test_samples, size, recipe)
        rest = np.arange(len(loaded.labels))
        x_test, y_test = test_loaded.images, test_loaded.labels
        test_idx = np.zeros(0, np.int64)
    else:
        rest, test_idx = group_holdout(loaded.labels, loaded.groups, config.test_fraction, config.seed)
        x_test, y_test = loaded.images[test_idx], loaded.labels[test_idx]
    rest_groups = [loaded.groups[i] for i in rest]
    rest_labels = loaded.labels[rest]
    if config.folds >= 2:
        splits = list(group_kfold(rest_labels, rest_groups, config.folds, config.seed))
    else:
        splits = [
            group_holdout(
                rest_labels, rest_groups, config.val_fraction, config.seed, require_all_classes=False
            )
        ]

    dataset = summary(index, loaded, test_loaded)
    # What the run trained and tested on, which max_per_class may make a subset of the index's counts.
    used = np.bincount(loaded.labels, minlength=len(names))
    dataset["used_counts"] = {name: int(n) for name, n in zip(names, used, strict=True)}
    if recipe is not None:
        extra = 0 if loaded.extra_owner is None else len(loaded.extra_owner)
        dataset["cell_input"] = {
            "fields_without_a_white_cell": loaded.no_cell,
            "extra_training_crops": extra,
            "recipe": recipe.to_dict(),
        }
    dataset["splits"] = split_sizes(loaded.groups, {"train+validation": rest, "test": test_idx})
    if index.test_samples:
        dataset["splits"]["test"] = {
            "images": len(y_test),
            "groups": len({s.group for s in index.test_samples}),
        }

    fold_rows: list[dict[str, Any]] = []
    histories: list[dict[str, list[float]]] = []
    best_model: Any = None
    best_split: tuple[Any, Any] = (rest, rest)
    best_test: dict[str, Any] | None = None
    best_score = -1.0
    params = 0
    for k, (tr, va) in enumerate(splits, start=1):
        tr_idx, va_idx = rest[tr], rest[va]
        log.info(
            "fold %d/%d: %d train, %d validation, %d test images",
            k,
            len(splits),
            len(tr_idx),
            len(va_idx),
            len(y_test),
        )
        result = fit(
            config,
            len(names),
            loaded.training_rows(tr_idx),
            (loaded.images[va_idx], loaded.labels[va_idx]),
            config.reports / f"fold{k}",
            config.seed + k,
        )
        val_metrics = evaluate(loaded.labels[va_idx], predict(result.model, loaded.images[va_idx]), names)
        test_probs = predict(result.model, x_test) if len(y_test) else None
        test_metrics = evaluate(y_test, test_probs, names) if test_probs is not None else None
        fold_rows.append(
            {
                "fold": k,
                "val": val_metrics,
                "test": test_metrics,
                "epochs": result.epochs,
                "seconds": result.seconds,
                "train_images": len(tr_idx),
                "val_images": len(va_idx),
            }
        )
        histories.append(result.history)
        params = int(result.model.count_params())
        if val_metrics["macro_f1"] > best_score:
            best_score, best_model, best_test = val_metrics["macro_f1"], result.model, test_metrics
            best_split = (tr_idx, va_idx)

    keys = ("accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_f1", "roc_auc", "ece")
    fold_summary: dict[str, Any] = summarize_folds([r["val"] for r in fold_rows], keys)
    tests = [r["test"] for r in fold_rows if r["test"] is not None]
    if tests:
        fold_summary["test"] = summarize_folds(tests, keys)
    reports = write_run_report(
        config.reports,
        title=f"{config.arch} on {config.data.name}",  # a folder's name: the report may travel
        config=config.model_dump(mode="json"),
        dataset=dataset,
        folds=fold_rows,
        summary=fold_summary,
        test=best_test,
        histories=histories,
        class_names=names,
        extra={"params": params, "seconds": time.monotonic() - started},
        display_names={c: DISPLAY_NAMES[c] for c in names if c in DISPLAY_NAMES},
    )
    reports["split"] = _write_split(config.reports, loaded.paths, best_split, test_idx, test_loaded)
    card = _card(config, names, dataset, fold_summary, best_test)
    if recipe is not None:
        card = replace(card, cell_input=recipe, preprocessing=cellview.DESCRIPTION)
    calibration = None
    if config.calibrate:
        from allxai.trainer.calibrate import Split, calibrate  # noqa: PLC0415

        def split(index: Any) -> Split:
            return Split(loaded.images[index], loaded.labels[index], tuple(loaded.paths[i] for i in index))

        if test_loaded is not None:
            test_split = Split(test_loaded.images, test_loaded.labels, tuple(test_loaded.paths))
        else:
            test_split = split(test_idx)
        calibration = calibrate(
            best_model, split(best_split[0]), split(best_split[1]), test_split, config.domain_acceptance
        )
        card = replace(card, domain=calibration.gate, conformal=calibration.sets)
    (config.reports / "model_card.json").write_text(dump_card(card, indent=2))
    export_path = None
    if config.export:
        from allxai.trainer.export import export_model  # noqa: PLC0415

        check = x_test[:8] if len(x_test) else loaded.images[:8]
        export_path = export_model(
            best_model, config.out, config.name, config.version, card, check, calibration=calibration
        )
    return RunResult(export_path, reports, fold_summary, best_test, names, time.monotonic() - started, params)


def _write_split(
    folder: Path, paths: list[Path], best: tuple[Any, Any], test_idx: Any, test_loaded: Any
) -> Path:
    """``split.json``: the files of the exported model's training, validation (its calibration) and test
    splits, so that the held-out images can be evaluated again (``allxai evaluate``) without guessing."""
    test = test_loaded.paths if test_loaded is not None else [paths[i] for i in test_idx]
    split = {
        "train": [str(paths[i]) for i in best[0]],
        "validation": [str(paths[i]) for i in best[1]],
        "test": [str(p) for p in test],
    }
    path = folder / "split.json"
    path.write_text(json.dumps(split, indent=1))
    return path


def _card(
    config: TrainConfig,
    names: list[str],
    dataset: dict[str, Any],
    folds: dict[str, Any],
    test: dict[str, Any] | None,
) -> ModelCard:
    import keras  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    return ModelCard(
        name=config.name,
        version=config.version,
        architecture=config.arch,
        class_names=tuple(names),
        display_names={c: DISPLAY_NAMES[c] for c in names if c in DISPLAY_NAMES},
        normal_class_names=normal_classes(names),
        input_size=(config.input_size, config.input_size),
        preprocessing=preprocessing.DESCRIPTION,
        data={k: v for k, v in dataset.items() if k not in _LONG_LISTS},
        metrics={"cross_validation": folds, "test": test},
        training=config.model_dump(mode="json"),
        source_commit=source_commit(),
        software={
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        },
    )
