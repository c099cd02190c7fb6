"""Comparisons across runs, in the shape of paper 2's table 6, with each run's check where it has one.

Accuracy, precision, recall and F1 per model (mean ± sd over folds), the held-out test scores, and the
figures of ``allxai check-run`` (where the explanations' weight lies; how other laboratories' normal
cells are called), as Markdown, JSON and PNG.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from allxai.trainer.plots import plot_comparison
from allxai.trainer.reports import DASH, _cell, _mean_sd, _table, _write_json

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
