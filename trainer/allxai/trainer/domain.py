"""The input-domain gate: fitted at export on the training images, calibrated on held-out ones, and run
inside the SavedModel, beside the probabilities.

Several views of an image are each scored by how unlike the training images they are:

- the model's own features at a few depths (the global average of early, middle and late convolutions, and
  the first hidden dense layer), each by the Mahalanobis distance to the nearest class mean under one
  covariance shared by the classes (Lee et al. 2018), shrunk by Ledoit-Wolf;
- cheap statistics of the pixels (:mod:`allxai.trainer.domain_stats`), by the Mahalanobis distance to their
  training mean.

Early layers see colour and texture, late ones what the model decides on, the statistics what any smear
looks like; an image from elsewhere moves some of them. Each distance is put on a common scale (its median
and spread over the calibration images, held out by group) and the score is the largest of them. The
threshold is the score's ``acceptance`` quantile over those calibration images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import tensorflow as tf

from allxai.trainer.domain_stats import input_statistics

Floats = npt.NDArray[np.float64]

#: The statistics' spread is floored at this, so one that is constant in training cannot explode.
_MIN_SPREAD = 0.02


@dataclass(frozen=True)
class Gaussian:
    """Class means ``[K, D]`` under one precision matrix ``[D, D]``; inputs are first standardised."""

    means: Floats
    precision: Floats
    center: Floats
    scale: Floats

    @classmethod
    def fit(
        cls, x: Floats, labels: npt.NDArray[np.int64] | None = None, standardise: bool = False
    ) -> Gaussian:
        """Fit on ``x [N, D]``: a mean per label (one without labels), one shared Ledoit-Wolf covariance."""
        from sklearn.covariance import LedoitWolf  # noqa: PLC0415  (the train extra)

        x = np.asarray(x, np.float64)
        center = x.mean(axis=0) if standardise else np.zeros(x.shape[1])
        scale = np.maximum(x.std(axis=0), _MIN_SPREAD) if standardise else np.ones(x.shape[1])
        z = (x - center) / scale
        groups = np.zeros(len(z), np.int64) if labels is None else np.asarray(labels, np.int64)
        present = np.unique(groups)
        means = np.stack([z[groups == k].mean(axis=0) for k in present])
        residuals = z - means[np.searchsorted(present, groups)]
        precision = LedoitWolf(assume_centered=True).fit(residuals).precision_
        return cls(means, precision, center, scale)

    def distance(self, x: Any) -> Any:
        """Squared Mahalanobis distance of each row of ``x`` to the nearest mean (TensorFlow or NumPy)."""
        z = (tf.cast(x, tf.float64) - self.center) / self.scale
        zp = tf.linalg.matmul(z, self.precision)
        # (z - m)' P (z - m) = z'Pz - 2 z'Pm + m'Pm, for every mean at once.
        own = tf.reduce_sum(zp * z, axis=1, keepdims=True)
        cross = tf.linalg.matmul(zp, self.means, transpose_b=True)
        means = tf.reduce_sum(tf.linalg.matmul(self.means, self.precision) * self.means, axis=1)
        return tf.reduce_min(own - 2.0 * cross + means[None, :], axis=1)


@dataclass(frozen=True)
class View:
    """One view of the image: a feature tap of the model (by index) or the pixel statistics (None)."""

    name: str
    tap: int | None
    gaussian: Gaussian
    median: float
    spread: float


@dataclass(frozen=True)
class DomainDetector:
    """The fitted gate: its views, and the threshold on the combined score."""

    views: tuple[View, ...]
    threshold: float
    acceptance: float

    @tf.autograph.experimental.do_not_convert  # plain ops: traced as Python inside the serving signature
    def score(self, images: Any, taps: list[Any]) -> Any:
        """The out-of-domain score ``[N]`` float32 of uint8 ``images`` and the model's feature ``taps``."""
        parts = []
        for view in self.views:
            x = input_statistics(images) if view.tap is None else taps[view.tap]
            parts.append((view.gaussian.distance(x) - view.median) / view.spread)
        return tf.cast(tf.reduce_max(tf.stack(parts, axis=1), axis=1), tf.float32)

    def describe(self) -> str:
        names = ", ".join(v.name for v in self.views)
        return (
            f"the largest of {len(self.views)} standardised Mahalanobis distances ({names}): "
            "class-conditional Gaussians with a shared Ledoit-Wolf covariance on the model's features, one "
            "Gaussian on the "
            f"pixel statistics; out of domain above the {self.acceptance:.1%} quantile of held-out in-domain "
            "images"
        )


def feature_taps(model: Any) -> tuple[Any, list[str]]:
    """A Keras model giving the probabilities and the feature taps, and the taps' names.

    Taps: the global average of the first, middle and last top-level convolution (ALL-Net's three blocks),
    and the first hidden dense layer (for a transfer model, the pooled backbone features).
    """
    import keras  # noqa: PLC0415

    # Top-level convolutions only: a transfer model's backbone is a nested model whose inner tensors are
    # not connected to the outer input; its pooled output is the penultimate tap.
    convolutional = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    chosen = sorted({0, len(convolutional) // 2, len(convolutional) - 1}) if convolutional else []
    taps: list[tuple[str, Any]] = [
        (convolutional[i].name, keras.layers.GlobalAveragePooling2D()(convolutional[i].output))
        for i in chosen
    ]
    # The first hidden dense layer where there is one (ALL-Net's 256 units: the later ones add little and
    # vary more between in-domain images); a transfer model's pooled features otherwise.
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    taps.append((dense[0].name, dense[0].output) if len(dense) > 1 else ("pooled", model.layers[-1].input))
    joint = keras.Model(model.input, [model.output, *(t for _, t in taps)])
    return joint, [name for name, _ in taps]


def robust_scale(values: Floats) -> tuple[float, float]:
    """Median and normal-consistent median absolute deviation, at least a twentieth of the median: a few
    calibration images can agree by chance, and a spread near zero would blow every other image up."""
    median = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(values - median)))
    return median, max(spread, 0.05 * abs(median), 1e-6)
