"""Fitting with each paper's augmentation on tiny real models and real arrays."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from allxai.trainer.config import load_config


def test_paper2_fit_balances_the_minority_class_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from allxai.trainer.fit import fit

    rng = np.random.default_rng(0)
    labels = np.repeat(np.array([0, 1, 2]), [3, 9, 6]).astype(np.int64)
    images = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
    config = load_config(None, input_size=32, epochs=1, batch_size=8, augment="paper2", class_weights=False)
    with caplog.at_level(logging.INFO, logger="allxai.trainer.fit"):
        result = fit(config, 3, (images, labels), (images[:6], labels[:6]), tmp_path, seed=1)
    assert result.epochs == 1
    assert "paper 2 balancing (smallest) added {0: 6, 1: 0, 2: 0} images per class" in caplog.text
