"""Which training settings a run report shows: only those the run read, with the values it used.

A :class:`~allxai.trainer.config.TrainConfig` carries every field of every recipe with its default, so a
plain dump of it tells an ALL-Net reader that ImageNet weights were loaded and a backbone frozen, when
ALL-Net has neither. The report shows what applied; ``report.json`` keeps the whole configuration.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Read only for a keras.applications backbone (``models.build_transfer``, ``fit``'s fine-tuning stage).
TRANSFER_ONLY = frozenset(
    {"weights", "freeze_backbone", "fine_tune_epochs", "fine_tune_layers", "fine_tune_learning_rate"}
)
#: Read only when a transfer model has a fine-tuning stage (``fine_tune_epochs`` > 0).
FINE_TUNING = frozenset({"fine_tune_layers", "fine_tune_learning_rate"})
#: Read only for cell input (``input = "cell"``: the cell recipe and its crops).
CELL_ONLY = frozenset({"field_um", "margin_um", "cells_per_field", "stain_normalise"})
#: Read only when the dataset is indexed as Aria's (groups of file numbers, near-duplicate joining).
ARIA_ONLY = frozenset({"block_size", "near_duplicate_distance"})
#: Read only when the export is written (its place and name).
EXPORT_ONLY = frozenset({"out", "name", "version"})


def unused_settings(config: Mapping[str, Any], dataset: Mapping[str, Any]) -> frozenset[str]:
    """The settings of ``config`` (a dumped ``TrainConfig``) that the run did not read, given what
    the dataset turned out to be (``dataset["layout"]``, a separate test set in ``test_counts``)."""
    unused: set[str] = set()
    if config.get("arch") == "allnet":
        unused |= TRANSFER_ONLY
    elif not config.get("fine_tune_epochs"):
        unused |= FINE_TUNING
    if config.get("input", "field") != "cell":
        unused |= CELL_ONLY
    # fit's tf.data pipeline jitters the stain only in the cell augmentation, and only paper 2's
    # augmentation balances the classes.
    if config.get("augment") != "cell":
        unused.add("stain_jitter")
    if config.get("augment") != "paper2":
        unused.add("balance_classes")
    if (dataset.get("layout") or config.get("layout")) != "aria":
        unused |= ARIA_ONLY
    if int(config.get("folds") or 0) >= 2:
        unused.add("val_fraction")  # k-fold: each fold validates on its own part
    if dataset.get("test_counts"):
        unused.add("test_fraction")  # the dataset brought its own test set
    if not config.get("calibrate", True):
        unused.add("domain_acceptance")
    if not config.get("export", True):
        unused |= EXPORT_ONLY
    return frozenset(unused & set(config))


def applicable_settings(config: Mapping[str, Any], dataset: Mapping[str, Any]) -> dict[str, Any]:
    """The settings the run read, in the config's order, with the values used: an ``"auto"`` layout
    as the layout found."""
    unused = unused_settings(config, dataset)
    shown = {key: value for key, value in config.items() if key not in unused}
    if shown.get("layout") == "auto" and dataset.get("layout"):
        shown["layout"] = f"{dataset['layout']} (found by layout = auto)"
    return shown
