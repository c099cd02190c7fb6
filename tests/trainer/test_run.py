"""A whole training run on a small real dataset: what the report says about the data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from allxai.trainer.config import load_config
from allxai.trainer.synthetic import make_cell_image
from tests.conftest import png_bytes


def _cnmc_with_a_broken_test_image(root: Path, size: int) -> Path:
    """C-NMC's layout: training images of four patients per class, and a preliminary test set."""
    rng = np.random.default_rng(0)
    for label, patients in (("all", ("1", "2", "3", "4")), ("hem", ("H5", "H6", "H7", "H8"))):
        folder = root / "C-NMC_training_data" / "fold_0" / label
        folder.mkdir(parents=True)
        for patient in patients:
            for i in range(3):
                image = make_cell_image(1 if label == "all" else 0, size, rng)
                (folder / f"UID_{patient}_{i}_1_{label}.bmp").write_bytes(png_bytes(image, "BMP"))
    prelim = root / "C-NMC_test_prelim_phase_data"
    prelim.mkdir()
    (prelim / "1.bmp").write_bytes(png_bytes(make_cell_image(1, size, rng), "BMP"))
    (prelim / "2.bmp").write_bytes(png_bytes(make_cell_image(0, size, rng), "BMP"))
    (prelim / "3.bmp").write_bytes(b"BM not really a bitmap")
    (root / "C-NMC_test_prelim_phase_data_labels.csv").write_text(
        "Patient_ID,new_names,labels\n"
        "UID_57_1_1_all.bmp,1.bmp,1\nUID_H40_1_1_hem.bmp,2.bmp,0\nUID_58_1_1_all.bmp,3.bmp,1\n"
    )
    return root


def test_a_test_image_that_cannot_be_read_is_in_the_report(tmp_path: Path) -> None:
    from allxai.trainer.train import run

    data = _cnmc_with_a_broken_test_image(tmp_path / "data", 32)
    reports = tmp_path / "reports"
    config = load_config(
        None, data=data, input_size=32, epochs=1, val_fraction=0.25, reports=reports, export=False, seed=3
    )
    result = run(config)
    skipped = json.loads((reports / "report.json").read_text())["dataset"]["skipped"]
    assert [Path(path).name for path, _ in skipped] == ["3.bmp"]
    assert result.test is not None and result.test["n"] == 2
