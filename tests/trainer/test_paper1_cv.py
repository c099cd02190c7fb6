"""Paper 1's pipeline end to end: 3-fold group cross-validation with all four backbones.

Tiny inputs (75x75, InceptionV3's smallest), one epoch, no pretrained weights: this checks that
every stage runs and reports, not the paper's figures (those need a GPU; see docs/training.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from allxai.client.cli import main as allxai_main
from allxai.trainer.comparison import comparison_row, write_comparison
from allxai.trainer.config import load_config
from allxai.trainer.models import PAPER1_BACKBONES
from allxai.trainer.synthetic import make_cell_image
from allxai.trainer.train import run
from tests.conftest import REPO

CONFIGS = REPO / "configs"


@pytest.fixture(scope="module")
def cnmc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A C-NMC-layout set: 6 patients per class, 3 cells each, as 450x450 BMP."""
    root = tmp_path_factory.mktemp("cnmc")
    rng = np.random.default_rng(0)
    for fold in range(3):
        for label, synthetic_class, prefix in (("all", 3, ""), ("hem", 0, "H")):
            folder = root / "C-NMC_training_data" / f"fold_{fold}" / label
            folder.mkdir(parents=True)
            for p in range(2):
                patient = f"{prefix}{fold * 2 + p + 1}"
                for i in range(3):
                    image = Image.fromarray(make_cell_image(synthetic_class, 450, rng))
                    image.save(folder / f"UID_{patient}_{i}_1_{label}.bmp")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("arch", PAPER1_BACKBONES)
def test_paper1_cross_validation_of_each_backbone(arch: str, cnmc: Path, tmp_path: Path) -> None:
    # One backbone per test: four ImageNet-sized networks, three folds each, would take one test past its
    # time limit on 2 busy cores, and a failure names the backbone.
    config = load_config(
        CONFIGS / f"paper1-{arch}-cpu.toml",
        {
            "input_size": "75",
            "epochs": "1",
            "batch_size": "8",
            "max_per_class": "0",
            "run_eagerly": "true",
        },
        data=cnmc,
        reports=tmp_path / arch,
        export=arch == "vgg19",
        out=tmp_path / "models",
    )
    assert config.folds == 3 and config.augment == "paper1" and config.task == "binary"
    result = run(config)
    report = json.loads((tmp_path / arch / "report.json").read_text())
    assert len(report["folds"]) == 3
    for fold in report["folds"]:
        assert fold["val"]["n"] > 0 and fold["test"]["n"] > 0
        assert 0.0 <= fold["val"]["accuracy"] <= 1.0
    assert set(result.summary["accuracy"]) == {"mean", "sd", "min", "max"}
    assert result.test is not None and len(result.test["confusion_matrix"]) == 2
    for picture in ("curves_fold1.png", "curves_folds.png", "confusion_test.png"):
        with Image.open(tmp_path / arch / picture) as image:
            assert image.size[0] > 200
    assert "± " in (tmp_path / arch / "report.md").read_text()
    assert (tmp_path / "models" / "vgg19" / "1" / "saved_model.pb").is_file() == (arch == "vgg19")
    write_comparison([comparison_row(report)], tmp_path / "comparison")
    assert arch in (tmp_path / "comparison" / "comparison.md").read_text()


def test_train_cli_reports_bad_data_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        allxai_main(["train", "--data", str(tmp_path / "nowhere"), "--reports", str(tmp_path / "r")])
    assert info.value.code == 2
    assert "does not exist" in capsys.readouterr().err


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    from allxai.trainer.config import ConfigError

    bad = tmp_path / "bad.toml"
    bad.write_text('arch = "resnet9000"\nepochs = 0\n')
    with pytest.raises(ConfigError, match="arch: Value error, unknown architecture 'resnet9000'") as info:
        load_config(bad)
    assert "epochs: Input should be greater than 0" in str(info.value)


def test_every_recipe_parses() -> None:
    recipes = sorted(CONFIGS.glob("*.toml"))
    assert len(recipes) == 13
    for recipe in recipes:
        load_config(recipe)
