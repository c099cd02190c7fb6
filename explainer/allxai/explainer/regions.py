"""Where an explanation's weight lies: on the cell, on the background, in the corners."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from allxai.contract.cells import locate_cells

CORNER_FRACTION = 0.15
CORNER_COVER = 0.2


def cell_mask(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
    """Every white cell in ``image``, found by the service's one localiser (:mod:`allxai.contract.cells`)."""
    return locate_cells(image).mask


def weight_shares(
    segments: npt.NDArray[np.integer], weights: list[tuple[int, float]], cell: npt.NDArray[np.bool_]
) -> tuple[float, float, float]:
    """(cell, background, corner) shares of the positive weight.

    A superpixel that covers at least ``CORNER_COVER`` of one corner square counts wholly as
    corner: lime cannot tell which of its pixels mattered, and a scale-bar label is often merged
    with the background around it. The others split their weight by the fraction of their pixels
    on the cell and off it.
    """
    h, w = segments.shape[:2]
    n = int(segments.max()) + 1
    flat = segments.ravel()
    size = np.bincount(flat, minlength=n).astype(np.float64)
    in_cell = np.bincount(flat, weights=cell.ravel().astype(np.float64), minlength=n)
    side = max(1, round(min(h, w) * CORNER_FRACTION))
    corner = np.zeros(n, bool)
    for ys in (slice(0, side), slice(h - side, h)):
        for xs in (slice(0, side), slice(w - side, w)):
            cover = np.bincount(segments[ys, xs].ravel(), minlength=n) / float(side * side)
            corner |= cover >= CORNER_COVER
    totals = np.zeros(3)
    for segment, weight in weights:
        if weight <= 0 or size[segment] == 0:
            continue
        if corner[segment]:
            totals[2] += weight
        else:
            c = in_cell[segment] / size[segment]
            totals[:2] += weight * np.array([c, 1.0 - c])
    whole = totals.sum()
    if whole <= 0:
        return 0.0, 0.0, 0.0
    cell_share, background_share, corner_share = (totals / whole).tolist()
    return cell_share, background_share, corner_share
