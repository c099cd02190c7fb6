"""The one colour language of every explanation picture, and the words that explain it.

Red means "speaks for the label" and blue "speaks against it" everywhere: in the overlay's tint and
outlines, in the heatmap, in the colour bar of the figure and in the legend strip of a stand-alone
heatmap PNG. Every picture takes its colours from here, so two pictures side by side never disagree.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

RGB = tuple[int, int, int]

#: A superpixel whose weight speaks for the explained label (ColorBrewer's RdBu red).
FOR_LABEL: RGB = (202, 0, 32)
#: A superpixel whose weight speaks against the explained label (ColorBrewer's RdBu blue).
AGAINST_LABEL: RGB = (5, 113, 176)
#: The two colours in words, for captions that name them.
FOR_LABEL_NAME, AGAINST_LABEL_NAME = "red", "blue"
#: A weight of zero: white, so that only evidence carries colour.
NEUTRAL: RGB = (255, 255, 255)


def weight_colours(values: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """RGB colours for weights scaled to [-1, 1]: white at 0, ``FOR_LABEL`` at +1, ``AGAINST_LABEL`` at -1,
    linear in between (values outside are clipped). The heatmap and every colour scale use this one map."""
    v = np.clip(np.asarray(values, np.float32), -1.0, 1.0)[..., None]
    white = np.array(NEUTRAL, np.float32)
    pos, neg = np.clip(v, 0.0, 1.0), np.clip(-v, 0.0, 1.0)
    out = white + pos * (np.array(FOR_LABEL, np.float32) - white) + neg * (np.array(AGAINST_LABEL) - white)
    return np.asarray(np.rint(out), np.uint8)


def unit(colour: RGB) -> tuple[float, float, float]:
    """A colour in matplotlib's 0-1 units."""
    return (colour[0] / 255, colour[1] / 255, colour[2] / 255)


def colormap() -> Any:
    """The weight map as a matplotlib colormap for colour bars (``weight_colours`` sampled 256 times)."""
    from matplotlib.colors import ListedColormap  # noqa: PLC0415  (the gateway draws PNGs without it)

    return ListedColormap(weight_colours(np.linspace(-1.0, 1.0, 256)) / 255.0, name="allxai_weights")


def scale_label(label: str, ascii_only: bool = False) -> str:
    """The colour scale's caption: which side is for ``label``; ASCII where the font has no arrows."""
    if ascii_only:
        return f"LIME weight: <- against   0   for {label} ->"
    return f"LIME weight: \u2190 against   0   for {label} \u2192"


def sign_words(label: str) -> tuple[str, str]:
    """The legend entries of the two colours: (for the label, against it)."""
    return f"for {label}", f"against {label}"
