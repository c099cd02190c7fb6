"""The model's input, made one way for training and serving: the whole field, or a crop around a white cell.

A field model (its card has no ``cell_input``) sees the whole image resized to its input size, as the
first models did. A cell-centred model sees, for each white cell the localiser finds:

1. the field's scale estimated (µm per pixel, from its red cells or else from the white cell);
2. a square of ``field_um`` micrometres around the cell, cut at the image's own resolution (padded with
   black past the image's edge);
3. its stain mapped onto the training stain (Reinhard, with the whole field's statistics);
4. everything farther than ``margin_um`` from that cell's mask blanked to black, so red cells, the
   background, other white cells, the corners and any scale-bar label are gone;
5. resized to the view (the crop's own resolution, at most ``view_max``, at least the input size and
   ``view_min``), and the view resized to the model's input: the explanation segments and draws the view
   (the blanked surround as one superpixel of its own), and the model's input is always made from it, so
   both see the same picture.

A field with several white cells gives one crop per cell. Training uses them all, each with the field's
label; serving answers one image with the crop of its largest white cell (the answer says how many it
found and which part of the image it classified). An image with no white cell is not refused here: it
gets the field's centre square, and a domain note that sends it to the domain check as outside.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from allxai.contract import stain
from allxai.contract.cellrecipe import SCALE_SLACK, CellRecipe, StainTarget
from allxai.contract.cells import CellMap, WhiteCell, locate_cells
from allxai.contract.preprocessing import ImageLimits, UInt8Image, decode_image, resize_image
from allxai.contract.scale import ScaleEstimate, estimate_scale

Box = tuple[int, int, int, int]

#: In words, for the model card of a cell-centred model.
DESCRIPTION = (
    "decode as for field models; find the white cells (allxai.contract.cells) and the scale (red cells about "
    "7.75 µm, else the white cell); cut a square of cell_input.field_um µm around the largest white cell at "
    "the image's own resolution; Reinhard stain normalisation to cell_input.stain; blank (black) everything "
    "farther than cell_input.margin_um from that cell; resize to the view (at most cell_input.view_max px) "
    "and the view to the input size, bilinear (Pillow); uint8 into the graph"
)

#: The note of an image in which the localiser found no white cell.
NO_CELL = "no white cell was found in the image"
#: Images finer than the training scale by more than this factor are more likely a wrong estimate than
#: a real microscope (the range covers x40 to x100 objectives on common cameras).
_FINEST = 16.0


@dataclass(frozen=True)
class Prepared:
    """One input for the model, with what was found on the way."""

    #: ``[h, w, 3]`` uint8: what the model classifies.
    input: UInt8Image
    #: The same picture at the view's resolution: what explanations segment and draw.
    view: UInt8Image
    #: White-cell pixels in the view (the classified cell; every white cell for field models).
    cell_mask: npt.NDArray[np.bool_]
    #: The image's scale, if anything in it could be measured.
    scale: ScaleEstimate | None
    #: White cells found in the whole image.
    white_cells: int
    #: The part of the image the input shows, in its own pixels (top, left, bottom, right).
    region: Box
    #: Reasons to count the image outside the training domain, in words.
    notes: tuple[str, ...] = ()
    #: The classified cell's (a field's largest cell's) diameter in µm, where a scale was measured.
    cell_diameter_um: float | None = None
    #: Pixels of the view blanked by the recipe (holding no image); None when nothing was blanked.
    blank: npt.NDArray[np.bool_] | None = None


def field_view(image: UInt8Image, size: tuple[int, int], locate: bool = True) -> Prepared:
    """A field model's input: the whole image resized (the view is the input, as the model was trained).

    ``locate`` finds the white cells and the scale for the answer's report and the explanation's quality
    figures; training leaves it off, since a field model's input does not depend on them.
    """
    model_input = resize_image(image, size)
    h, w = image.shape[:2]
    if not locate:
        empty = np.zeros(model_input.shape[:2], bool)
        return Prepared(model_input, model_input, empty, None, 0, (0, 0, h, w))
    found = locate_cells(image)
    scale = estimate_scale(image, found)
    mask = _resize_mask(found.mask, model_input.shape[:2])
    diameter = found.cells[0].diameter * scale.um_per_px if found.cells and scale else None
    return Prepared(model_input, model_input, mask, scale, len(found.cells), (0, 0, h, w), (), diameter)


def cell_views(
    image: UInt8Image,
    size: tuple[int, int],
    recipe: CellRecipe,
    limit: int | None = None,
    found: CellMap | None = None,
) -> list[Prepared]:
    """One input per white cell, largest first (at most ``limit``); the centre square when none is found."""
    found = found if found is not None else locate_cells(image)
    scale = estimate_scale(image, found)
    source = stain.lab_stats(image) if recipe.stain is not None else None
    if not found.cells or scale is None:
        return [_centre(image, size, recipe, source, scale, len(found.cells))]
    out = []
    for index, cell in enumerate(found.cells[:limit] if limit else found.cells, start=1):
        out.append(_crop(image, size, recipe, source, scale, found, index, cell))
    return out


def prepare(
    data: bytes, size: tuple[int, int], recipe: CellRecipe | None, limits: ImageLimits | None = None
) -> Prepared:
    """Encoded bytes to the one input the gateway classifies: the field, or its largest white cell.

    Raises :class:`~allxai.contract.preprocessing.ImageError` for bytes it cannot use.
    """
    return prepare_array(decode_image(data, limits), size, recipe)


def prepare_array(image: UInt8Image, size: tuple[int, int], recipe: CellRecipe | None) -> Prepared:
    """:func:`prepare` for a decoded ``[H, W, 3]`` uint8 image."""
    if recipe is None:
        return field_view(image, size)
    return cell_views(image, size, recipe, limit=1)[0]


def _crop(
    image: UInt8Image,
    size: tuple[int, int],
    recipe: CellRecipe,
    source: StainTarget | None,
    scale: ScaleEstimate,
    found: CellMap,
    index: int,
    cell: WhiteCell,
) -> Prepared:
    side = max(2, round(recipe.field_um / scale.um_per_px))
    top = round(cell.centre[0] - side / 2)
    left = round(cell.centre[1] - side / 2)
    region = (top, left, top + side, left + side)
    # Resized to the view first: what follows runs on at most view_max² pixels, whatever the image's size.
    edge = _view_size(side, size, recipe)
    view = resize_image(_cut(image, region), edge)
    own = _resize_mask(_cut_labels(found.labels, region) == index, edge)
    margin = recipe.margin_um / scale.um_per_px * edge[0] / side  # in view pixels
    # Distance to the cell's own mask: keep what lies within the margin.
    keep = ndimage.distance_transform_edt(~own) <= margin if own.any() else np.ones_like(own)
    if recipe.stain is not None:
        view = _normalised(view, source, recipe)
    view = np.where(keep[..., None], view, np.uint8(0)).astype(np.uint8)
    notes = _scale_notes(scale, cell, recipe)
    return Prepared(
        resize_image(view, size),
        view,
        own,
        scale,
        len(found.cells),
        region,
        notes,
        cell.diameter * scale.um_per_px,
        ~keep,
    )


def _centre(
    image: UInt8Image,
    size: tuple[int, int],
    recipe: CellRecipe,
    source: StainTarget | None,
    scale: ScaleEstimate | None,
    count: int,
) -> Prepared:
    """No white cell: the largest centred square, so the model still gets a picture the gate can judge."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    region = (top, left, top + side, left + side)
    window = np.ascontiguousarray(image[top : top + side, left : left + side])
    view = resize_image(window, _view_size(side, size, recipe))
    if recipe.stain is not None:
        view = _normalised(view, source, recipe)
    empty = np.zeros(view.shape[:2], bool)
    return Prepared(resize_image(view, size), view, empty, scale, count, region, (NO_CELL,))


def _normalised(window: UInt8Image, source: StainTarget | None, recipe: CellRecipe) -> UInt8Image:
    assert recipe.stain is not None
    with warnings.catch_warnings():
        # skimage warns when a mapped colour falls outside the sRGB gamut; it is clipped, as intended.
        warnings.simplefilter("ignore", UserWarning)
        return stain.normalise(window, source, recipe.stain)


def _view_size(side: int, size: tuple[int, int], recipe: CellRecipe) -> tuple[int, int]:
    """The crop's own resolution, at most ``view_max`` and at least the model's input and ``view_min``."""
    edge = max(min(side, recipe.view_max), max(size), recipe.view_min)
    return edge, edge


def _cut(image: UInt8Image, region: Box) -> UInt8Image:
    """The pixels of ``region``, black where it runs past the image's edge."""
    top, left, bottom, right = region
    h, w = image.shape[:2]
    out = np.zeros((bottom - top, right - left, 3), np.uint8)
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(bottom, h), min(right, w)
    if y0 < y1 and x0 < x1:
        out[y0 - top : y1 - top, x0 - left : x1 - left] = image[y0:y1, x0:x1]
    return out


def _cut_labels(labels: npt.NDArray[np.int32], region: Box) -> npt.NDArray[np.int32]:
    top, left, bottom, right = region
    h, w = labels.shape
    out = np.zeros((bottom - top, right - left), np.int32)
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(bottom, h), min(right, w)
    if y0 < y1 and x0 < x1:
        out[y0 - top : y1 - top, x0 - left : x1 - left] = labels[y0:y1, x0:x1]
    return out


def _resize_mask(mask: npt.NDArray[np.bool_], shape: tuple[int, ...]) -> npt.NDArray[np.bool_]:
    if mask.shape == shape[:2]:
        return mask
    grey = resize_image(np.repeat(mask[..., None].astype(np.uint8) * 255, 3, axis=2), (shape[0], shape[1]))
    return np.asarray(grey[..., 0] >= 128)


def _scale_notes(scale: ScaleEstimate, cell: WhiteCell, recipe: CellRecipe) -> tuple[str, ...]:
    """Why the scale or the cell's size puts the image outside what the model was trained on."""
    notes = []
    if recipe.scale_range is not None:
        low, high = recipe.scale_range
        if scale.um_per_px > high * SCALE_SLACK:
            notes.append(
                f"the image's scale, {scale.um_per_px:.3g} µm per pixel, is coarser than the training "
                f"images' ({low:.3g} to {high:.3g}): too few pixels per cell to classify it"
            )
        elif scale.um_per_px < low / _FINEST:
            notes.append(
                f"the image's estimated scale, {scale.um_per_px:.3g} µm per pixel, is finer than any "
                "microscope image the model knows: the estimate is likely wrong"
            )
    if recipe.diameter_range is not None and scale.source == "red_cells":
        low, high = recipe.diameter_range
        diameter = cell.diameter * scale.um_per_px
        if not low / SCALE_SLACK <= diameter <= high * SCALE_SLACK:
            notes.append(
                f"the white cell is {diameter:.3g} µm across, unlike the training cells "
                f"({low:.3g} to {high:.3g} µm)"
            )
    return tuple(notes)
