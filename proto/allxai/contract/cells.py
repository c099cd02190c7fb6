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
3. Grow each nucleus into its cytoplasm, within about a nucleus radius: a pixel joins when its colour
   (OD chromaticity and density) is nearer the cytoplasm's, read from a ring just outside the nucleus,
   than the red cells' (read far from every nucleus) and the background's; thin tendrils are cut.

On a black background (segmented sets: C-NMC, Aria Segmented) every large non-black blob is a cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image
from scipy import ndimage as ndi

__all__ = ["CellMap", "WhiteCell", "locate_cells"]

#: Images whose longest side exceeds this are worked on a downsampled copy (speed is bounded).
WORK_SIDE = 640

# A segmented image is at least 30% pixels this dark in every channel (JPEG noise on black reaches ~20).
_BLACK_LEVEL, _BLACK_SHARE = 30, 0.3
# The least nucleus contrast (OD_green - OD_blue) that can be a stained nucleus: Aria's palest (Pro)
# nuclei sit near 0.27 and red cells below 0.2 in every set we have.
_MIN_NUCLEUS_SCORE = 0.22
# Foreground: total OD above this is not background (background noise stays below ~0.1).
_MIN_FOREGROUND_OD = 0.15
# A kept nucleus is at least this share of the largest one (drops platelets and stain debris).
_MIN_SHARE_OF_LARGEST = 0.06
# The cytoplasm reaches at most this many nucleus radii beyond the nucleus, and is stained: smoothed total
# OD above _CYTOPLASM_OD (pale cytoplasm reaches ~0.15, background noise stays below 0.06).
_CYTOPLASM_REACH, _CYTOPLASM_OD = 1.2, 0.08


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
    # The background is the brightest quarter's median colour: a smear field is mostly background and
    # pale red cells, and the quarter keeps one bright specular spot from setting the white point.
    # Every 4th pixel each way is plenty for a median, and 16 times cheaper.
    sample = rgb[::4, ::4].reshape(-1, 3)
    lum = sample.sum(axis=1)
    white = np.median(sample[lum >= np.percentile(lum, 75)], axis=0) + 1.0
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
    """Cells on a light background: seed on nuclei, grow each into its cytoplasm."""
    od = optical_density(image)
    score = od[..., 1] - od[..., 2]
    total = od.sum(axis=2)
    if (score > _MIN_NUCLEUS_SCORE).sum() < 16:
        return np.zeros(image.shape[:2], np.int32)
    # Otsu between pale and deep nucleus pixels would cut nuclei in half: take the floor, lifted only when
    # red cells themselves score high (a bluish stain), judged from the foreground's lower third (in a
    # field mostly red cells, in a single-cell crop the cytoplasm; never the nucleus).
    fg = total > _MIN_FOREGROUND_OD
    bulk = float(np.percentile(score[fg], 30)) if fg.any() else 0.0
    # Red cells tinted violet (Aria Pre) reach half the deepest nucleus's score: stay above that half,
    # capped so that a very dark nucleus (wbc-seg dataset1) does not lift the bar over its own pale lobes.
    deepest = float(np.percentile(score, 99.5))
    threshold = max(_MIN_NUCLEUS_SCORE, bulk + 0.1, min(0.5 * deepest, 0.6))
    nuclei = ndi.binary_opening(score > threshold, iterations=1)
    # Lobes of one nucleus (neutrophils) are joined by a closing, holes filled.
    nuclei = ndi.binary_closing(nuclei, iterations=2)
    nuclei = ndi.binary_fill_holes(nuclei)
    labels, count = ndi.label(nuclei)
    labels = _keep_large(labels.astype(np.int32), count, max(6.0, 0.0004 * nuclei.size))
    count = int(labels.max())
    if count == 0:
        return labels
    # Fragments of one nucleus (lobes, or a nucleus cut by a pale streak) lie closer to each other than
    # to another cell's: group nuclei within a fraction of their typical radius into one cell.
    typical = float(np.sqrt(np.median(np.bincount(labels.ravel())[1:]) / np.pi))
    groups, _ = ndi.label(ndi.binary_dilation(labels > 0, iterations=max(1, round(0.25 * typical))))
    labels = np.where(labels > 0, groups, 0).astype(np.int32)
    smooth = ndi.uniform_filter(od, size=(5, 5, 1))
    density = smooth.sum(axis=2)
    fg = density > _CYTOPLASM_OD
    # Cytoplasm and red cells are often equally dense; they differ in hue (cytoplasm absorbs less blue than
    # eosin-stained red cells). Compare colours by chromaticity, with density as a weaker third term.
    smooth = np.concatenate(
        [
            smooth[..., :1] / (density[..., None] + 0.05),
            smooth[..., 2:] / (density[..., None] + 0.05),
            0.1 * np.log(density[..., None] + 0.05),
        ],
        axis=2,
    ).astype(np.float32)
    near = ndi.distance_transform_edt(labels == 0) <= (_CYTOPLASM_REACH + 0.2) * typical + 2.0
    # Red cells' typical colour: stained pixels far from every nucleus (none: a crop of one white cell).
    far = fg & ~near
    red = np.median(smooth[far], axis=0) if far.sum() >= 50 else None
    background = np.median(smooth[~fg], axis=0) if (~fg).sum() >= 50 else None
    out = np.zeros(labels.shape, np.int32)
    for index, slc in enumerate(ndi.find_objects(labels), start=1):
        if slc is not None:
            _grow(index, slc, labels, smooth, fg, (red, background), out)
    return out


def _disc(radius: int) -> npt.NDArray[np.bool_]:
    r = np.arange(-radius, radius + 1)
    return np.asarray(r[:, None] ** 2 + r[None, :] ** 2 <= radius**2 + radius)


def _grow(
    index: int,
    slc: tuple[slice, ...],
    labels: npt.NDArray[np.int32],
    od: npt.NDArray[np.float32],
    fg: npt.NDArray[np.bool_],
    rivals: tuple[npt.NDArray[np.float32] | None, ...],
    out: npt.NDArray[np.int32],
) -> None:
    """Grow nucleus ``index`` into its cytoplasm, writing the cell into ``out`` (first come, first kept).

    The cytoplasm's colour is read from a thin ring just outside the nucleus; a pixel within reach joins
    the cell when its colour is nearer that than the red cells' and the background's (OD 0), and it
    connects to the nucleus.
    """
    height, width = labels.shape
    nucleus_rows = slc[0].stop - slc[0].start
    nucleus_cols = slc[1].stop - slc[1].start
    area = float((labels[slc] == index).sum())
    radius = max(np.sqrt(area / np.pi), 0.35 * max(nucleus_rows, nucleus_cols))
    reach = _CYTOPLASM_REACH * radius + 2.0
    pad = int(np.ceil(reach)) + 1
    top, left = max(0, slc[0].start - pad), max(0, slc[1].start - pad)
    bottom, right = min(height, slc[0].stop + pad), min(width, slc[1].stop + pad)
    crop = (slice(top, bottom), slice(left, right))
    nucleus = labels[crop] == index
    dist = ndi.distance_transform_edt(~nucleus)
    zone = (dist <= reach) & (labels[crop] == 0) & (out[crop] == 0) & fg[crop]
    colours = od[crop]
    ring = zone & (dist >= 2.0) & (dist <= max(4.0, 0.4 * radius))
    cell = nucleus.copy()
    if ring.sum() >= 4:
        cytoplasm = np.median(colours[ring], axis=0)
        to_cyto = np.linalg.norm(colours - cytoplasm, axis=2)
        # Stained (above the background's noise), and nearer the cytoplasm's colour than the red cells'.
        joins = zone
        for rival in rivals:
            if rival is None:
                continue
            # A ring that looks like the rival (a thin rim of cytoplasm: the ring saw red cells or
            # background) gives no colour to grow by: the cell is the nucleus and its rim.
            if np.linalg.norm(cytoplasm - rival) < 0.08:
                joins = zone & (dist <= 2.0)
                break
            joins &= to_cyto < np.linalg.norm(colours - rival, axis=2)
        # Cut thin tendrils along touching red cells: a cell's cytoplasm is a solid rim.
        opened = ndi.binary_opening(joins | nucleus, structure=_disc(max(1, round(0.15 * radius))))
        candidates = opened | nucleus
        grown, _ = ndi.label(candidates)
        keep = np.unique(grown[nucleus])
        cell = np.isin(grown, keep[keep > 0])
    cell = ndi.binary_fill_holes(cell)
    view = out[crop]
    view[cell & (view == 0)] = index


def _full_resolution(small: npt.NDArray[np.int32], height: int, width: int, black: bool) -> CellMap:
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
        r, c = r + slc[0].start, c + slc[1].start
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
    return CellMap(mask=labels > 0, labels=labels, cells=tuple(c for _, c in found), black_background=black)


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
        return _full_resolution(np.zeros((1, 1), np.int32), height, width, black)
    small = _segmented_cells(work) if black else _smear_cells(work)
    return _full_resolution(small, height, width, black)
