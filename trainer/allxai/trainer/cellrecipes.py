"""A cell-centred recipe's preprocessing, fitted on the training fields and carried in the model card.

The stain target is the median L*a*b* statistics of up to :data:`STAIN_FIELDS` development fields (a
regular subsample; label-free, and never the separately indexed test fields); the scale and cell-size
ranges are the 1st and 99th percentiles over the loaded fields whose scale came from red cells. The
gateway flags an image far outside those ranges (:mod:`allxai.contract.cellview`).
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from allxai.contract import stain
from allxai.contract.cellrecipe import CellRecipe
from allxai.contract.preprocessing import ImageError, decode_image
from allxai.trainer.config import TrainConfig
from allxai.trainer.datasets import Sample
from allxai.trainer.loading import LoadedImages

log = logging.getLogger(__name__)

#: Fields the stain target is fitted on.
STAIN_FIELDS = 200


def initial_recipe(config: TrainConfig, samples: list[Sample]) -> CellRecipe:
    """The recipe the crops are made with: the config's geometry and the fitted stain target."""
    target = None
    if config.stain_normalise:
        step = max(1, len(samples) // STAIN_FIELDS)
        stats = []
        for sample in samples[::step][:STAIN_FIELDS]:
            try:
                stats.append(stain.lab_stats(decode_image(sample.path.read_bytes())))
            except (ImageError, OSError):
                continue  # load_samples reports it
        target = stain.fit_target(stats)
        log.info("stain target (L*a*b* mean %s, sd %s) from %d fields", target.mean, target.std, len(stats))
    return CellRecipe(field_um=config.field_um, margin_um=config.margin_um, stain=target)


def finished_recipe(recipe: CellRecipe, loaded: LoadedImages) -> CellRecipe:
    """The recipe with the training images' scale and cell-size ranges, for the domain check."""
    measured = [
        (scale[0], diameter)
        for scale, diameter in zip(loaded.scales, loaded.diameters, strict=True)
        if scale is not None and scale[1] == "red_cells" and diameter is not None
    ]
    if len(measured) < 10:
        log.warning("only %d fields had red cells to measure: no scale range in the card", len(measured))
        return recipe
    scales, diameters = np.asarray(measured).T
    return replace(recipe, scale_range=_percentiles(scales), diameter_range=_percentiles(diameters))


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(values, [1, 99])
    return round(float(low), 4), round(float(high), 4)
