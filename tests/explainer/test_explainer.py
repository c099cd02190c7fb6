"""The explainer as a plain module: LIME over a predict function whose answer we know, and its pictures."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import numpy.typing as npt
from PIL import Image

from allxai.explainer import palette, render
from allxai.explainer.engine import ExplainSettings
from allxai.explainer.engine import explain as engine_explain
from allxai.explainer.result import ExplanationResult
from tests.support.predictors import FnPredictor


def explain(image: npt.NDArray[np.uint8], fn, label: int, settings: ExplainSettings) -> ExplanationResult:  # type: ignore[no-untyped-def]
    return asyncio.run(engine_explain(image, FnPredictor(fn, False), settings, label=label))


def image_with_a_red_square() -> npt.NDArray[np.uint8]:
    """A 64x64 patchwork of 16 coloured tiles (quickshift finds each) with a red tile at (16:32, 16:32)."""
    img = np.zeros((64, 64, 3), np.uint8)
    colours = [(200, 200, 60), (60, 200, 200), (200, 60, 200), (60, 60, 200)]
    for i in range(4):
        for j in range(4):
            img[i * 16 : (i + 1) * 16, j * 16 : (j + 1) * 16] = colours[(i + j) % 4]
    # Textured, as a nucleus is: lime hides a superpixel with its mean colour, which here is pink.
    img[16:32, 16:32] = (220, 20, 20)
    img[16:32:2, 16:32] = (250, 250, 250)
    return img


def redness(batch: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """Class 1 is "the red tile is there": the only place a true explanation may point."""
    corner = batch[:, 16:32, 16:32].astype(np.float32)
    red = ((corner[..., 0] > 180) & (corner[..., 1] < 60)).mean(axis=(1, 2)) * 2
    return np.stack([1 - red, red], axis=1).astype(np.float32)


def test_lime_points_at_what_the_model_looks_at() -> None:
    image = image_with_a_red_square()
    result = explain(image, redness, 1, ExplainSettings(num_samples=300, top_k=3, seed=2))
    assert result.seed == 2 and result.num_samples == 300
    top = result.top_segments[0]
    inside = (result.segments == top)[16:32, 16:32].mean()
    assert inside > 0.5, "the strongest superpixel must lie on the red square"
    assert result.weights[0][1] > 0
    assert result.score > 0.5


def test_same_seed_same_weights() -> None:
    image = image_with_a_red_square()
    a = explain(image, redness, 1, ExplainSettings(num_samples=100, seed=9))
    b = explain(image, redness, 1, ExplainSettings(num_samples=100, seed=9))
    assert a.weights == b.weights


def test_pictures() -> None:
    image = image_with_a_red_square()
    result = explain(image, redness, 1, ExplainSettings(num_samples=100, seed=1))
    for picture in (render.overlay(image, result), render.mask_image(image, result), render.heatmap(result)):
        assert picture.shape == image.shape and picture.dtype == np.uint8
    heat = render.heatmap(result)
    top = result.segments == result.top_segments[0]
    assert heat[top][0, 0] > heat[top][0, 2], "positive weight is drawn red"
    figure = Image.open(io.BytesIO(render.figure(image, result, "Pro-B ALL 97.3%")))
    assert figure.format == "PNG" and figure.size[0] > figure.size[1]


def test_overlay_tints_against_the_label_blue_and_figures_render_from_threads() -> None:
    image = image_with_a_red_square()
    # Explaining class 0 ("no red tile") with positive_only false: the red tile speaks against it.
    result = explain(
        image, redness, 0, ExplainSettings(num_samples=300, seed=1, top_k=1, positive_only=False)
    )
    weights = dict(result.weights)
    assert weights[result.top_segments[0]] < 0
    out = render.overlay(image, result).astype(int)
    # Inside the tile, off its outline: the image mixed with the palette's "against" colour.
    tinted = (1 - render.TINT) * image[20:28, 20:28] + render.TINT * np.array(palette.AGAINST_LABEL)
    assert np.abs(out[20:28, 20:28] - tinted).max() <= 1
    # The figure draws on its own canvas: several at once from worker threads all come out whole.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        pngs = list(pool.map(lambda i: render.figure(image, result, f"figure {i}"), range(8)))
    sizes = {Image.open(io.BytesIO(p)).size for p in pngs}
    assert len(sizes) == 1 and all(Image.open(io.BytesIO(p)).format == "PNG" for p in pngs)
