"""Estimate an image's scale (micrometres per pixel) from the cells in it, without metadata.

Red cells are the body's own ruler: about 7.5-8 µm across in every laboratory, many in a field, and
round. Their radius is read from the distance transform of the red-cell mask (stained foreground that is
not a white cell, holes filled for their pale centres): the peak distance inside a cell is its radius,
even where red cells touch in chains. Overlapping clumps read larger than one cell, so a field of
clumped red cells (Aria) reads too large a diameter, i.e. too few µm per pixel (measured: scripts/
localiser_eval.py). Where no red cell shows (a segmented cell on black, a crop of one
white cell), the white cells' own size gives a rougher estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from PIL import Image
from scipy import ndimage as ndi

from allxai.contract.cells import WORK_SIDE, CellMap, optical_density

__all__ = ["RED_CELL_UM", "WHITE_CELL_UM", "ScaleEstimate", "estimate_scale"]

#: A red cell's diameter: about 7.5-8 µm in every laboratory.
RED_CELL_UM: float = 7.75
#: A typical white cell's diameter, used only when no red cell shows. In a normal differential most white
#: cells are neutrophils (12-15 µm) and lymphocytes (7-15 µm, most 8-10 µm); blasts are 10-18 µm. 12 µm
#: sits near the middle of all of them, so the error is within about ±30% for any one cell type.
WHITE_CELL_UM: float = 12.0

# Stained foreground: total OD above this (background noise stays below ~0.1).
_MIN_FOREGROUND_OD = 0.2
# A red cell is at least this many pixels in radius at the work resolution (below: noise, not cells).
_MIN_RADIUS = 2.0


@dataclass(frozen=True)
class ScaleEstimate:
    """Micrometres per pixel of the image as given, what it rests on, and on how many cells."""

    um_per_px: float
    source: Literal["red_cells", "white_cell"]
    count: int


def _red_cell_radii(image: npt.NDArray[np.uint8], cells: CellMap) -> npt.NDArray[np.float64]:
    """Each red-cell-like blob's inscribed radius, in pixels of ``image`` (possibly after downsampling)."""
    od = optical_density(image)
    fg = od.sum(axis=2) > _MIN_FOREGROUND_OD
    white = cells.mask
    if white.shape != fg.shape:
        white = np.asarray(Image.fromarray(white).resize(fg.shape[::-1], Image.Resampling.NEAREST))
    # Keep well clear of white cells: their cytoplasm's edge would pass for a red cell.
    red = fg & ~ndi.binary_dilation(white, iterations=2)
    red = ndi.binary_fill_holes(ndi.binary_opening(red, iterations=1))
    dist = ndi.distance_transform_edt(red)
    labels, count = ndi.label(red)
    if count == 0:
        return np.zeros(0)
    peaks = np.asarray(ndi.maximum(dist, labels, np.arange(1, count + 1)), dtype=np.float64)
    height, width = red.shape
    # Speckle and slivers between cells peak far below a red cell's radius; a blob cut by the border keeps
    # its full peak as long as the border does not cross its centre, so border blobs count too.
    keep = (peaks >= _MIN_RADIUS) & (peaks <= 0.25 * min(height, width))
    if keep.any():
        keep &= peaks >= 0.4 * peaks[keep].max()
    return np.asarray(peaks[keep], dtype=np.float64)


def estimate_scale(image: npt.NDArray[np.uint8], cells: CellMap) -> ScaleEstimate | None:
    """The scale of ``image`` from its red cells, else from the white cells in ``cells``; None if neither.

    ``cells`` is :func:`allxai.contract.cells.locate_cells` of the same image.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image [H, W, 3], got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    if min(height, width) >= 8 and not cells.black_background:
        side = max(height, width)
        factor = 1.0
        work = image
        if side > WORK_SIDE:
            factor = side / WORK_SIDE
            size = (max(1, round(width / factor)), max(1, round(height / factor)))
            work = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))
        radii = _red_cell_radii(work, cells)
        if radii.size >= 3:
            # The distance transform's peak sits half a pixel inside the edge on each side.
            diameter = (2.0 * float(np.median(radii)) + 1.0) * factor
            return ScaleEstimate(um_per_px=RED_CELL_UM / diameter, source="red_cells", count=int(radii.size))
    if cells.cells:
        diameter = float(np.median([cell.diameter for cell in cells.cells]))
        if diameter > 0:
            return ScaleEstimate(
                um_per_px=WHITE_CELL_UM / diameter, source="white_cell", count=len(cells.cells)
            )
    return None
