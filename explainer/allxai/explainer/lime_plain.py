"""A plain explanation with the ``lime`` package's own ``explain_instance``.

This is the faithful reference: the later fast path must give the same weights for the same
segmentation, seed and predict function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from lime import lime_image
from lime.wrappers.scikit_image import SegmentationAlgorithm

from allxai.explainer.result import ExplanationResult, top_segments

PredictFn = Callable[[npt.NDArray[np.uint8]], npt.NDArray[np.float32]]

#: lime's own quickshift defaults (LimeImageExplainer.explain_instance).
QUICKSHIFT_DEFAULTS = {"kernel_size": 4, "max_dist": 200, "ratio": 0.2}


@dataclass(frozen=True)
class ExplainParams:
    """How to explain; defaults are lime's."""

    num_samples: int = 1000
    top_k: int = 5
    positive_only: bool = True
    seed: int = 0
    batch_size: int = 64


def explain(
    image: npt.NDArray[np.uint8], predict: PredictFn, label_index: int, params: ExplainParams
) -> ExplanationResult:
    """Explain ``label_index`` for ``image`` with lime's ``explain_instance`` and quickshift defaults."""
    if params.num_samples < 1:
        raise ValueError("num_samples must be at least 1")

    def classifier_fn(batch: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
        # lime hands over float64 copies of uint8 pixels; the model contract takes uint8.
        return predict(np.clip(batch, 0, 255).astype(np.uint8))

    segmenter = SegmentationAlgorithm("quickshift", random_seed=params.seed, **QUICKSHIFT_DEFAULTS)
    explainer = lime_image.LimeImageExplainer(random_state=params.seed)
    exp = explainer.explain_instance(
        image,
        classifier_fn,
        labels=(label_index,),
        top_labels=None,
        num_samples=params.num_samples,
        batch_size=params.batch_size,
        segmentation_fn=segmenter,
        random_seed=params.seed,
    )
    weights = [(int(seg), float(w)) for seg, w in exp.local_exp[label_index]]
    return ExplanationResult(
        label_index=label_index,
        weights=weights,
        top_segments=top_segments(weights, params.top_k, params.positive_only),
        segments=np.asarray(exp.segments),
        intercept=float(exp.intercept[label_index]),
        score=float(exp.score),
        local_prediction=float(np.ravel(exp.local_pred)[0]),
        num_samples=params.num_samples,
        seed=params.seed,
    )
