"""The pictures' colour language, legends and outlines, on a hand-made explanation whose answer we know."""

from __future__ import annotations

import colorsys

import numpy as np
import numpy.typing as npt
import pytest

from allxai.explainer import palette, render
from allxai.explainer.result import ExplanationResult, Quality

LABEL = "Pre-B ALL"


def quadrants(weights: dict[int, float], top: list[int]) -> ExplanationResult:
    """A 32x32 explanation of four 16x16 superpixels (0 top left, 1 top right, 2 bottom left, 3 bottom
    right); every one touches the image's border."""
    segments = np.zeros((32, 32), np.int32)
    segments[:16, 16:] = 1
    segments[16:, :16] = 2
    segments[16:, 16:] = 3
    ordered = sorted(weights.items(), key=lambda item: -abs(item[1]))
    return ExplanationResult(0, ordered, top, segments, 0.0, 1.0, 0.5, 100, 1)


def hue(rgb: npt.ArrayLike) -> float:
    r, g, b = (np.asarray(rgb, np.float64) / 255).tolist()
    return colorsys.rgb_to_hsv(r, g, b)[0]


GREY = np.full((32, 32, 3), 128, np.uint8)
RESULT = quadrants({0: 0.4, 1: -0.2, 2: 0.1, 3: 0.0}, top=[0, 1])


def test_for_the_label_is_one_hue_in_the_overlay_the_heatmap_and_the_colour_bar() -> None:
    over = render.overlay(GREY, RESULT)
    heat = render.heatmap(RESULT)
    towards, against = hue(palette.FOR_LABEL), hue(palette.AGAINST_LABEL)
    assert towards != against
    # Tint (inside, off the outline), outline and heatmap of the positive superpixel: one hue.
    assert hue(over[8, 8]) == pytest.approx(towards, abs=0.01)
    assert (over[0, 0] == palette.FOR_LABEL).all()
    assert (heat[8, 8] == palette.FOR_LABEL).all()  # the largest weight is drawn at full colour
    assert hue(heat[24, 8]) == pytest.approx(towards, abs=0.01)  # a weaker positive weight: paler, same hue
    # The negative superpixel: the other colour in both pictures; no weight: white.
    assert hue(over[8, 24]) == pytest.approx(against, abs=0.01)
    assert hue(heat[8, 24]) == pytest.approx(against, abs=0.01)
    assert (heat[24, 24] == palette.NEUTRAL).all()
    # The colour bar's map is the heatmap's: its ends are the two colours, its middle white.
    cmap = palette.colormap()
    assert np.allclose(np.asarray(cmap(1.0)[:3]) * 255, palette.FOR_LABEL, atol=1)
    assert np.allclose(np.asarray(cmap(0.0)[:3]) * 255, palette.AGAINST_LABEL, atol=1)
    assert np.allclose(np.asarray(cmap(0.5)[:3]) * 255, 255, atol=2)


def test_a_top_superpixel_at_the_border_is_outlined_along_the_border() -> None:
    over = render.overlay(GREY, RESULT)
    # Superpixel 0 fills the top-left quadrant: its outline runs along the top and left edges of the image.
    assert (over[0, :16] == palette.FOR_LABEL).all() and (over[:16, 0] == palette.FOR_LABEL).all()
    assert (over[0, 16:] == palette.AGAINST_LABEL).all() and (over[:16, 31] == palette.AGAINST_LABEL).all()
    # Not a top superpixel: no outline on its border.
    assert not (over[31, :16] == palette.FOR_LABEL).all(axis=-1).any()
    full = render.outline(np.ones((5, 5), bool))
    assert full.sum() == 16 and not full[1:4, 1:4].any()  # a whole-image region: its frame only


def test_a_heatmap_png_on_its_own_carries_its_legend() -> None:
    plain = render.heatmap(RESULT)
    shown = render.heatmap_with_legend(RESULT, LABEL)
    factor = -(-render.LEGEND_MIN_WIDTH // 32)
    assert shown.shape[1] == 32 * factor >= render.LEGEND_MIN_WIDTH
    # The map on top, enlarged by whole pixels; under it the strip with the same colour scale.
    assert (shown[: 32 * factor] == plain.repeat(factor, 0).repeat(factor, 1)).all()
    strip = shown[32 * factor :].reshape(-1, 3)
    colours = {tuple(c) for c in strip.tolist()}
    assert palette.FOR_LABEL in colours and palette.AGAINST_LABEL in colours
    # A map without evidence has no colour to explain: it stays white, at the image's size.
    quiet = quadrants({0: 1e-9}, top=[0])
    quiet.quality = Quality(
        r2=None, local_prediction=0.5, model_prediction=0.5, stability=None,
        cell_share=0.0, background_share=0.0, corner_share=0.0, no_evidence=True,
    )  # fmt: skip
    assert (render.heatmap_with_legend(quiet, LABEL) == 255).all()


def test_the_figure_names_the_class_and_labels_a_symmetric_colour_bar() -> None:
    fig = render.build_figure(GREY, RESULT, f"{LABEL} 81.4%", LABEL)
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1
    caption = bars[0].get_xlabel()
    assert "against" in caption and f"for {LABEL}" in caption
    low, high = bars[0].get_xlim()
    assert low == pytest.approx(-0.4) and high == pytest.approx(0.4)  # symmetric around 0
    legend = [text.get_text() for ax in fig.axes if ax.get_legend() for text in ax.get_legend().get_texts()]
    assert legend == [f"for {LABEL}", f"against {LABEL}"]
    titles = [ax.get_title() for ax in fig.axes] + [fig.get_suptitle()]
    assert f"{LABEL} 81.4%" in titles and not any("/" in t for t in titles)
