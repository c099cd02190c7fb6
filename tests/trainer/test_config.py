"""The training configuration: nonsense is refused in words, overrides take their field's type."""

from __future__ import annotations

from pathlib import Path

import pytest

from allxai.trainer.config import ConfigError, load_config
from tests.conftest import REPO

CONFIGS = REPO / "configs"


@pytest.mark.parametrize("name", ["", "../outside", "a/b", "a\\b", ".hidden", "..", "x" * 65, "sp ace"])
def test_a_model_name_must_be_one_plain_folder_name(name: str) -> None:
    with pytest.raises(ConfigError, match=r"name: .* is not a plain folder name"):
        load_config(None, {"name": name})
    with pytest.raises(ConfigError, match="is not a plain folder name"):
        load_config(None, name=name)  # as --name gives it


@pytest.mark.parametrize(
    "field", ["learning_rate", "fine_tune_learning_rate", "test_fraction", "val_fraction"]
)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_no_infinite_or_nan_numbers(field: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"{field}: Input should be a finite number"):
        load_config(None, {field: value})


def test_overrides_take_the_type_of_their_field() -> None:
    overrides = {"epochs": "3", "learning_rate": "1e-4", "class_weights": "false", "data": "some/where"}
    config = load_config(None, {"name": "2024", **overrides})  # name is a string field: stays "2024"
    assert config.name == "2024"
    assert config.epochs == 3 and config.learning_rate == pytest.approx(1e-4)
    assert config.class_weights is False and config.data == Path("some/where")
    with pytest.raises(ConfigError, match="epochs: Input should be a valid integer"):
        load_config(None, {"epochs": "3.5"})
    with pytest.raises(ConfigError, match="epoch: Extra inputs are not permitted"):
        load_config(None, {"epoch": "3"})


def test_every_recipe_loads() -> None:
    recipes = sorted(CONFIGS.glob("*.toml"))
    assert recipes
    for recipe in recipes:
        load_config(recipe)
