"""The cell-centred input: the recipe in the card, stain normalisation, the crops, and their notes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from allxai.contract import stain
from allxai.contract.card import CardError, ModelCard, dump_card, parse_card
from allxai.contract.cellrecipe import CellRecipe, RecipeError, StainTarget
from allxai.contract.cellview import NO_CELL, cell_views, field_view, prepare, prepare_array
from allxai.contract.preprocessing import decode_image, resize_image
from allxai.trainer.synthetic import make_cell_image
from tests.conftest import png_bytes

TARGET = StainTarget((80.0, 5.0, -10.0), (12.0, 9.0, 14.0))


@pytest.fixture(scope="module")
def field() -> np.ndarray:
    return make_cell_image(1, 160, np.random.default_rng(4))


def test_recipe_round_trips_through_the_card() -> None:
    recipe = CellRecipe(stain=TARGET, scale_range=(0.5, 0.9), diameter_range=(9.0, 20.0))
    card = ModelCard(class_names=("Benign", "Pro"), input_size=(64, 64), cell_input=recipe)
    again = parse_card(dump_card(card))
    assert again.cell_input == recipe
    assert parse_card({"class_names": ["a", "b"]}).cell_input is None


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ([], "JSON object"),
        ({"field_um": -1}, "above 0"),
        ({"field_um": "big"}, "finite number"),
        ({"stain": {"mean": [1, 2], "std": [1, 1, 1]}}, "3 finite numbers"),
        ({"stain": {"mean": [1, 2, 3], "std": [1, 0, 1]}}, "above 0"),
        ({"scale_range": [0.9, 0.5]}, "low <= high"),
    ],
)
def test_bad_recipes_are_refused_with_the_reason(entry: object, words: str) -> None:
    with pytest.raises(RecipeError, match=words):
        CellRecipe.parse(entry)
    with pytest.raises(CardError, match=words):
        parse_card({"class_names": ["a"], "cell_input": entry})


def test_reinhard_maps_a_field_onto_its_own_statistics_unchanged(field: np.ndarray) -> None:
    own = stain.lab_stats(field)
    assert own is not None
    again = stain.normalise(field, own, own)
    assert np.abs(again.astype(int) - field.astype(int)).max() <= 2


def test_reinhard_moves_the_colours_to_the_target_and_keeps_black_black(field: np.ndarray) -> None:
    image = field.copy()
    image[:10] = 0  # a segmented image's black background
    moved = stain.normalise(image, stain.lab_stats(image), TARGET)
    assert (moved[:10] == 0).all()
    after = stain.lab_stats(moved)
    assert after is not None
    assert after.mean == pytest.approx(TARGET.mean, abs=3.0)
    assert stain.lab_stats(np.zeros((8, 8, 3), np.uint8)) is None


def test_the_target_is_the_median_of_the_fields() -> None:
    stats = [StainTarget((i, 0.0, 0.0), (1.0, 2.0, 3.0)) for i in (10.0, 20.0, 90.0)]
    assert stain.fit_target([*stats, None]).mean == (20.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="no field"):
        stain.fit_target([None])


def test_a_cell_crop_centres_the_cell_and_blanks_what_is_off_it(field: np.ndarray) -> None:
    (view,) = cell_views(field, (32, 32), CellRecipe(field_um=28.0, stain=TARGET), limit=1)
    assert view.white_cells >= 1 and not view.notes
    assert view.scale is not None
    assert view.input.shape == (32, 32, 3)
    assert view.view.shape[0] >= 32 and view.view.shape[:2] == view.cell_mask.shape
    # The input is made from the view, so an explanation of the view explains the input.
    assert np.array_equal(view.input, resize_image(view.view, (32, 32)))
    # The cell sits in the middle of the crop, and the corners are blanked.
    ys, xs = np.nonzero(view.cell_mask)
    h = view.view.shape[0]
    assert abs(ys.mean() - h / 2) < h * 0.15 and abs(xs.mean() - h / 2) < h * 0.15
    assert view.view[:3, :3].max() == 0 and view.view[-3:, -3:].max() == 0
    top, left, bottom, right = view.region
    assert bottom - top == right - left


def test_an_image_with_no_white_cell_gets_the_centre_and_a_note() -> None:
    grey = np.full((90, 120, 3), 200, np.uint8)
    (view,) = cell_views(grey, (32, 32), CellRecipe())
    assert view.white_cells == 0 and view.notes == (NO_CELL,)
    assert view.region == (0, 15, 90, 105)
    assert not view.cell_mask.any()


def test_a_scale_far_coarser_than_training_is_a_note(field: np.ndarray) -> None:
    (view,) = cell_views(field, (32, 32), CellRecipe(), limit=1)
    assert view.scale is not None
    trained = CellRecipe(scale_range=(view.scale.um_per_px / 10, view.scale.um_per_px / 8))
    (far,) = cell_views(field, (32, 32), trained, limit=1)
    assert any("coarser" in note for note in far.notes)


def test_a_field_model_sees_the_whole_image_resized(field: np.ndarray) -> None:
    prepared = field_view(field, (48, 48))
    assert np.array_equal(prepared.input, resize_image(field, (48, 48)))
    assert prepared.view is prepared.input and prepared.region == (0, 0, 160, 160)


def test_bytes_and_arrays_take_the_same_path(field: np.ndarray) -> None:
    data = png_bytes(field)
    recipe = CellRecipe(stain=TARGET)
    by_bytes = prepare(data, (32, 32), recipe)
    by_array = prepare_array(decode_image(data), (32, 32), recipe)
    assert np.array_equal(by_bytes.input, by_array.input)
    assert np.array_equal(by_bytes.input, cell_views(field, (32, 32), recipe)[0].input)


def test_a_real_segmented_cell_is_cut_around_the_cell(shared_data: Path) -> None:
    path = sorted((shared_data / "cnmc-sample").rglob("*.bmp"))[0]
    prepared = prepare(path.read_bytes(), (64, 64), CellRecipe(stain=TARGET))
    assert prepared.white_cells >= 1 and not prepared.notes
    assert prepared.scale is not None and prepared.scale.source == "white_cell"
    # The view keeps the cell's own resolution (up to view_max), not the model's 64 px.
    assert prepared.view.shape[0] > 64


def test_the_view_is_enlarged_to_view_min_and_marks_what_was_blanked(field: np.ndarray) -> None:
    (natural,) = cell_views(field, (32, 32), CellRecipe(view_min=0), limit=1)
    larger = natural.view.shape[0] + 40
    (view,) = cell_views(field, (32, 32), CellRecipe(view_min=larger), limit=1)
    assert view.view.shape[:2] == (larger, larger)
    assert view.blank is not None and view.blank.shape == (larger, larger)
    assert (view.view[view.blank] == 0).all()
    assert not (view.blank & view.cell_mask).any()
    # A card from before view_min existed keeps its models' views as they were trained.
    assert CellRecipe.parse({"field_um": 28.0}).view_min == 0
