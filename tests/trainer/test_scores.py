"""Metrics against hand-computed cases, and the run and comparison reports they feed."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from allxai.trainer.scores import evaluate, expected_calibration_error, summarize_folds

NAMES3 = ["Benign", "Early", "Pre"]


def one_hot_ish(labels: list[int], classes: int, confidence: float) -> np.ndarray:
    """Probabilities putting ``confidence`` on each given label and the rest spread evenly."""
    probs = np.full((len(labels), classes), (1 - confidence) / (classes - 1))
    probs[np.arange(len(labels)), labels] = confidence
    return probs


def test_perfect_predictions() -> None:
    y = np.array([0, 1, 2, 0, 1, 2])
    m = evaluate(y, one_hot_ish(list(y), 3, 0.98), NAMES3)
    assert m["n"] == 6
    assert m["accuracy"] == 1.0
    assert m["macro_f1"] == m["weighted_f1"] == 1.0
    assert m["roc_auc"] == 1.0
    # Every sample is right with confidence 0.98: the calibration gap is 0.02.
    assert m["ece"] == pytest.approx(0.02)
    assert m["confusion_matrix"] == [[2, 0, 0], [0, 2, 0], [0, 0, 2]]
    assert expected_calibration_error(y, np.eye(3)[y]) == 0.0
    json.dumps(m)  # plain Python values only


def test_known_two_by_two() -> None:
    y = np.array([0, 0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7], [0.6, 0.4]])
    m = evaluate(y, probs, ["hem", "all"])
    # Predictions 0, 0, 1, 1, 0.
    assert m["confusion_matrix"] == [[2, 1], [1, 1]]
    assert m["accuracy"] == pytest.approx(3 / 5)
    hem, blast = m["per_class"]["hem"], m["per_class"]["all"]
    assert (hem["precision"], hem["recall"], hem["f1"], hem["support"]) == pytest.approx(
        (2 / 3, 2 / 3, 2 / 3, 3)
    )
    assert (blast["precision"], blast["recall"], blast["f1"], blast["support"]) == pytest.approx(
        (0.5, 0.5, 0.5, 2)
    )
    # Class 1's scores: positives 0.7, 0.4; negatives 0.1, 0.2, 0.6. 0.7 beats all three, 0.4 beats two.
    assert m["roc_auc"] == pytest.approx(5 / 6)
    assert "roc_auc_note" not in m


def test_macro_and_weighted_f1_on_imbalanced_classes() -> None:
    y = np.array([0] * 8 + [1] * 2)
    predicted = [0] * 8 + [1, 0]
    m = evaluate(y, one_hot_ish(predicted, 2, 0.9), ["hem", "all"])
    # Class 0: TP 8, FP 1, FN 0 -> P 8/9, R 1, F1 16/17. Class 1: TP 1, FP 0, FN 1 -> P 1, R 1/2, F1 2/3.
    assert m["per_class"]["hem"]["f1"] == pytest.approx(16 / 17)
    assert m["per_class"]["all"]["f1"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((16 / 17 + 2 / 3) / 2)  # 41/51
    assert m["weighted_f1"] == pytest.approx((8 * 16 / 17 + 2 * 2 / 3) / 10)  # 226/255
    assert m["macro_precision"] == pytest.approx((8 / 9 + 1) / 2)
    assert m["macro_recall"] == pytest.approx(0.75)
    assert m["weighted_f1"] > m["macro_f1"]  # the majority class carries the weighted mean


def test_f1_averages_skip_a_class_neither_true_nor_predicted() -> None:
    """A validation fold without class "Pre": perfect predictions score 1, not 2/3."""
    y = np.array([0, 1, 0, 1])
    m = evaluate(y, one_hot_ish([0, 1, 0, 1], 3, 0.9), NAMES3)
    assert m["macro_f1"] == m["weighted_f1"] == m["macro_precision"] == m["macro_recall"] == 1.0
    assert m["averaged_over"] == ["Benign", "Early"]
    assert m["per_class"]["Pre"]["absent"] is True and m["per_class"]["Pre"]["support"] == 0
    assert not m["per_class"]["Benign"]["absent"]
    # scikit-learn's own average without ``labels`` agrees.
    from sklearn.metrics import f1_score

    predicted = [0, 0, 0, 1]
    m = evaluate(y, one_hot_ish(predicted, 3, 0.9), NAMES3)
    assert m["macro_f1"] == pytest.approx(f1_score(y, predicted, average="macro"))
    assert m["weighted_f1"] == pytest.approx(f1_score(y, predicted, average="weighted"))


def test_the_report_marks_an_absent_class() -> None:
    from allxai.trainer.reports import _scores_section

    m = evaluate(np.array([0, 1, 0, 1]), one_hot_ish([0, 1, 0, 1], 3, 0.9), NAMES3)
    text = "\n".join(_scores_section(m, "Test"))
    assert "| Pre (absent) | \u2014 | \u2014 | \u2014 | 0 |" in text
    assert "left out of the averages" in text


def test_auc_is_none_with_a_note_when_a_class_is_absent() -> None:
    y = np.array([0, 1, 0, 1])
    m = evaluate(y, one_hot_ish([0, 1, 2, 1], 3, 0.8), NAMES3)
    assert m["roc_auc"] is None
    assert "Pre" in m["roc_auc_note"]
    # The absent class still has its row and column.
    assert m["confusion_matrix"] == [[1, 0, 1], [0, 2, 0], [0, 0, 0]]
    # Predicted once though never true: it is present, and its zeros count in the averages.
    assert m["per_class"]["Pre"] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 0,
        "absent": False,
    }
    assert m["averaged_over"] == NAMES3
    binary = evaluate(np.array([1, 1]), np.array([[0.3, 0.7], [0.6, 0.4]]), ["hem", "all"])
    assert binary["roc_auc"] is None and "hem" in binary["roc_auc_note"]


def test_ece_of_a_hand_made_example() -> None:
    # Top confidences 0.9 (right), 0.9 (wrong), 0.62 (right), 0.55 (wrong). With 15 bins of width 1/15,
    # 0.9 falls in (13/15, 14/15], 0.62 in (9/15, 10/15], 0.55 in (8/15, 9/15]:
    # ECE = 2/4 * |0.5 - 0.9| + 1/4 * |1 - 0.62| + 1/4 * |0 - 0.55| = 0.2 + 0.095 + 0.1375.
    y = np.array([0, 1, 1, 0])
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.38, 0.62], [0.45, 0.55]])
    assert expected_calibration_error(y, probs) == pytest.approx(0.4325)
    # One bin: |mean accuracy 0.5 - mean confidence 0.7425|.
    assert expected_calibration_error(y, probs, bins=1) == pytest.approx(0.2425)
    assert evaluate(y, probs, ["a", "b"])["ece"] == pytest.approx(0.4325)
    with pytest.raises(ValueError, match="bins"):
        expected_calibration_error(y, probs, bins=0)


def test_evaluate_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="columns"):
        evaluate(np.array([0, 1]), np.eye(2), NAMES3)
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        evaluate(np.array([0, 1, 1]), np.eye(2), ["a", "b"])


def test_summarize_folds() -> None:
    folds = [
        {"accuracy": 0.9, "roc_auc": 0.95, "ece": None},
        {"accuracy": 0.8, "roc_auc": None, "ece": None},
        {"accuracy": 1.0, "roc_auc": 0.85, "ece": None},
    ]
    s = summarize_folds(folds)
    assert s["accuracy"] == pytest.approx({"mean": 0.9, "sd": 0.1, "min": 0.8, "max": 1.0})
    # The None fold is left out: mean of 0.95 and 0.85, sample sd sqrt(2 * 0.05^2 / 1).
    assert s["roc_auc"] == pytest.approx({"mean": 0.9, "sd": math.sqrt(0.005), "min": 0.85, "max": 0.95})
    assert "ece" not in s and "macro_f1" not in s
    assert summarize_folds([{"accuracy": 0.7}], keys=["accuracy"])["accuracy"]["sd"] == 0.0


def _history(epochs: int, shift: float) -> dict[str, list[float]]:
    up = [min(1.0, 0.5 + shift + 0.1 * e) for e in range(epochs)]
    down = [1.0 / (e + 1) + shift for e in range(epochs)]
    return {
        "accuracy": up,
        "val_accuracy": [a - 0.05 for a in up],
        "loss": down,
        "val_loss": [d + 0.1 for d in down],
        "f1_score": up,
        "val_f1_score": [a - 0.07 for a in up],
    }


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def _folds(rng: np.random.Generator) -> list[dict[str, Any]]:
    folds = []
    for k in (1, 2, 3):
        y = np.array([0, 1, 2] * 6)
        predicted = np.where(rng.random(len(y)) < 0.8, y, (y + 1) % 3)
        folds.append(
            {
                "fold": k,
                "val": evaluate(y, one_hot_ish(list(predicted), 3, 0.8), NAMES3),
                "epochs": 4,
                "seconds": 1.5,
            }
        )
    return folds


def test_write_run_report(tmp_path: Path) -> None:
    from allxai.trainer.reports import write_run_report

    folds = _folds(np.random.default_rng(0))
    summary = summarize_folds([f["val"] for f in folds])
    y = np.array([0, 1, 2, 2])
    test = evaluate(y, one_hot_ish([0, 1, 2, 1], 3, 0.7), NAMES3)
    written = write_run_report(
        tmp_path / "run",
        title="ALL-Net on Aria",
        config={"arch": "allnet", "epochs": 4, "learning_rate": 1e-3, "data": tmp_path},
        dataset={
            "counts": {"Benign": 10, "Early": 20, "Pre": 30},
            "test_counts": {"Benign": 2, "Pre": 5},
            "duplicates_removed": 2,
            "skipped": [["x.jpg", "truncated"]],
            "layout": "aria",
            "sizes": {f"{w}x{w}": w for w in range(100, 400, 10)},
        },
        folds=folds,
        summary=summary,
        test=test,
        histories=[_history(4, 0.0), _history(4, 0.05), _history(4, 0.1)],
        class_names=NAMES3,
    )
    expected = {"report.json", "report.md", "curves_folds.png", "confusion_test.png"}
    expected |= {f"curves_fold{k}.png" for k in (1, 2, 3)}
    assert set(written) == expected
    assert all(path.is_file() for path in written.values())

    markdown = written["report.md"].read_text()
    acc = summary["accuracy"]
    assert f"{100 * acc['mean']:.2f} ± {100 * acc['sd']:.2f}" in markdown
    assert f"{100 * folds[1]['val']['macro_f1']:.2f}" in markdown
    assert (
        "| Pre | 30 | 5 |" in markdown and "| Early | 20 | 0 |" in markdown and "**60** | **7**" in markdown
    )
    assert "| layout | aria |" in markdown and "| sizes | (see report.json) |" in markdown
    assert "| Duplicates removed | 2 |" in markdown and "| Skipped files | 1 |" in markdown
    assert "| learning_rate | 0.001 |" in markdown
    # Per-class test scores: Pre has one of two right, and is never wrongly predicted.
    assert "| Pre | 100.00 | 50.00 | 66.67 | 2 |" in markdown
    assert "(confusion_test.png)" in markdown and "(curves_fold2.png)" in markdown

    report = json.loads(written["report.json"].read_text())
    assert report["test"]["confusion_matrix"] == test["confusion_matrix"]
    assert len(report["folds"]) == 3 and report["config"]["data"] == str(tmp_path)

    for name in expected - {"report.json", "report.md"}:
        width, height = _png_size(written[name])
        assert 300 <= width <= 3000 and 200 <= height <= 2000, (name, width, height)
    # Three panels side by side are wider than tall.
    width, height = _png_size(written["curves_fold1.png"])
    assert width > 2 * height


def test_write_run_report_without_test_uses_last_validation(tmp_path: Path) -> None:
    from allxai.trainer.reports import write_run_report

    folds = _folds(np.random.default_rng(1))
    written = write_run_report(
        tmp_path,
        title="no test",
        config={},
        dataset={},
        folds=folds,
        summary=summarize_folds([f["val"] for f in folds]),
        test=None,
        histories=[],
        class_names=NAMES3,
    )
    assert set(written) == {"report.json", "report.md", "confusion_val.png"}
    assert "Last fold's validation" in written["report.md"].read_text()


def test_write_comparison(tmp_path: Path) -> None:
    from allxai.trainer.comparison import write_comparison

    def stats(mean: float, sd: float) -> dict[str, float]:
        return {"mean": mean, "sd": sd}

    rows = [
        {
            "model": "ALL-Net",
            "params": 1234567,
            "seconds": 321.04,
            "summary": {
                "accuracy": stats(0.9785, 0.0041),
                "macro_precision": stats(0.97, 0.01),
                "macro_recall": stats(0.965, 0.012),
                "macro_f1": stats(0.9671, 0.0089),
            },
        },
        {
            "model": "VGG16",
            "params": 14_000_000,
            "seconds": 900.0,
            "summary": {"accuracy": stats(0.95, 0.02)},
        },
    ]
    written = write_comparison(rows, tmp_path)
    assert set(written) == {"comparison.md", "comparison.json", "comparison.png"}
    markdown = written["comparison.md"].read_text()
    assert (
        "| Model | Accuracy (%) | Precision (%) | Recall (%) | F1-score (%) | Parameters | Train time (s) |"
        in markdown
    )
    assert (
        "| ALL-Net | 97.85 ± 0.41 | 97.00 ± 1.00 | 96.50 ± 1.20 | 96.71 ± 0.89 | 1,234,567 | 321.0 |"
        in markdown
    )
    assert "| VGG16 | 95.00 ± 2.00 |" in markdown
    assert json.loads(written["comparison.json"].read_text())["rows"][1]["model"] == "VGG16"
    width, height = _png_size(written["comparison.png"])
    assert 300 <= width <= 2000 and 200 <= height <= 1500


def test_comparison_shows_the_held_out_test_beside_the_folds(tmp_path: Path) -> None:
    from allxai.trainer.comparison import comparison_row, write_comparison

    fold = {"mean": 0.98, "sd": 0.01}
    report = {
        "config": {"arch": "allnet"},
        "params": 10,
        "seconds": 5.0,
        "folds": [],
        "summary": {"accuracy": fold, "macro_f1": fold},
        "test": {"accuracy": 0.951, "macro_f1": 0.945, "weighted_f1": 0.952},
    }
    without = {**report, "config": {"arch": "vgg19"}, "test": None}
    rows = [comparison_row(report), comparison_row(without)]
    assert rows[0]["test"] == {"accuracy": 0.951, "macro_f1": 0.945} and "test" not in rows[1]
    markdown = write_comparison(rows, tmp_path)["comparison.md"].read_text()
    assert "| Test accuracy (%) | Test F1-score (%) |" in markdown
    assert "| allnet | 98.00 ± 1.00 | \u2014 | \u2014 | 98.00 ± 1.00 | 95.10 | 94.50 | 10 | 5.0 |" in markdown
    assert "| vgg19 |" in markdown and "lean optimistic" in markdown


def test_plots_keep_their_old_signatures(tmp_path: Path) -> None:
    from allxai.trainer.plots import plot_confusion, plot_curves

    plot_curves({"accuracy": [0.5, 0.7], "loss": [1.0, 0.6]}, tmp_path / "curves.png")
    plot_confusion([[3, 1], [0, 4]], ["hem", "all"], tmp_path / "confusion.png")
    plot_curves({}, tmp_path / "empty.png")
    for name in ("curves.png", "confusion.png", "empty.png"):
        assert min(_png_size(tmp_path / name)) >= 150
