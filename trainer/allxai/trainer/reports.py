"""Reports of a training run and comparisons across architectures, as Markdown, JSON and PNG.

A run report collects what a reader needs to judge a model without rerunning it: the data it saw,
the settings, every fold's scores, their mean ± sd, per-class scores and the pictures. The
comparison follows the shape of paper 2's table 6 (accuracy, precision, recall, F1 per model).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from allxai.trainer.plots import plot_comparison, plot_confusion, plot_curves, plot_fold_curves

#: Per-fold columns: (metric key, header, shown as a percentage).
FOLD_COLUMNS = (
    ("accuracy", "Accuracy (%)", True),
    ("macro_f1", "Macro F1 (%)", True),
    ("weighted_f1", "Weighted F1 (%)", True),
    ("roc_auc", "ROC-AUC", False),
    ("ece", "ECE", False),
)
#: Comparison columns after Model, as in paper 2's table 6 (macro averages).
COMPARISON_COLUMNS = (
    ("accuracy", "Accuracy (%)"),
    ("macro_precision", "Precision (%)"),
    ("macro_recall", "Recall (%)"),
    ("macro_f1", "F1-score (%)"),
)
#: The held-out test set's scores shown beside the folds' when a run has one.
TEST_COLUMNS = (("accuracy", "Test accuracy (%)"), ("macro_f1", "Test F1-score (%)"))
#: A run check's figures (``runcheck.json`` of ``allxai check-run``): (row key, path in the check, header).
CHECK_COLUMNS = (
    ("cell_share", ("explanations", "cell_share", "median"), "Cell share (median)"),
    ("background_share", ("explanations", "background_share", "median"), "Background share"),
    ("corner_share", ("explanations", "corner_share", "median"), "Corner share"),
    ("bccd_safe", ("foreign", "bccd", "benign_or_flagged"), "BCCD Benign or flagged"),
    ("wbcseg_safe", ("foreign", "wbc-seg", "benign_or_flagged"), "wbc-seg Benign or flagged"),
    (
        "lymphocytes_benign",
        ("foreign", "wbc-seg", "lymphocytes_benign_unflagged"),
        "wbc-seg lymphocytes Benign, no flag",
    ),
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


def _dataset_section(dataset: Mapping[str, Any]) -> list[str]:
    lines = ["## Dataset", ""]
    counts = dataset.get("counts")
    if isinstance(counts, Mapping) and counts:
        tests = dataset.get("test_counts") or {}
        header = ["Class", "Images", *(["Test images"] if tests else [])]
        rows = [
            [_cell(name), str(n), *([str(tests.get(name, 0))] if tests else [])] for name, n in counts.items()
        ]
        total = ["**Total**", f"**{sum(int(n) for n in counts.values())}**"]
        rows.append(total + ([f"**{sum(int(n) for n in tests.values())}**"] if tests else []))
        lines += [*_table(header, rows), ""]
    facts = [
        ["Duplicates removed", _cell(_count(dataset.get("duplicates_removed", dataset.get("duplicates"))))],
        ["Skipped files", _cell(_count(dataset.get("skipped")))],
    ]
    known = {"counts", "test_counts", "duplicates_removed", "duplicates", "skipped"}
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


def _scores_section(scores: Mapping[str, Any], heading: str) -> list[str]:
    lines = [f"## {heading}", ""]
    overall = [f"n = {scores.get('n', DASH)}"]
    overall += [f"{title.split(' (')[0]} {_number(scores.get(key), pct)}" for key, title, pct in FOLD_COLUMNS]
    lines += ["; ".join(overall) + " (accuracy and F1 in %).", ""]
    if scores.get("roc_auc_note"):
        lines += [f"ROC-AUC: {scores['roc_auc_note']}.", ""]
    rows = [
        [f"{_cell(name)} (absent)", DASH, DASH, DASH, str(c["support"])]
        if c.get("absent")
        else [_cell(name), *(_number(c[k], True) for k in ("precision", "recall", "f1")), str(c["support"])]
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
) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and the run's pictures into ``folder``.

    ``extra`` (e.g. the parameter count and wall time) goes into ``report.json`` as it is.

    ``folds`` items are ``{"fold", "val", "test", "epochs", "seconds"}`` with `metrics.evaluate`
    dicts under ``val`` and ``test``; ``summary`` is `metrics.summarize_folds` over the validation
    scores, optionally with a ``"test"`` summary inside; ``test`` is the final model's held-out
    scores. ``histories`` are the folds' Keras histories, in fold order. Returns file name -> path.
    """
    folder.mkdir(parents=True, exist_ok=True)
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
    shown, part = (test, "test") if test is not None else ((folds[-1].get("val") if folds else None), "val")
    if shown is not None:
        plot_confusion(
            shown["confusion_matrix"],
            class_names,
            figure(f"confusion_{part}.png"),
            title=f"{title}: {'test' if part == 'test' else 'last fold validation'}",
            normalize=True,
        )

    lines = [f"# {title}", "", f"Classes: {', '.join(class_names)}.", ""]
    lines += _dataset_section(dataset)
    lines += [
        "## Configuration",
        "",
        *_table(["Setting", "Value"], [[_cell(k), _cell(v)] for k, v in config.items()]),
    ]
    lines += ["", "## Cross-validation (validation folds)", ""]
    lines += [*_fold_table(folds, "val", summary), ""]
    if any(fold.get("test") for fold in folds):
        lines += ["## Cross-validation (each fold's model on the test set)", ""]
        lines += [*_fold_table(folds, "test", summary.get("test")), ""]
    if shown is not None:
        lines += _scores_section(shown, "Held-out test set" if part == "test" else "Last fold's validation")
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


def _dig(data: Any, path: Sequence[str]) -> Any:
    """``data[a][b]...`` for ``path`` ``(a, b, ...)``; None where a step is missing."""
    for key in path:
        data = data.get(key) if isinstance(data, Mapping) else None
    return data


def comparison_row(report: Mapping[str, Any], check: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One row of :func:`write_comparison` from a run's ``report.json`` and, where the run was checked,
    its ``runcheck.json`` (``allxai check-run``)."""
    config = report["config"]
    # Field and cell recipes of one architecture must be told apart; reports from before the cell input
    # existed name no input and stay as they were.
    kind = f" ({config['input']})" if config.get("input") else ""
    row = {
        "model": f"{config['arch']}{kind}",
        "params": int(report.get("params", 0)),
        "seconds": float(report.get("seconds", sum(f.get("seconds", 0.0) for f in report["folds"]))),
        "summary": report["summary"],
    }
    test = report.get("test")
    if test:
        # The held-out test set: the one score no checkpoint or epoch was chosen on.
        row["test"] = {key: test[key] for key, _ in TEST_COLUMNS if key in test}
    if check is not None:
        row["check"] = {key: _dig(check, path) for key, path, _ in CHECK_COLUMNS}
    return row


def _share(value: Any) -> str:
    """A share as a percentage with one decimal; a dash when absent."""
    return DASH if value is None else f"{100 * float(value):.1f}%"


def write_comparison(rows: Sequence[Mapping[str, Any]], folder: Path) -> dict[str, Path]:
    """Compare architectures as paper 2's table 6: ``comparison.md``, ``.json`` and ``.png``.

    ``rows`` items are ``{"model", "params", "seconds", "summary": {metric: {"mean", "sd"}}}``
    with metrics ``accuracy``, ``macro_precision``, ``macro_recall`` and ``macro_f1`` as
    fractions; the table shows them in % as mean ± sd over folds. Optional ``"test"`` (held-out scores)
    and ``"check"`` (:data:`CHECK_COLUMNS`' figures from a run check) add their columns when any row has
    them; rows without show dashes. Returns file name -> path.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with_test = any(row.get("test") for row in rows)
    test_titles = [title for _, title in TEST_COLUMNS] if with_test else []
    with_check = any(row.get("check") for row in rows)
    header = [
        "Model",
        *(title for _, title in COMPARISON_COLUMNS),
        *test_titles,
        *((title for _, _, title in CHECK_COLUMNS) if with_check else ()),
        "Parameters",
        "Train time (s)",
    ]
    table = []
    for row in rows:
        summary, test, check = row.get("summary", {}), row.get("test") or {}, row.get("check") or {}
        params, seconds = row.get("params"), row.get("seconds")
        table.append(
            [
                _cell(row["model"]),
                *(_mean_sd(summary.get(key)) for key, _ in COMPARISON_COLUMNS),
                *(
                    (f"{100 * float(test[key]):.2f}" if key in test else DASH for key, _ in TEST_COLUMNS)
                    if with_test
                    else ()
                ),
                *((_share(check.get(key)) for key, _, _ in CHECK_COLUMNS) if with_check else ()),
                f"{int(params):,}" if params is not None else DASH,
                f"{float(seconds):.1f}" if seconds is not None else DASH,
            ]
        )
    lines = ["# Comparison of architectures", "", *_table(header, table), ""]
    lines += [
        "Mean ± sd over cross-validation folds; precision, recall and F1 are macro averages. Each fold's "
        "validation set also chose its checkpoint (best epoch, early stopping, learning-rate steps), so "
        "those scores lean optimistic"
        + ("; the test columns are the held-out set, which chose nothing." if with_test else "."),
        "",
    ]
    if with_check:
        lines += [
            "Run check (`allxai check-run`; a dash: not checked): the median share of the positive LIME "
            "weight on white cells, the background and the corners, over held-out test images; and, of "
            "normal white cells from other laboratories, the share called Benign or flagged outside the "
            "domain (the rest would be reported as blasts), and of wbc-seg's lymphocytes the share called "
            "Benign without a flag.",
            "",
        ]
    lines += ["![Accuracy by architecture](comparison.png)", ""]
    written = {name: folder / name for name in ("comparison.md", "comparison.json", "comparison.png")}
    written["comparison.md"].write_text("\n".join(lines).rstrip() + "\n")
    _write_json(written["comparison.json"], {"columns": header, "rows": rows})
    plot_comparison(rows, written["comparison.png"])
    return written
