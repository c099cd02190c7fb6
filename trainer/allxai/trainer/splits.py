"""Group-aware, stratified splits: a group (patient, smear block) never sits on both sides."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import numpy.typing as npt
from sklearn.model_selection import StratifiedGroupKFold

from allxai.trainer.datasets import DatasetError

IndexArray = npt.NDArray[np.int64]


def _codes(groups: Sequence[str]) -> npt.NDArray[np.int64]:
    _, codes = np.unique(np.asarray(groups), return_inverse=True)
    return codes.astype(np.int64)


def group_kfold(
    labels: npt.NDArray[np.int64], groups: Sequence[str], n_splits: int, seed: int
) -> Iterator[tuple[IndexArray, IndexArray]]:
    """Stratified group k-fold: (train, validation) index arrays per fold."""
    n_groups = len(set(groups))
    if n_groups < n_splits:
        raise DatasetError(
            f"{n_groups} groups cannot fill {n_splits} folds; use fewer folds or smaller groups"
        )
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for train, val in splitter.split(np.zeros(len(labels)), labels, _codes(groups)):
        yield train.astype(np.int64), val.astype(np.int64)


def group_holdout(
    labels: npt.NDArray[np.int64],
    groups: Sequence[str],
    test_fraction: float,
    seed: int,
    require_all_classes: bool = True,
) -> tuple[IndexArray, IndexArray]:
    """One stratified, group-aware split with about ``test_fraction`` of the images held out."""
    if not 0 < test_fraction < 1:
        raise DatasetError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    n_splits = max(2, round(1 / test_fraction))
    train, test = next(group_kfold(labels, groups, n_splits, seed))
    missing = set(np.unique(labels)) - set(np.unique(labels[test]))
    if missing and require_all_classes:
        raise DatasetError(f"the held-out part has no image of class index {sorted(missing)}; use more data")
    return train, test


def split_sizes(groups: Sequence[str], parts: dict[str, IndexArray]) -> dict[str, dict[str, int]]:
    """Images and groups per part, for the dataset report."""
    arr = np.asarray(groups)
    return {name: {"images": len(idx), "groups": len(set(arr[idx]))} for name, idx in parts.items()}
