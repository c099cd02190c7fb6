"""How a cell-centred model's input is made: the part of the model card that training and serving share.

A model trained on cell crops (``configs/paper2-allnet-cell-cpu.toml``) carries a :class:`CellRecipe`
in its card under ``cell_input``; the gateway reads it and prepares every request the way the trainer
prepared the training images (:mod:`allxai.contract.cellview`). A card without it is a field model:
the whole image resized, as before. This module is plain data, so the card parser stays light.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class RecipeError(ValueError):
    """A ``cell_input`` entry that cannot be used."""


@dataclass(frozen=True)
class StainTarget:
    """Reinhard's target: the mean and standard deviation of L*, a*, b* over training fields."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std)}


@dataclass(frozen=True)
class CellRecipe:
    """The crop around one white cell, at one scale, in one stain, as the model was trained on it."""

    #: Side of the square crop in micrometres (the model's input spans this many µm).
    field_um: float = 28.0
    #: Margin kept around the cell's own mask, in µm; everything farther from the cell is blanked, so the
    #: model sees the cell and not the red cells, the background, the corners or a scale-bar label.
    margin_um: float = 2.0
    #: The largest side, in pixels, of the view that explanations segment and draw (the crop at the
    #: image's own resolution, when it has more pixels than the model's input).
    view_max: int = 256
    #: The smallest side of the view: a cell crop with fewer pixels (Aria's cells are about 25 px across) is
    #: enlarged to it, so the explanation's superpixels (quickshift's kernel is in pixels) are finer than the
    #: cell; at 64 px quickshift cut a crop into about 5 superpixels, the cell and its margin in one.
    view_min: int = 128
    #: Reinhard's stain target; ``None``: colours as they come.
    stain: StainTarget | None = None
    #: The micrometres per pixel of the training images, 1st and 99th percentile: an image whose scale is
    #: far outside (see :data:`SCALE_SLACK`) is flagged by the domain check.
    scale_range: tuple[float, float] | None = None
    #: The white cells' diameters in µm over the training crops, 1st and 99th percentile.
    diameter_range: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "field_um": self.field_um,
            "margin_um": self.margin_um,
            "view_max": self.view_max,
            "view_min": self.view_min,
        }
        if self.stain is not None:
            out["stain"] = self.stain.to_dict()
        if self.scale_range is not None:
            out["scale_range"] = list(self.scale_range)
        if self.diameter_range is not None:
            out["diameter_range"] = list(self.diameter_range)
        return out

    @classmethod
    def parse(cls, raw: object) -> CellRecipe:
        """The recipe of a card's ``cell_input`` object; :class:`RecipeError` says what is wrong."""
        if not isinstance(raw, Mapping):
            raise RecipeError("cell_input must be a JSON object")
        stain = raw.get("stain")
        return cls(
            field_um=_positive(raw.get("field_um", cls.field_um), "field_um"),
            margin_um=_positive(raw.get("margin_um", cls.margin_um), "margin_um", zero=True),
            view_max=int(_positive(raw.get("view_max", cls.view_max), "view_max")),
            view_min=int(_positive(raw.get("view_min", 0), "view_min", zero=True)),
            stain=None if stain is None else _stain(stain),
            scale_range=_range(raw.get("scale_range"), "scale_range"),
            diameter_range=_range(raw.get("diameter_range"), "diameter_range"),
        )


#: How far outside the training range a scale or a cell diameter may lie before the domain check flags the
#: image: a factor, both ways (1.5: from two thirds of the smallest to 1.5 times the largest).
SCALE_SLACK = 1.5


def _positive(value: object, key: str, *, zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RecipeError(f"cell_input.{key} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not zero):
        raise RecipeError(f"cell_input.{key} must be {'at least 0' if zero else 'above 0'}, got {value}")
    return float(value)


def _triple(value: object, key: str) -> tuple[float, float, float]:
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise RecipeError(f"cell_input.stain.{key} must be a list of 3 numbers")
    a, b, c = (_positive(v, f"stain.{key}") for v in value)
    return a, b, c


def _stain(raw: object) -> StainTarget:
    if not isinstance(raw, Mapping):
        raise RecipeError("cell_input.stain must be a JSON object with mean and std")
    mean = raw.get("mean")
    if (
        not isinstance(mean, list | tuple)
        or len(mean) != 3
        or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in mean)
    ):
        raise RecipeError("cell_input.stain.mean must be a list of 3 finite numbers (L*, a*, b*)")
    std = _triple(raw.get("std"), "std")
    return StainTarget((float(mean[0]), float(mean[1]), float(mean[2])), std)


def _range(value: object, key: str) -> tuple[float, float] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise RecipeError(f"cell_input.{key} must be [low, high]")
    low, high = (_positive(v, key) for v in value)
    if low > high:
        raise RecipeError(f"cell_input.{key} must be [low, high] with low <= high, got {list(value)}")
    return low, high
