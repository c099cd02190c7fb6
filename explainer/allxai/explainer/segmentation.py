"""Superpixels: quickshift with lime's defaults, slic and felzenszwalb with their parameters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from lime.wrappers.scikit_image import SegmentationAlgorithm

Method = Literal["quickshift", "slic", "felzenszwalb"]

#: Each algorithm's defaults; quickshift's are lime's own (LimeImageExplainer.explain_instance).
DEFAULTS: dict[str, dict[str, Any]] = {
    "quickshift": {"kernel_size": 4, "max_dist": 200, "ratio": 0.2},
    "slic": {"n_segments": 100, "compactness": 10.0, "sigma": 1.0, "start_label": 0},
    "felzenszwalb": {"scale": 100.0, "sigma": 0.5, "min_size": 50},
}


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
        # Values arrive as floats over the wire; integer parameters (n_segments, min_size) stay integers.
        given = {k: type(defaults[k])(v) for k, v in self.params.items()}
        return {**defaults, **given}


def segment(image: npt.NDArray[np.uint8], spec: SegmentationSpec, seed: int) -> npt.NDArray[np.int32]:
    """Superpixel ids 0..n-1 for every pixel of ``image``.

    Goes through lime's own ``SegmentationAlgorithm`` wrapper, so that the segments (and with
    them the explanation) are those ``LimeImageExplainer.explain_instance`` would compute.
    """
    params = spec.resolved()
    if spec.method == "quickshift":
        params["random_seed"] = seed
    segments = np.asarray(SegmentationAlgorithm(spec.method, **params)(image))
    # lime indexes masks by segment id, so ids must run 0..n-1 (slic and felzenszwalb may not).
    _, dense = np.unique(segments, return_inverse=True)
    return dense.reshape(segments.shape).astype(np.int32)
