"""Paper 2's offline balancing of the minority class.

Thiriveedhi et al., ALL-Net (PeerJ Computer Science 2025), augment only the minority class (Benign,
the hematogones, in the Aria et al. set) with the Keras ``ImageDataGenerator`` recipe (rotation 10
degrees, width and height shift 0.1, shear 0.2, zoom 0.2, horizontal flip, fill mode "nearest"),
until it has as many images as the largest class; the other classes stay as they are. Augmenting
every class smaller than the largest is available as an explicit choice.

Keras 3 has no ``ImageDataGenerator``, so :func:`paper2_transform` rebuilds its maths: it draws
the same parameters from the same distributions, composes the same matrices about the image centre,
and resamples each image once with ``keras.ops.image.affine_transform`` (bilinear, fill "nearest").
:func:`balance_minority_classes` applies it.

Why not chain ``keras.layers.RandomRotation``/``RandomTranslation``/``RandomShear``/``RandomZoom``/
``RandomFlip``? Each layer resamples the image again (four bilinear passes blur the cells), and two
of them mean something else than the generator's arguments: ``RandomShear`` shears about the top-left
corner along both axes by a fraction of the image, where ``shear_range=0.2`` is an angle of at most
0.2 *degrees* along one axis about the centre; ``RandomZoom(0.2)`` keeps the aspect ratio, where
``zoom_range=0.2`` draws the two axis zooms independently from [0.8, 1.2]. One composed matrix is
both faithful and a single interpolation.

Images are uint8: the generated images join the uint8 originals. Paper 1's on-the-fly augmentation
is in :mod:`allxai.trainer.augment`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import keras
import numpy as np
import numpy.typing as npt

UInt8Images = npt.NDArray[np.uint8]
#: Which classes to augment: the smallest (paper 2), every class smaller than the largest, or labels.
ClassChoice = Literal["smallest", "all_smaller"] | Sequence[int]


@dataclass(frozen=True)
class Paper2Params:
    """The ``ImageDataGenerator`` arguments of Thiriveedhi et al., with the generator's meanings.

    ``rotation_degrees``: rotation drawn from [-r, r] degrees. ``shift``: width and height shift
    drawn from [-s, s] times the image side. ``shear``: shear *angle in degrees* drawn from
    [-s, s] (``ImageDataGenerator``'s ``shear_range`` is in degrees, so 0.2 is a very slight shear).
    ``zoom``: the row and column zoom factors drawn independently from [1 - z, 1 + z] (a factor
    above 1 shrinks the content). ``horizontal_flip``: mirror left-right with probability 1/2.
    """

    rotation_degrees: float = 10.0
    shift: float = 0.1
    shear: float = 0.2
    zoom: float = 0.2
    horizontal_flip: bool = True

    def __post_init__(self) -> None:
        if min(self.rotation_degrees, self.shift, self.shear, self.zoom) < 0:
            raise ValueError(f"Paper2Params ranges must be >= 0, got {self}")
        if self.zoom >= 1:
            raise ValueError(f"zoom must be < 1 (a zoom factor must stay positive), got {self.zoom}")


def _random_matrices(
    rng: np.random.Generator, count: int, height: int, width: int, params: Paper2Params
) -> npt.NDArray[np.float32]:
    """Draw ``count`` ImageDataGenerator transforms; return them as ``[count, 8]`` float32 rows.

    Each row maps an output pixel to the input point it samples, in the layout of
    ``keras.ops.image.affine_transform``: ``x_in = a0*x + a1*y + a2``, ``y_in = b0*x + b1*y + b2``
    (x is the column, y the row; no perspective terms).
    """
    rows = np.zeros((count, 8), np.float64)
    # Centre of the pixel grid (pixel centres at integer coordinates). ImageDataGenerator uses
    # side/2 + 0.5, half a pixel past the end for even sides; the true centre avoids that offset.
    centre_row, centre_col = (height - 1) / 2, (width - 1) / 2
    to_centre = np.array([[1, 0, -centre_row], [0, 1, -centre_col], [0, 0, 1]], np.float64)
    from_centre = np.array([[1, 0, centre_row], [0, 1, centre_col], [0, 0, 1]], np.float64)
    # ImageDataGenerator's matrices act on (row, col); the affine transform wants (x=col, y=row).
    swap = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]], np.float64)
    for i in range(count):
        # The draws, in ImageDataGenerator.get_random_transform's order and distributions.
        theta = math.radians(rng.uniform(-params.rotation_degrees, params.rotation_degrees))
        shift_rows = rng.uniform(-params.shift, params.shift) * height
        shift_cols = rng.uniform(-params.shift, params.shift) * width
        shear = math.radians(rng.uniform(-params.shear, params.shear))
        zoom_rows, zoom_cols = rng.uniform(1 - params.zoom, 1 + params.zoom, 2)
        flip = bool(params.horizontal_flip and rng.random() < 0.5)
        # apply_affine_transform: rotation . shift . shear . zoom, about the centre.
        rotation = np.array(
            [[math.cos(theta), -math.sin(theta), 0], [math.sin(theta), math.cos(theta), 0], [0, 0, 1]]
        )
        shift = np.array([[1, 0, shift_rows], [0, 1, shift_cols], [0, 0, 1]])
        shear_matrix = np.array([[1, -math.sin(shear), 0], [0, math.cos(shear), 0], [0, 0, 1]])
        zoom = np.array([[zoom_rows, 0, 0], [0, zoom_cols, 0], [0, 0, 1]])
        matrix = from_centre @ rotation @ shift @ shear_matrix @ zoom @ to_centre
        matrix = swap @ matrix @ swap
        if flip:
            # The generator flips the transformed image, so the output column is mirrored first.
            mirror = np.array([[-1, 0, width - 1], [0, 1, 0], [0, 0, 1]], np.float64)
            matrix = matrix @ mirror
        rows[i, :6] = matrix[:2].reshape(-1)
    return rows.astype(np.float32)


def _apply_matrices(images: UInt8Images, matrices: npt.NDArray[np.float32]) -> UInt8Images:
    """Resample each image once through its matrix: bilinear, fill mode "nearest", back to uint8."""
    out = keras.ops.image.affine_transform(
        images.astype(np.float32), matrices, interpolation="bilinear", fill_mode="nearest"
    )
    pixels: npt.NDArray[np.float32] = keras.ops.convert_to_numpy(out)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _check_images(images: np.ndarray[Any, Any]) -> None:
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images [N, H, W, 3], got {images.dtype} {images.shape}")


def paper2_transform(images: UInt8Images, seed: int, params: Paper2Params = Paper2Params()) -> UInt8Images:
    """Apply one random ImageDataGenerator-style transform to each image.

    Args:
        images: uint8 ``[N, H, W, 3]``.
        seed: seeds a NumPy generator that draws every parameter; the same seed gives the same output.
        params: the recipe's ranges.

    Returns:
        uint8 ``[N, H, W, 3]``.
    """
    _check_images(images)
    if len(images) == 0:
        return images.copy()
    height, width = images.shape[1:3]
    matrices = _random_matrices(np.random.default_rng(seed), len(images), height, width, params)
    return _apply_matrices(images, matrices)


@dataclass
class BalanceResult:
    """The balanced set: the originals first, in their order, then the generated images."""

    images: UInt8Images  # uint8 [M, H, W, 3]
    labels: npt.NDArray[np.int64]  # int64 [M]
    #: How many images were generated for each class present (0 for those not augmented).
    added_per_class: dict[int, int] = field(default_factory=dict)


def _classes_to_augment(
    classes: npt.NDArray[Any], counts: npt.NDArray[np.intp], choice: ClassChoice
) -> set[int]:
    if isinstance(choice, str):
        if choice == "smallest":
            # Ties: every class of the smallest count is "the" minority.
            return {int(c) for c, n in zip(classes, counts, strict=True) if n == counts.min()}
        if choice == "all_smaller":
            return {int(c) for c in classes}
        raise ValueError(f'classes must be "smallest", "all_smaller" or a list of labels, got {choice!r}')
    chosen = {int(c) for c in choice}
    unknown = sorted(chosen - {int(c) for c in classes})
    if unknown:
        raise ValueError(
            f"cannot augment labels {unknown}: no image has them (labels are {classes.tolist()})"
        )
    return chosen


def balance_minority_classes(
    images: UInt8Images,
    labels: npt.NDArray[np.integer[Any]],
    seed: int,
    params: Paper2Params = Paper2Params(),
    batch_size: int = 64,
    classes: ClassChoice = "smallest",
) -> BalanceResult:
    """Augment the chosen classes until each has as many images as the largest class.

    ``classes`` is ``"smallest"`` (paper 2: the minority class only, every class of the smallest
    count on a tie), ``"all_smaller"`` (every class smaller than the largest, so all end equal) or
    explicit labels. Classes not chosen are untouched. For each chosen class (in increasing label
    order), source images of that class are drawn with replacement by a NumPy generator seeded
    with ``seed`` and transformed with the paper-2 recipe. The output is deterministic for a given
    ``seed`` and does not depend on ``batch_size``, which only bounds how many images are
    transformed at once.
    """
    _check_images(images)
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"expected one label per image, got labels {labels.shape} for images {images.shape}")
    if len(images) == 0:
        raise ValueError("cannot balance an empty dataset")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    present, counts = np.unique(labels, return_counts=True)
    chosen = _classes_to_augment(present, counts, classes)
    target = int(counts.max())
    rng = np.random.default_rng(seed)
    height, width = images.shape[1:3]
    # Draw every source index and matrix up front (a few floats each), so batching cannot change them.
    sources: list[npt.NDArray[np.intp]] = []
    added: dict[int, int] = {}
    for cls, count in zip(present.tolist(), counts.tolist(), strict=True):
        need = target - count if int(cls) in chosen else 0
        added[int(cls)] = need
        if need:
            sources.append(rng.choice(np.flatnonzero(labels == cls), size=need, replace=True))
    source = np.concatenate(sources) if sources else np.zeros(0, np.intp)
    matrices = _random_matrices(rng, len(source), height, width, params)
    # Fill a preallocated array batch by batch: peak memory is the output plus one batch.
    out_images = np.empty((len(images) + len(source), *images.shape[1:]), np.uint8)
    out_images[: len(images)] = images
    for start in range(0, len(source), batch_size):
        stop = min(start + batch_size, len(source))
        out_images[len(images) + start : len(images) + stop] = _apply_matrices(
            images[source[start:stop]], matrices[start:stop]
        )
    out_labels = np.concatenate([labels, labels[source]]).astype(np.int64)
    return BalanceResult(images=out_images, labels=out_labels, added_per_class=added)
