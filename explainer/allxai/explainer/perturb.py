"""lime's perturbations, vectorised: the same masks from the same random stream, the same images.

lime 0.2.0.1 draws ``random_state.randint(0, 2, num_samples * n_features)`` (first row all ones)
and then builds every perturbed image in a Python loop, ~3-4 ms a sample. Here the images come
from one gather over the segment map, byte for byte the same, or are built next to the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


class MaskSampler:
    """Draws lime's masks in chunks from one ``RandomState``: the concatenated chunks are exactly
    the matrix lime draws at once (``randint`` for int64 consumes the stream value by value)."""

    def __init__(self, random_state: np.random.RandomState, n_features: int) -> None:
        self._rs = random_state
        self._n = n_features
        self._first = True

    def draw(self, count: int) -> npt.NDArray[np.int64]:
        """The next ``count`` rows of 0/1 masks; the very first row is all ones (the image itself)."""
        masks = self._rs.randint(0, 2, count * self._n).reshape((count, self._n))
        if self._first and count:
            masks[0, :] = 1
            self._first = False
        return np.asarray(masks, dtype=np.int64)


def mean_fill(image: npt.NDArray[np.uint8], segments: npt.NDArray[np.int32]) -> npt.NDArray[np.uint8]:
    """lime's default hide colour: each superpixel's mean colour, truncated to uint8 as lime's
    assignment into a uint8 image truncates. Sums of uint8 values are exact in float64, so the
    means equal ``np.mean``'s bit for bit."""
    n = int(segments.max()) + 1
    flat = segments.ravel()
    counts = np.bincount(flat, minlength=n).astype(np.float64)
    fill = np.empty_like(image)
    for c in range(3):
        sums = np.bincount(flat, weights=image[..., c].ravel().astype(np.float64), minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = sums / counts
        fill[..., c] = means[segments].astype(np.uint8)
    return fill


def solid_fill(image: npt.NDArray[np.uint8], colour: tuple[int, int, int]) -> npt.NDArray[np.uint8]:
    """A hide colour given by the caller (lime's ``hide_color``)."""
    fill = np.empty_like(image)
    fill[:] = np.asarray(colour, np.uint8)
    return fill


def compose(
    image: npt.NDArray[np.uint8],
    fill: npt.NDArray[np.uint8],
    segments: npt.NDArray[np.int32],
    masks: npt.NDArray[np.integer],
) -> npt.NDArray[np.uint8]:
    """Perturbed images ``[N, H, W, 3]``: pixel (y, x) of sample n is the image's where
    ``masks[n, segments[y, x]]`` is 1, else the fill's."""
    keep = masks.astype(bool)[:, segments]
    # Start from the fill and copy the kept pixels: 4x faster than np.where over the same bytes.
    out = np.empty((len(masks), *image.shape), np.uint8)
    out[:] = fill
    np.copyto(out, image, where=keep[..., None])
    return out


@dataclass(frozen=True)
class Composition:
    """Perturbed images not yet built: what :func:`compose` (or a model's ``compose`` signature,
    next to the model) builds them from. One per batch of an explanation; the image, fill and
    segments are the same for every batch, the masks (``[N, S]``, 0 or 1) are the batch's."""

    image: npt.NDArray[np.uint8]
    fill: npt.NDArray[np.uint8]
    segments: npt.NDArray[np.int32]
    masks: npt.NDArray[np.uint8]

    def __len__(self) -> int:
        """The number of perturbed images: one per mask row."""
        return len(self.masks)

    def images(self) -> npt.NDArray[np.uint8]:
        """The perturbed images ``[N, H, W, 3]``, built here."""
        return compose(self.image, self.fill, self.segments, self.masks)
