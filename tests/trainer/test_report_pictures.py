"""The run report shows the images the run used, the settings that applied, full class names, no paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from allxai.trainer import plots, reports
from allxai.trainer.report_settings import applicable_settings
from allxai.trainer.scores import evaluate

NAMES = ["Benign", "Pre"]
DISPLAY = {"Benign": "Benign (hematogones)", "Pre": "Pre-B ALL"}
#: A dumped TrainConfig of an ALL-Net cell run on Aria, with the transfer-only defaults it never read.
ALLNET = {
    "data": "/srv/lab/aria-all/Original",
    "layout": "auto",
    "block_size": 20,
    "near_duplicate_distance": 6,
    "max_per_class": 3,
    "input": "cell",
    "field_um": 28.0,
    "arch": "allnet",
    "weights": "imagenet",
    "freeze_backbone": True,
    "epochs": 2,
    "augment": "cell",
    "stain_jitter": 0.05,
    "balance_classes": "smallest",
    "fine_tune_epochs": 0,
    "fine_tune_layers": 30,
    "folds": 0,
    "test_fraction": 0.2,
    "val_fraction": 0.1,
    "seed": 42,
}


def test_only_the_settings_a_run_read_are_shown() -> None:
    shown = applicable_settings(ALLNET, {"layout": "aria"})
    assert not {"weights", "freeze_backbone", "fine_tune_epochs", "fine_tune_layers"} & set(shown)
    assert "balance_classes" not in shown  # paper 2's augmentation only
    assert shown["stain_jitter"] == 0.05 and shown["field_um"] == 28.0 and shown["block_size"] == 20
    assert shown["layout"].startswith("aria")  # the layout found, not "auto"
    transfer = {**ALLNET, "arch": "vgg19", "input": "field", "augment": "none", "folds": 5}
    shown = applicable_settings(transfer, {"layout": "folder", "test_counts": {"Pre": 1}})
    assert shown["weights"] == "imagenet" and shown["freeze_backbone"] is True
    assert "fine_tune_layers" not in shown  # no fine-tuning stage
    assert not {"field_um", "stain_jitter", "block_size", "near_duplicate_distance"} & set(shown)
    assert not {"val_fraction", "test_fraction"} & set(shown)  # k folds; the dataset's own test set


def test_titles_lose_their_paths() -> None:
    assert plots.path_free("allnet on /srv/lab/aria-all/Original: fold 1") == "allnet on Original: fold 1"
    assert plots.path_free(r"vgg19 on C:\data\cnmc") == "vgg19 on cnmc"
    assert plots.path_free("train/validation split") == "train/validation split"  # a phrase, not a path


def test_the_report_lists_the_images_used_with_full_names_and_no_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    titles: list[str] = []
    save = plots._save

    def remember(fig: Any, path: Path, title: str) -> None:
        save(fig, path, title)
        titles.append(fig.get_suptitle())

    monkeypatch.setattr(plots, "_save", remember)
    labels: list[list[str]] = []
    confusion = reports.plot_confusion

    def named(matrix: Any, names: list[str], path: Path, **kwargs: Any) -> None:
        labels.append(list(names))
        confusion(matrix, names, path, **kwargs)

    monkeypatch.setattr(reports, "plot_confusion", named)
    y = np.array([0, 1, 1, 0])
    scores = evaluate(y, np.eye(2, dtype=np.float32)[[0, 1, 0, 0]], NAMES)
    history = {"loss": [1.0, 0.5], "val_loss": [1.1, 0.7], "accuracy": [0.5, 0.8], "val_accuracy": [0.5, 0.7]}
    written = reports.write_run_report(
        tmp_path,
        title="allnet on /srv/lab/aria-all/Original",
        config=ALLNET,
        dataset={
            "layout": "aria",
            "counts": {"Benign": 40, "Pre": 60},
            "used_counts": {"Benign": 3, "Pre": 3},
        },
        folds=[{"fold": 1, "val": scores, "test": scores, "epochs": 2, "seconds": 1.0}],
        summary={},
        test=scores,
        histories=[history],
        class_names=NAMES,
        display_names=DISPLAY,
    )
    text = written["report.md"].read_text()
    assert "| Benign (hematogones) | 3 |" in text and "| Pre-B ALL | 3 |" in text and "**6**" in text
    assert "| Benign | 40 |" not in text and "| Pre | 60 |" not in text
    assert "6 of the 100 images in the dataset were used: at most 3 per class, drawn with seed 42" in text
    assert "Classes: Benign (hematogones), Pre-B ALL." in text
    assert "| weights |" not in text and "| freeze_backbone |" not in text and "| epochs | 2 |" in text
    assert text.startswith("# allnet on Original\n")
    assert titles and all("/" not in title for title in titles)
    assert any(title.startswith("allnet on Original") for title in titles)
    assert labels == [["Benign (hematogones)", "Pre-B ALL"]]  # the confusion matrix's axes
