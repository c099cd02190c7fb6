"""Pictures of an explanation, as the papers draw them, encoded as PNG."""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
from PIL import Image
from skimage.segmentation import find_boundaries, mark_boundaries

from allxai.explainer.result import ExplanationResult


def to_png(image: npt.NDArray[np.uint8]) -> bytes:
    """Encode an ``[H, W, 3]`` uint8 image as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _top_mask(result: ExplanationResult) -> npt.NDArray[np.bool_]:
    return np.isin(result.segments, result.top_segments)


def overlay(image: npt.NDArray[np.uint8], result: ExplanationResult) -> npt.NDArray[np.uint8]:
    """All superpixel boundaries in thin grey; the top superpixels outlined in yellow and tinted
    green when they speak for the label, red when against it (as lime colours them)."""
    base = mark_boundaries(image, result.segments, color=(0.6, 0.6, 0.6), mode="inner")
    out = np.asarray(base * 255, dtype=np.float32)
    weights = dict(result.weights)
    against = [s for s in result.top_segments if weights.get(s, 0.0) < 0]
    negative = np.isin(result.segments, against)
    mask = _top_mask(result)
    positive = mask & ~negative
    out[positive] = 0.7 * out[positive] + 0.3 * np.array([0, 200, 0], np.float32)
    out[negative] = 0.7 * out[negative] + 0.3 * np.array([220, 0, 0], np.float32)
    edge = find_boundaries(mask.astype(np.int32), mode="inner")
    out[edge] = (255, 230, 0)
    return np.clip(out, 0, 255).astype(np.uint8)


def mask_image(image: npt.NDArray[np.uint8], result: ExplanationResult) -> npt.NDArray[np.uint8]:
    """Only the top superpixels visible, the rest greyed out: lime's ``hide_rest`` mask (positive
    only when the explanation was asked for positive superpixels only)."""
    out = np.full_like(image, 127)
    mask = _top_mask(result)
    out[mask] = image[mask]
    return out


def heatmap(result: ExplanationResult) -> npt.NDArray[np.uint8]:
    """Each superpixel coloured by its weight: red for the label, blue against it, white for none.

    The colours are scaled to the largest weight; weights that are only noise (the quality's
    ``no_evidence``) would be blown up to full colour that way, so they give an all-white map."""
    if result.quality is not None and result.quality.no_evidence:
        return np.full((*result.segments.shape, 3), 255, np.uint8)
    table = dict(result.weights)
    scale = max((abs(w) for w in table.values()), default=0.0) or 1.0
    ids = np.arange(int(result.segments.max()) + 1)
    values = np.array([table.get(int(i), 0.0) / scale for i in ids], np.float32)[result.segments]
    out = np.empty((*result.segments.shape, 3), np.float32)
    pos, neg = np.clip(values, 0, 1), np.clip(-values, 0, 1)
    out[..., 0] = 255 * (1 - neg)
    out[..., 1] = 255 * (1 - pos - neg)
    out[..., 2] = 255 * (1 - pos)
    return np.clip(out, 0, 255).astype(np.uint8)


def figure(image: npt.NDArray[np.uint8], result: ExplanationResult, title: str) -> bytes:
    """The three-column figure of paper 2: input, mask, heatmap, as a PNG with titles."""
    # A Figure with its own Agg canvas, not pyplot: pyplot's global state is not safe from the
    # worker threads the gateway renders on.
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(9, 3.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    panels = [
        (image, "input"),
        (overlay(image, result), f"top {len(result.top_segments)} superpixels"),
        (heatmap(result), "weights (red +, blue -)"),
    ]
    for ax, (picture, name) in zip(axes, panels, strict=True):
        ax.imshow(picture)
        ax.set_title(name, fontsize=10)
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()
