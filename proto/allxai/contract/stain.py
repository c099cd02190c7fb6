"""Stain normalisation (Reinhard et al., 2001): each laboratory's colours mapped onto the training colours.

Reinhard matches the mean and standard deviation of L*, a* and b* of an image to a target's. It was
chosen over Macenko's stain-vector method after trying Macenko (torchstain's NumPy implementation) on
these images: its hematoxylin/eosin ordering heuristic is made for H&E histology, and on
Romanowsky-stained blood smears it swapped the two stains (nuclei came out red, background purple)
and needs a fixed white level that smear fields with uneven lighting do not have.

The statistics come from the whole field's non-black pixels (a segmented image's black background is
no stain), subsampled to a bounded number of pixels so a large field costs no more than a small one;
the mapping is then applied to whatever part of the field the caller needs (a cell crop).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt
from skimage.color import lab2rgb, rgb2lab

from allxai.contract.cellrecipe import StainTarget

UInt8Image = npt.NDArray[np.uint8]

#: Pixels darker than this in every channel are a segmented image's background, not stain.
BLACK = 20
#: At most this many pixels feed the statistics (a regular subsample).
_SAMPLE = 16_384


def lab_stats(image: UInt8Image) -> StainTarget | None:
    """Mean and standard deviation of L*, a*, b* over the non-black pixels; ``None`` if there are none."""
    pixels = image.reshape(-1, 3)
    pixels = pixels[pixels.max(axis=1) >= BLACK]
    if len(pixels) < 16:
        return None
    step = max(1, len(pixels) // _SAMPLE)
    lab = rgb2lab(pixels[::step][None].astype(np.float64) / 255.0)[0]
    mean, std = lab.mean(axis=0), lab.std(axis=0)
    return StainTarget(
        (float(mean[0]), float(mean[1]), float(mean[2])),
        (float(max(std[0], 1e-3)), float(max(std[1], 1e-3)), float(max(std[2], 1e-3))),
    )


def normalise(image: UInt8Image, source: StainTarget | None, target: StainTarget) -> UInt8Image:
    """``image`` with its colours mapped from the ``source`` statistics (its field's) to the ``target``'s.

    Near-black pixels stay black (a segmented image's background). A flat source channel (a uniform
    image) is only shifted, never stretched: dividing by a tiny spread would turn noise into colour.
    """
    if source is None or image.size == 0:
        return image
    black = image.max(axis=2) < BLACK
    lab = rgb2lab(image.astype(np.float64) / 255.0)
    mean_s, std_s = np.asarray(source.mean), np.asarray(source.std)
    mean_t, std_t = np.asarray(target.mean), np.asarray(target.std)
    gain = np.where(std_s > 0.5, std_t / std_s, 1.0)
    # Past 4x a channel is being stretched from almost nothing: that is noise, not stain.
    gain = np.clip(gain, 0.25, 4.0)
    lab = (lab - mean_s) * gain + mean_t
    lab[..., 0] = np.clip(lab[..., 0], 0.0, 100.0)
    rgb: npt.NDArray[np.float64] = lab2rgb(lab)
    out: UInt8Image = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    out[black] = 0
    return out


def fit_target(stats: Iterable[StainTarget | None]) -> StainTarget:
    """The training target: the median, channel by channel, of the training fields' statistics."""
    known = [s for s in stats if s is not None]
    if not known:
        raise ValueError("no field with stained pixels to fit a stain target on")
    means = np.median(np.asarray([s.mean for s in known]), axis=0)
    stds = np.median(np.asarray([s.std for s in known]), axis=0)
    return StainTarget(
        (float(means[0]), float(means[1]), float(means[2])),
        (float(stds[0]), float(stds[1]), float(stds[2])),
    )
