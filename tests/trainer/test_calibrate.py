"""The domain gate and the conformal levels at export: fitted, calibrated, and served from the SavedModel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from allxai.contract import names as contract
from tests.conftest import INPUT_SIZE


def test_the_shared_covariance_distance_is_the_mahalanobis_distance_to_the_nearest_mean() -> None:
    from allxai.trainer.domain import Gaussian

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)) + np.repeat(np.eye(6)[:3] * 4, 100, axis=0)
    labels = np.repeat(np.arange(3), 100)
    gaussian = Gaussian.fit(x, labels)
    query = rng.normal(size=(20, 6)) * 3
    by_hand = np.min(
        [np.einsum("ij,jk,ik->i", query - m, gaussian.precision, query - m) for m in gaussian.means], axis=0
    )
    np.testing.assert_allclose(np.asarray(gaussian.distance(query)), by_hand, rtol=1e-9)
    # Standardised: a feature constant in training is floored, not divided by zero.
    flat = Gaussian.fit(np.c_[x, np.ones(len(x))], standardise=True)
    assert np.all(np.isfinite(np.asarray(flat.distance(np.c_[query, np.zeros(len(query))]))))


def test_the_pixel_statistics_tell_a_smear_from_a_flat_image() -> None:
    from allxai.trainer.domain_stats import NAMES, input_statistics
    from allxai.trainer.synthetic import make_cell_image

    rng = np.random.default_rng(1)
    cells = np.stack([make_cell_image(k % 4, INPUT_SIZE, rng) for k in range(8)])
    flat = np.full((2, INPUT_SIZE, INPUT_SIZE, 3), 200, np.uint8)
    stats = np.asarray(input_statistics(np.concatenate([cells, flat])))
    assert stats.shape == (10, len(NAMES)) and np.all(np.isfinite(stats))
    grad = NAMES.index("log_grad")
    assert stats[8:, grad].max() < stats[:8, grad].min()  # no texture at all


def test_the_export_serves_the_domain_score_and_its_card_the_calibration(model_base: Path) -> None:
    import tensorflow as tf

    path = model_base / "allnet" / "1"
    card = json.loads((path / contract.CARD_FILE).read_text())
    gate, sets = card["domain"], card["conformal"]
    assert gate["output"] == contract.DOMAIN_OUTPUT and gate["acceptance"] == 0.975
    assert "Mahalanobis" in gate["method"] and gate["figures"]["calibration"]["images"] > 0
    assert set(gate["figures"]["test"]) >= {"flagged", "accuracy_all", "accuracy_accepted"}
    assert sets["method"] == "aps-randomised" and sets["calibration_images"] > 0
    for level in ("0.05", "0.1"):
        assert 0 <= sets["figures"]["test"][level]["coverage"] <= 1
    serve = tf.saved_model.load(str(path)).signatures[contract.SERVING_SIGNATURE]
    assert set(serve.structured_outputs) == {contract.OUTPUT, contract.DOMAIN_OUTPUT}
    grey = np.full((3, INPUT_SIZE, INPUT_SIZE, 3), 128, np.uint8)
    out = serve(images=tf.constant(grey))
    scores = out[contract.DOMAIN_OUTPUT].numpy()
    assert scores.shape == (3,) and np.all(scores > gate["threshold"])


@pytest.mark.slow
def test_a_run_without_calibration_exports_no_gate(tmp_path: Path) -> None:
    import tensorflow as tf

    from allxai.trainer.config import load_config
    from allxai.trainer.synthetic import make_dataset
    from allxai.trainer.train import run

    data = make_dataset(tmp_path / "data", per_class=16, size=32, seed=2)
    config = load_config(
        None,
        data=data,
        layout="folder",
        out=tmp_path / "models",
        reports=tmp_path / "reports",
        input_size=32,
        epochs=1,
        calibrate=False,
    )
    result = run(config)
    assert result.export_path is not None
    card = json.loads((result.export_path / contract.CARD_FILE).read_text())
    assert "domain" not in card and "conformal" not in card
    serve = tf.saved_model.load(str(result.export_path)).signatures[contract.SERVING_SIGNATURE]
    assert set(serve.structured_outputs) == {contract.OUTPUT}
    # The run says which files each split held, so the held-out ones can be evaluated again.
    split = json.loads(result.reports["split"].read_text())
    assert all(split[k] for k in ("train", "validation", "test"))
    assert not set(split["test"]) & (set(split["train"]) | set(split["validation"]))
