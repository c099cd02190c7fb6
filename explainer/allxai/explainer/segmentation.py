"""Superpixels: quickshift with lime's defaults, slic and felzenszwalb with their parameters."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from lime.wrappers.scikit_image import SegmentationAlgorithm

Method = Literal["quickshift", "slic", "felzenszwalb"]

#: Each algorithm's defaults; quickshift's are lime's own (LimeImageExplainer.explain_instance).
DEFAULTS: dict[str, dict[str, Any]] = {
    "quickshift": {"kernel_size": 4, "max_dist": 200, "ratio": 0.2},
    "slic": {"n_segments": 100, "compactness": 10.0, "sigma": 1.0},
    "felzenszwalb": {"scale": 100.0, "sigma": 0.5, "min_size": 50},
}

#: What each parameter may be: (lowest, highest, whether the lowest itself is allowed).
_RANGES: dict[str, tuple[float, float, bool]] = {
    "kernel_size": (0.0, 100.0, False),
    "max_dist": (0.0, 1e6, False),
    "ratio": (0.0, 1.0, True),
    "n_segments": (1.0, 100_000.0, True),
    "compactness": (0.0, 1e6, False),
    "sigma": (0.0, 100.0, True),
    "scale": (0.0, 1e6, False),
    "min_size": (0.0, 1e6, True),
}

#: Parameters that count things.
_WHOLE = frozenset({"n_segments", "min_size"})

#: Fixed, not a parameter: ids from 0, as lime's masks index them (slic would start at 1).
_SLIC_FIXED = {"start_label": 0}


class SegmentationError(ValueError):
    """The segmentation cannot be computed with these parameters, or gives no usable superpixels."""


@dataclass(frozen=True)
class SegmentationSpec:
    """An algorithm and the parameters that differ from its defaults."""

    method: Method = "quickshift"
    params: dict[str, Any] = field(default_factory=dict)

    def resolved(self) -> dict[str, Any]:
        """The defaults with this spec's parameters applied; unknown names are refused."""
        if self.method not in DEFAULTS:
            raise ValueError(f"unknown segmentation {self.method!r}; choose one of {', '.join(DEFAULTS)}")
        unknown = set(self.params) - set(DEFAULTS[self.method])
        if unknown:
            raise ValueError(f"{self.method} has no parameter {', '.join(sorted(unknown))}")
        defaults = DEFAULTS[self.method]
        given = {k: _checked(k, v) for k, v in self.params.items()}
        return {**defaults, **given}


def _checked(name: str, value: Any) -> float | int:
    """``value`` as the parameter's type, if it is a finite number in the parameter's range."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    low, high, low_allowed = _RANGES[name]
    if not math.isfinite(number) or number > high or number < low or (number == low and not low_allowed):
        bound = ">=" if low_allowed else ">"
        raise ValueError(f"{name} must be a finite number {bound} {low:g} and <= {high:g}, got {value!r}")
    # Values arrive as floats over the wire; counts (n_segments, min_size) must be whole.
    if name in _WHOLE:
        if not number.is_integer():
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        return int(number)
    return number


def segment(image: npt.NDArray[np.uint8], spec: SegmentationSpec, seed: int) -> npt.NDArray[np.int32]:
    """Superpixel ids 0..n-1 for every pixel of ``image``.

    Goes through lime's own ``SegmentationAlgorithm`` wrapper, so that the segments (and with
    them the explanation) are those ``LimeImageExplainer.explain_instance`` would compute.
    """
    params = spec.resolved()
    if spec.method == "quickshift":
        params["random_seed"] = seed
    if spec.method == "slic":
        params |= _SLIC_FIXED
    try:
        segments = np.asarray(SegmentationAlgorithm(spec.method, **params)(image))
    except (ValueError, ArithmeticError) as exc:  # scikit-image's own refusals, in its words
        raise SegmentationError(f"{spec.method} failed with these parameters: {exc}") from exc
    # lime indexes masks by segment id, so ids must run 0..n-1 (slic and felzenszwalb may not).
    _, dense = np.unique(segments, return_inverse=True)
    return dense.reshape(segments.shape).astype(np.int32)


def isolate(segments: npt.NDArray[np.integer], mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.int32]:
    """``segments`` with the pixels of ``mask`` made one superpixel of their own, ids renumbered from 0.

    For a cell crop whose surround was blanked: those pixels hold no image, and a superpixel mixing them
    with the cell's edge would carry the edge's weight into the corners.
    """
    if mask.shape != segments.shape or not mask.any() or mask.all():
        return np.asarray(segments, np.int32)
    marked = np.where(mask, int(segments.max()) + 1, segments)
    _, renumbered = np.unique(marked, return_inverse=True)
    return renumbered.reshape(segments.shape).astype(np.int32)
