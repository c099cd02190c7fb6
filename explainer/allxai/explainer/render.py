"""Pictures of an explanation, as the papers draw them, encoded as PNG.

Every picture speaks the colour language of :mod:`allxai.explainer.palette`: red for the label, blue
against it. A picture that leaves the gateway on its own (the heatmap a LIS files) carries its own
legend, since nothing beside it in the LIS says what its colours mean.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont
from skimage.segmentation import find_boundaries, mark_boundaries

from allxai.explainer.palette import (
    AGAINST_LABEL,
    FOR_LABEL,
    colormap,
    scale_label,
    sign_words,
    unit,
    weight_colours,
)
from allxai.explainer.result import ExplanationResult

#: Share of the sign's colour mixed into a top superpixel of the overlay: enough to see, little enough
#: that the stain's own colours (what a reader checks the superpixel against) stay visible.
TINT = 0.35
#: A legend strip's text needs room: a narrower heatmap is enlarged (whole pixels) to at least this width.
LEGEND_MIN_WIDTH = 256


def to_png(image: npt.NDArray[np.uint8]) -> bytes:
    """Encode an ``[H, W, 3]`` uint8 image as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _top_mask(result: ExplanationResult) -> npt.NDArray[np.bool_]:
    return np.isin(result.segments, result.top_segments)


def outline(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """The inner boundary pixels of ``mask``, the image's edge included where the mask touches it.

    ``find_boundaries`` compares a pixel only with its neighbours inside the image, so a region cut by
    the border would stay open there; a frame of background around the mask closes it."""
    padded = np.pad(mask, 1, constant_values=False)
    return np.asarray(find_boundaries(padded.astype(np.int32), mode="inner")[1:-1, 1:-1], np.bool_)


def overlay(image: npt.NDArray[np.uint8], result: ExplanationResult) -> npt.NDArray[np.uint8]:
    """All superpixel boundaries in thin grey; each top superpixel tinted and outlined in its sign's
    colour (``FOR_LABEL`` when it speaks for the label, ``AGAINST_LABEL`` when against it)."""
    base = mark_boundaries(image, result.segments, color=(0.6, 0.6, 0.6), mode="inner")
    out = np.asarray(base * 255, dtype=np.float32)
    weights = dict(result.weights)
    against = np.isin(result.segments, [s for s in result.top_segments if weights.get(s, 0.0) < 0])
    towards = _top_mask(result) & ~against
    for region, colour in ((towards, FOR_LABEL), (against, AGAINST_LABEL)):
        out[region] = (1 - TINT) * out[region] + TINT * np.array(colour, np.float32)
    # Outlined one superpixel at a time: two neighbours of one sign keep the line between them.
    for segment in result.top_segments:
        colour = AGAINST_LABEL if weights.get(segment, 0.0) < 0 else FOR_LABEL
        out[outline(result.segments == segment)] = colour
    return np.clip(out, 0, 255).astype(np.uint8)


def mask_image(image: npt.NDArray[np.uint8], result: ExplanationResult) -> npt.NDArray[np.uint8]:
    """Only the top superpixels visible, the rest greyed out: lime's ``hide_rest`` mask (positive
    only when the explanation was asked for positive superpixels only)."""
    out = np.full_like(image, 127)
    mask = _top_mask(result)
    out[mask] = image[mask]
    return out


def weight_scale(result: ExplanationResult) -> float:
    """The weight drawn at full colour: the largest absolute weight (1 when there is none)."""
    return max((abs(w) for _, w in result.weights), default=0.0) or 1.0


def heatmap(result: ExplanationResult) -> npt.NDArray[np.uint8]:
    """Each superpixel coloured by its weight (``palette.weight_colours``): red for the label, blue
    against it, white for none; the image's size, without a legend.

    The colours are scaled to the largest weight; weights that are only noise (the quality's
    ``no_evidence``) would be blown up to full colour that way, so they give an all-white map."""
    if result.quality is not None and result.quality.no_evidence:
        return np.full((*result.segments.shape, 3), 255, np.uint8)
    table = dict(result.weights)
    scale = weight_scale(result)
    ids = np.arange(int(result.segments.max()) + 1)
    values = np.array([table.get(int(i), 0.0) / scale for i in ids], np.float32)[result.segments]
    return weight_colours(values)


def heatmap_with_legend(result: ExplanationResult, label: str) -> npt.NDArray[np.uint8]:
    """The heatmap with a legend strip under it (the colour scale, which side is for ``label``, and the
    weight at full colour), for a heatmap PNG that is read on its own. A map without evidence stays the
    plain white map: there is no colour to explain."""
    plain = heatmap(result)
    if result.quality is not None and result.quality.no_evidence:
        return plain
    factor = -(-LEGEND_MIN_WIDTH // plain.shape[1])  # whole pixels: superpixel edges stay sharp
    if factor > 1:
        plain = plain.repeat(factor, axis=0).repeat(factor, axis=1)
    width = plain.shape[1]
    font = ImageFont.load_default(size=11)
    strip = Image.new("RGB", (width, 46), "white")
    draw = ImageDraw.Draw(strip)
    # The default font has no arrows and no minus sign: ASCII words carry the meaning.
    draw.text((4, 1), f"LIME weight, +/-{weight_scale(result):.3g} at full colour", fill="black", font=font)
    bar = weight_colours(np.linspace(-1.0, 1.0, width - 8))[None].repeat(10, axis=0)
    strip.paste(Image.fromarray(np.ascontiguousarray(bar)), (4, 16))
    draw.rectangle((3, 15, width - 4, 26), outline=(90, 90, 90))
    draw.text((width // 2, 28), "0", fill="black", font=font, anchor="ma")
    against, towards = "<- against", f"for {label} ->"
    draw.text((4, 28), against, fill=AGAINST_LABEL, font=font)
    draw.text((width - 4, 28), towards, fill=FOR_LABEL, font=font, anchor="ra")
    return np.concatenate([plain, np.asarray(strip, np.uint8)], axis=0)


def figure(
    image: npt.NDArray[np.uint8], result: ExplanationResult, title: str, label: str = "the label"
) -> bytes:
    """The three-column figure of paper 2 (:func:`build_figure`) as a PNG."""
    buffer = io.BytesIO()
    build_figure(image, result, title, label).savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def build_figure(image: npt.NDArray[np.uint8], result: ExplanationResult, title: str, label: str) -> Any:
    """Input, top superpixels with the legend of their colours, heatmap with its colour bar.

    ``label`` is the explained class as a reader knows it (the model card's display name); the
    legend and the colour bar name it, so the figure explains itself. A matplotlib ``Figure``."""
    # A Figure with its own Agg canvas, not pyplot: pyplot's global state is not safe from the
    # worker threads the gateway renders on.
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(9, 3.9))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    panels = [
        (image, "input"),
        (overlay(image, result), f"top {len(result.top_segments)} superpixels"),
        (heatmap(result), "LIME weight of each superpixel"),
    ]
    for ax, (picture, name) in zip(axes, panels, strict=True):
        ax.imshow(picture)
        ax.set_title(name, fontsize=10)
        ax.axis("off")
    _sign_legend(axes[1], label)
    _colour_bar(fig, axes[2], result, label)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def _sign_legend(ax: Any, label: str) -> None:
    """What the overlay's two colours mean, under its panel."""
    from matplotlib.patches import Patch  # noqa: PLC0415

    towards, against = sign_words(label)
    handles = [
        Patch(facecolor=unit(FOR_LABEL), label=towards),
        Patch(facecolor=unit(AGAINST_LABEL), label=against),
    ]
    ax.legend(
        handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=1, fontsize=8, frameon=False
    )


def _colour_bar(fig: Any, ax: Any, result: ExplanationResult, label: str) -> None:
    """The heatmap's colour scale under its panel: symmetric around 0, in the weights' own units."""
    from matplotlib.cm import ScalarMappable  # noqa: PLC0415
    from matplotlib.colors import Normalize  # noqa: PLC0415

    scale = weight_scale(result)
    mappable = ScalarMappable(norm=Normalize(-scale, scale), cmap=colormap())
    bar = fig.colorbar(mappable, ax=ax, orientation="horizontal", fraction=0.06, pad=0.04)
    bar.set_ticks([-scale, 0.0, scale])
    bar.ax.set_xticklabels([f"\u2212{scale:.3g}", "0", f"+{scale:.3g}"], fontsize=8)
    caption = scale_label(label)
    if result.quality is not None and result.quality.no_evidence:
        caption += "\n(no evidence: every weight is noise, so the map stays white)"
    bar.set_label(caption, fontsize=8)
