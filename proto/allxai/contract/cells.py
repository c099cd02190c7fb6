"""Find the white blood cells in a microscope image, without a model: stain colour and shape only.

Training, serving and the explainer all call :func:`locate_cells`, so it is pure NumPy/SciPy/scikit-image,
deterministic, and fast (a few tens of milliseconds for a 640x480 field; large images are worked on a
downsampled copy whose labels are mapped back to full resolution exactly).

How (on a light background, the usual smear field):

1. White-balance by the background (the brightest mode) and convert to optical density (OD) per channel,
   so the stain, not the lamp or the camera, sets the colour.
2. Nuclei absorb green far more than blue (the azure/haematoxylin of every Romanowsky stain makes them
   violet), while red cells absorb green and blue alike and the background absorbs neither: seed on
   ``OD_green - OD_blue``. This also ignores black or red text such as a scale-bar label.
3. Grow the cytoplasm from each nucleus by a watershed on the OD gradient, within the stained foreground
   and within a few nucleus radii, so the cell stops at its own edge and not at a touching red cell.

On a black background (segmented sets: C-NMC, Aria Segmented) every large non-black blob is a cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image
from scipy import ndimage as ndi
from skimage.filters import sobel
from skimage.segmentation import watershed

__all__ = ["CellMap", "WhiteCell", "locate_cells"]

#: Images whose longest side exceeds this are worked on a downsampled copy (speed is bounded).
WORK_SIDE = 640

# A pixel this dark in every channel counts as black background (JPEG noise on black reaches ~20).
_BLACK_LEVEL = 30
# A segmented image is at least this share black.
_BLACK_SHARE = 0.3
# The least nucleus contrast (OD_green - OD_blue) that can be a stained nucleus: Aria's palest (Pro)
# nuclei sit near 0.27 and red cells below 0.2 in every set we have.
_MIN_NUCLEUS_SCORE = 0.22
# Foreground: total OD above this is not background (background noise stays below ~0.1).
_MIN_FOREGROUND_OD = 0.15
# A kept nucleus is at least this share of the largest one (drops platelets and stain debris).
_MIN_SHARE_OF_LARGEST = 0.12
# The cytoplasm reaches at most this many nucleus radii beyond the nucleus.
_CYTOPLASM_REACH = 0.9


@dataclass(frozen=True)
class WhiteCell:
    """One white cell: its box, centre and area, in the pixels of the image given."""

    box: tuple[int, int, int, int]  # top, left, bottom, right (bottom/right exclusive)
    centre: tuple[float, float]  # row, col: the centroid of its mask
    area: int  # pixels in its mask

    @property
    def diameter(self) -> float:
        """The equivalent diameter: that of a disc with the cell's area."""
        return float(2.0 * np.sqrt(self.area / np.pi))


@dataclass(frozen=True)
class CellMap:
    """Every white cell found in an image, at the image's own resolution."""

    mask: npt.NDArray[np.bool_]  # [H, W] every white cell, nucleus and cytoplasm
    labels: npt.NDArray[np.int32]  # [H, W] 0 = not a white cell, i = cells[i - 1]
    cells: tuple[WhiteCell, ...]  # largest first
    black_background: bool  # cells on a (near-)black background: a segmented image


def _empty(height: int, width: int, black: bool) -> CellMap:
    return CellMap(
        mask=np.zeros((height, width), bool),
        labels=np.zeros((height, width), np.int32),
        cells=(),
        black_background=black,
    )


def _downsample(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    height, width = image.shape[:2]
    side = max(height, width)
    if side <= WORK_SIDE:
        return image
    scale = WORK_SIDE / side
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # BOX averages every source pixel once: fast, and no aliasing of the stain texture.
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))


def optical_density(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """Per-channel optical density against the background (the brightest mode), >= 0, shape [H, W, 3]."""
    rgb = image.astype(np.float32)
    lum = rgb.sum(axis=2)
    # The background is the brightest quarter's median colour: a smear field is mostly background and
    # pale red cells, and the quarter keeps one bright specular spot from setting the white point.
    bright = lum >= np.percentile(lum, 75)
    white = np.median(rgb[bright], axis=0) + 1.0
    ratio = np.clip((rgb + 1.0) / white, 1e-3, 1.0)
    return np.asarray(-np.log(ratio), dtype=np.float32)


def _is_black_background(image: npt.NDArray[np.uint8]) -> bool:
    black = (image.max(axis=2) < _BLACK_LEVEL).mean()
    return bool(black >= _BLACK_SHARE)


def _keep_large(labels: npt.NDArray[np.int32], count: int, min_area: float) -> npt.NDArray[np.int32]:
    """Relabel 1..k the components of at least ``min_area`` and ``_MIN_SHARE_OF_LARGEST`` of the largest."""
    if count == 0:
        return labels
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    floor = max(min_area, _MIN_SHARE_OF_LARGEST * float(areas.max()))
    keep = np.flatnonzero(areas >= floor) + 1
    lut = np.zeros(count + 1, np.int32)
    lut[keep] = np.arange(1, keep.size + 1, dtype=np.int32)
    return lut[labels]


def _segmented_cells(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.int32]:
    """Cells on black: the large non-black blobs, holes filled."""
    fg = image.max(axis=2) >= _BLACK_LEVEL
    fg = ndi.binary_opening(fg, iterations=1)
    fg = ndi.binary_fill_holes(fg)
    labels, count = ndi.label(fg)
    # Speckle on red-cell edges is a few dozen pixels; a cell is at least 0.3% of a field.
    return _keep_large(labels.astype(np.int32), count, 0.003 * fg.size)


def _smear_cells(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.int32]:
    """Cells on a light background: seed on nuclei, grow the cytoplasm by watershed."""
    od = optical_density(image)
    score = od[..., 1] - od[..., 2]
    total = od.sum(axis=2)
    strong = score[score > _MIN_NUCLEUS_SCORE]
    if strong.size < 16:
        return np.zeros(image.shape[:2], np.int32)
    # Otsu between pale and deep nucleus pixels would cut nuclei in half: take the floor, lifted only when
    # red cells themselves score high (a bluish stain), judged from the bulk of the foreground.
    fg = total > _MIN_FOREGROUND_OD
    bulk = float(np.percentile(score[fg], 75)) if fg.any() else 0.0
    threshold = max(_MIN_NUCLEUS_SCORE, bulk + 0.1)
    nuclei = ndi.binary_opening(score > threshold, iterations=1)
    # Lobes of one nucleus (neutrophils) are joined by a closing, holes filled.
    nuclei = ndi.binary_closing(nuclei, iterations=2)
    nuclei = ndi.binary_fill_holes(nuclei)
    labels, count = ndi.label(nuclei)
    labels = _keep_large(labels.astype(np.int32), count, max(6.0, 0.0004 * nuclei.size))
    count = int(labels.max())
    if count == 0:
        return labels
    # Each pixel's nearest nucleus and its distance; the cytoplasm may reach a share of that nucleus's radius.
    dist, (rows, cols) = ndi.distance_transform_edt(labels == 0, return_indices=True)
    nearest = labels[rows, cols]
    areas = np.bincount(labels.ravel(), minlength=count + 1).astype(np.float32)
    radius = np.sqrt(areas / np.pi)
    reach = _CYTOPLASM_REACH * radius[nearest] + 2.0
    allowed = (fg & (dist <= reach)) | (labels > 0)
    markers = labels.copy()
    # Background marker: unstained pixels next to the allowed zone, so the watershed has a rival.
    markers[~fg & (dist > 1)] = count + 1
    gradient = sobel(total)
    grown = watershed(gradient, markers, mask=allowed | ~fg)
    grown[grown == count + 1] = 0
    grown = grown.astype(np.int32)
    out = np.zeros(grown.shape, np.int32)
    for index, slc in enumerate(ndi.find_objects(grown), start=1):
        if slc is None:
            continue
        filled = ndi.binary_fill_holes(grown[slc] == index)
        out[slc][filled & (out[slc] == 0)] = index
    return out


def _full_resolution(small: npt.NDArray[np.int32], height: int, width: int) -> CellMap:
    """Map work-resolution labels to full resolution (nearest), with exact areas, centroids and boxes."""
    h, w = small.shape
    rows = (np.arange(height) * h // height).astype(np.intp)
    cols = (np.arange(width) * w // width).astype(np.intp)
    row_count = np.bincount(rows, minlength=h).astype(np.float64)
    col_count = np.bincount(cols, minlength=w).astype(np.float64)
    row_sum = np.bincount(rows, weights=np.arange(height, dtype=np.float64), minlength=h)
    col_sum = np.bincount(cols, weights=np.arange(width, dtype=np.float64), minlength=w)
    first_row = np.searchsorted(rows, np.arange(h))
    first_col = np.searchsorted(cols, np.arange(w))
    last_row = np.searchsorted(rows, np.arange(h), side="right")
    last_col = np.searchsorted(cols, np.arange(w), side="right")
    found: list[tuple[int, WhiteCell]] = []
    for index, slc in enumerate(ndi.find_objects(small), start=1):
        if slc is None:
            continue
        r, c = np.nonzero(small[slc] == index)
        r = r + slc[0].start
        c = c + slc[1].start
        weight = row_count[r] * col_count[c]
        area = int(np.rint(weight.sum()))
        if area == 0:
            continue
        centre = (
            float((row_sum[r] * col_count[c]).sum() / area),
            float((col_sum[c] * row_count[r]).sum() / area),
        )
        box = (
            int(first_row[r.min()]),
            int(first_col[c.min()]),
            int(last_row[r.max()]),
            int(last_col[c.max()]),
        )
        found.append((index, WhiteCell(box=box, centre=centre, area=area)))
    # Largest first; ties by position, so the order is deterministic.
    found.sort(key=lambda item: (-item[1].area, item[1].centre))
    lut = np.zeros(int(small.max()) + 1, np.int32)
    for rank, (index, _) in enumerate(found, start=1):
        lut[index] = rank
    labels = lut[small][rows][:, cols]
    return CellMap(
        mask=labels > 0,
        labels=labels,
        cells=tuple(cell for _, cell in found),
        black_background=False,
    )


def locate_cells(image: npt.NDArray[np.uint8]) -> CellMap:
    """Find every white cell (nucleus and cytoplasm) in an RGB uint8 image ``[H, W, 3]``.

    Returns no cells for images with none (uniform, noise, a natural photo, mostly), and never raises on
    a valid image. ``black_background`` says the image is a segmented one (cells on black).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image [H, W, 3], got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    work = _downsample(np.ascontiguousarray(image))
    black = _is_black_background(work)
    if min(height, width) < 8:
        return _empty(height, width, black)
    small = _segmented_cells(work) if black else _smear_cells(work)
    result = _full_resolution(small, height, width)
    return CellMap(mask=result.mask, labels=result.labels, cells=result.cells, black_background=black)
