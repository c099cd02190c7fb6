"""Reports of a training run, as Markdown, JSON and PNG (comparisons across runs: :mod:`.comparison`).

A run report collects what a reader needs to judge a model without rerunning it: the data it saw,
the settings, every fold's scores, their mean ± sd, per-class scores and the pictures.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from allxai.trainer.plots import path_free, plot_confusion, plot_curves, plot_fold_curves
from allxai.trainer.report_settings import applicable_settings

#: Per-fold columns: (metric key, header, shown as a percentage).
FOLD_COLUMNS = (
    ("accuracy", "Accuracy (%)", True),
    ("macro_f1", "Macro F1 (%)", True),
    ("weighted_f1", "Weighted F1 (%)", True),
    ("roc_auc", "ROC-AUC", False),
    ("ece", "ECE", False),
)
DASH = "\u2014"  # an em dash marks a value that is absent


def _json_default(value: Any) -> Any:
    """Paths, numpy numbers and arrays, sets and tuples as JSON values."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")


def _number(value: Any, percent: bool) -> str:
    """A metric as a percentage with two decimals, or a fraction with three; a dash when absent."""
    if value is None:
        return DASH
    return f"{100 * float(value):.2f}" if percent else f"{float(value):.3f}"


def _mean_sd(stats: Mapping[str, Any] | None, percent: bool = True) -> str:
    """``"97.85 ± 0.41"`` from ``{"mean", "sd"}``; only the mean when there is no sd."""
    if not stats or stats.get("mean") is None:
        return DASH
    mean = _number(stats["mean"], percent)
    return mean if stats.get("sd") is None else f"{mean} ± {_number(stats['sd'], percent)}"


def _cell(value: Any) -> str:
    """A config or dataset value in a table cell; pipes would break the Markdown table."""
    if isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, list | tuple | set | frozenset):
        text = ", ".join(str(v) for v in value) or DASH
    elif isinstance(value, Mapping):
        text = ", ".join(f"{k}: {v}" for k, v in value.items()) or DASH
    else:
        text = DASH if value is None or value == "" else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _count(value: Any) -> Any:
    """A count given either as a number or as the list of what was counted."""
    return len(value) if isinstance(value, list | tuple | set | frozenset) else value


def _dataset_section(
    dataset: Mapping[str, Any], config: Mapping[str, Any], shown: Mapping[str, str]
) -> list[str]:
    """The images the run used, per class (``used_counts`` where the run drew a subset, else ``counts``),
    then the dataset's other facts."""
    lines = ["## Dataset", ""]
    found = dataset.get("counts")
    counts = dataset.get("used_counts") or found
    if isinstance(counts, Mapping) and counts:
        tests = dataset.get("test_counts") or {}
        header = ["Class", "Images used", *(["Test images"] if tests else [])]
        rows = [
            [_cell(shown.get(name, name)), str(n), *([str(tests.get(name, 0))] if tests else [])]
            for name, n in counts.items()
        ]
        used = sum(int(n) for n in counts.values())
        rows.append(
            ["**Total**", f"**{used}**", *([f"**{sum(int(n) for n in tests.values())}**"] if tests else [])]
        )
        lines += [*_table(header, rows), ""]
        total = sum(int(n) for n in found.values()) if isinstance(found, Mapping) else used
        if used < total:
            limit = config.get("max_per_class")
            how = f": at most {limit} per class, drawn with seed {config.get('seed')}" if limit else ""
            lines += [
                f"{used} of the {total} images in the dataset were used{how}; split.json names them.",
                "",
            ]
    facts = [
        ["Duplicates removed", _cell(_count(dataset.get("duplicates_removed", dataset.get("duplicates"))))],
        ["Skipped files", _cell(_count(dataset.get("skipped")))],
    ]
    # The class list is the table's first column; the counts of every file found are the sentence above.
    known = {"counts", "used_counts", "test_counts", "duplicates_removed", "duplicates", "skipped", "classes"}
    for key, value in dataset.items():
        if key not in known:
            text = _cell(value)
            # Long lists and nested tables (sizes, splits) belong in report.json, not in a table cell.
            facts.append([_cell(key), text if len(text) <= 120 else "(see report.json)"])
    return [*lines, *_table(["Detail", "Value"], facts), ""]


def _fold_table(
    folds: Sequence[Mapping[str, Any]], part: str, summary: Mapping[str, Any] | None
) -> list[str]:
    header = ["Fold", "Epochs", "Time (s)", *(title for _, title, _ in FOLD_COLUMNS)]
    rows = []
    for fold in folds:
        scores = fold.get(part) or {}
        rows.append(
            [
                str(fold.get("fold", DASH)),
                _cell(fold.get("epochs")),
                DASH if fold.get("seconds") is None else f"{float(fold['seconds']):.1f}",
                *(_number(scores.get(key), percent) for key, _, percent in FOLD_COLUMNS),
            ]
        )
    if summary:
        rows.append(
            [
                "**Mean ± sd**",
                "",
                "",
                *(_mean_sd(summary.get(key), percent) for key, _, percent in FOLD_COLUMNS),
            ]
        )
    return _table(header, rows)


def _scores_section(
    scores: Mapping[str, Any], heading: str, shown: Mapping[str, str] | None = None
) -> list[str]:
    shown = shown or {}
    lines = [f"## {heading}", ""]
    overall = [f"n = {scores.get('n', DASH)}"]
    overall += [f"{title.split(' (')[0]} {_number(scores.get(key), pct)}" for key, title, pct in FOLD_COLUMNS]
    lines += ["; ".join(overall) + " (accuracy and F1 in %).", ""]
    if scores.get("roc_auc_note"):
        lines += [f"ROC-AUC: {scores['roc_auc_note']}.", ""]
    rows = [
        [f"{_cell(shown.get(name, name))} (absent)", DASH, DASH, DASH, str(c["support"])]
        if c.get("absent")
        else [
            _cell(shown.get(name, name)),
            *(_number(c[k], True) for k in ("precision", "recall", "f1")),
            str(c["support"]),
        ]
        for name, c in scores.get("per_class", {}).items()
    ]
    if any(c.get("absent") for c in scores.get("per_class", {}).values()):
        lines += ["Absent classes (neither true nor predicted here) are left out of the averages.", ""]
    return [*lines, *_table(["Class", "Precision (%)", "Recall (%)", "F1 (%)", "Support"], rows), ""]


def write_run_report(
    folder: Path,
    *,
    title: str,
    config: Mapping[str, Any],
    dataset: Mapping[str, Any],
    folds: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    test: Mapping[str, Any] | None,
    histories: Sequence[dict[str, list[float]]],
    class_names: Sequence[str],
    extra: Mapping[str, Any] | None = None,
    display_names: Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and the run's pictures into ``folder``.

    ``extra`` (e.g. the parameter count and wall time) goes into ``report.json`` as it is.

    ``folds`` items are ``{"fold", "val", "test", "epochs", "seconds"}`` with `metrics.evaluate`
    dicts under ``val`` and ``test``; ``summary`` is `metrics.summarize_folds` over the validation
    scores, optionally with a ``"test"`` summary inside; ``test`` is the final model's held-out
    scores. ``histories`` are the folds' Keras histories, in fold order. ``display_names`` (the model
    card's) name the classes in the tables and pictures. Only the settings that applied to the run are
    shown (:func:`applicable_settings`); report.json keeps them all. Returns file name -> path.
    """
    folder.mkdir(parents=True, exist_ok=True)
    title = path_free(title)
    shown = dict(display_names or {})
    labels = [shown.get(name, name) for name in class_names]
    written: dict[str, Path] = {}

    def figure(name: str) -> Path:
        written[name] = folder / name
        return folder / name

    curve_names = []
    for i, history in enumerate(histories):
        number = folds[i].get("fold", i + 1) if i < len(folds) else i + 1
        name = f"curves_fold{number}.png"
        plot_curves(history, figure(name), title=f"{title}: fold {number}")
        curve_names.append((number, name))
    if histories:
        plot_fold_curves(histories, figure("curves_folds.png"), title=f"{title}: validation per fold")
    # Per-class scores and the confusion matrix of the held-out test when there is one, else of
    # the last fold's validation: the test set is the only data no choice was tuned on.
    scored, part = (test, "test") if test is not None else ((folds[-1].get("val") if folds else None), "val")
    if scored is not None:
        plot_confusion(
            scored["confusion_matrix"],
            labels,
            figure(f"confusion_{part}.png"),
            title=f"{title}: {'test' if part == 'test' else 'last fold validation'}",
            normalize=True,
        )

    lines = [f"# {title}", "", f"Classes: {', '.join(labels)}.", ""]
    lines += _dataset_section(dataset, config, shown)
    settings = applicable_settings(config, dataset)
    lines += [
        "## Configuration",
        "",
        *_table(["Setting", "Value"], [[_cell(k), _cell(v)] for k, v in settings.items()]),
    ]
    lines += ["", "## Cross-validation (validation folds)", ""]
    lines += [*_fold_table(folds, "val", summary), ""]
    if any(fold.get("test") for fold in folds):
        lines += ["## Cross-validation (each fold's model on the test set)", ""]
        lines += [*_fold_table(folds, "test", summary.get("test")), ""]
    if scored is not None:
        heading = "Held-out test set" if part == "test" else "Last fold's validation"
        lines += _scores_section(scored, heading, shown)
    pictures = [f"![Fold {number}: training and validation]({name})" for number, name in curve_names]
    if "curves_folds.png" in written:
        pictures.append("![Validation curves of every fold](curves_folds.png)")
    pictures += [f"![Confusion matrix ({part})]({name})" for name in written if name.startswith("confusion_")]
    # A blank line between pictures, so each renders on its own line.
    lines += ["## Figures", "", *(line for picture in pictures for line in (picture, ""))]
    (folder / "report.md").write_text("\n".join(lines).rstrip() + "\n")
    written["report.md"] = folder / "report.md"

    payload = {
        "title": title,
        "class_names": list(class_names),
        "config": config,
        "settings_used": settings,
        "display_names": shown,
        "dataset": dataset,
        "folds": folds,
        "summary": summary,
        "test": test,
        "histories": histories,
        "figures": sorted(name for name in written if name.endswith(".png")),
        **(extra or {}),
    }
    _write_json(folder / "report.json", payload)
    written["report.json"] = folder / "report.json"
    return written
