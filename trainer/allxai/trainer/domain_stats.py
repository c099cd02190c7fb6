"""Cheap statistics of the input pixels, one of the domain gate's views of an image, as TensorFlow ops.

They describe what any microscope image of a stained smear shows, whatever the model learnt: the colour and
its spread, how bright and how dark, how saturated, how much of the field is white or black, how much looks
like a stained nucleus (Romanowsky stains absorb green and keep red and blue) or is darker than the field,
how large those regions are (what survives erosion by growing squares: a granulometry, so magnification
shows), and how much fine texture there is. A flat image, a photograph, noise, another stain or another
magnification each move several of them at once.

The same function runs at export (to fit the gate on the training images) and inside the SavedModel (to
score what the gateway sends), so the two cannot differ.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

#: The statistics, in the order of :func:`input_statistics`'s columns (for the model card).
NAMES = (
    "mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b",
    "lum_p05", "lum_p50", "lum_p95", "purple_mean", "purple_p95", "sat_mean",
    "log_white", "log_black",
    "log_stain", "log_stain_er5", "log_stain_er9", "log_stain_er17",
    "log_dark", "log_dark_er5", "log_dark_er9", "log_dark_er17",
    "log_grad", "log_hf",
)  # fmt: skip

_EPS = 1e-3
_ERODE = (5, 9, 17)


#: Bins of the histograms the quantiles are read from: finer than the 8-bit levels they come from.
_BINS = 512


def _percentiles(values: Any, low: float, high: float, qs: tuple[float, ...]) -> list[Any]:
    """The ``qs`` quantiles of each row of ``values [N, P]`` (within ``[low, high]``), read from a histogram:
    linear in the pixels where a sort is not, and as exact as the 8-bit pixels they come from."""
    width = (high - low) / _BINS
    bins = tf.clip_by_value(tf.cast(tf.floor((values - low) / width), tf.int32), 0, _BINS - 1)
    rows = tf.shape(values)[0]
    offsets = tf.range(rows)[:, None] * _BINS
    flat = tf.reshape(bins + offsets, [-1])
    counts = tf.reshape(tf.math.bincount(flat, minlength=rows * _BINS, maxlength=rows * _BINS), [rows, _BINS])
    cumulative = tf.cumsum(tf.cast(counts, tf.float32), axis=1) / tf.cast(tf.shape(values)[1], tf.float32)
    out = []
    for q in qs:
        first = tf.argmax(tf.cast(cumulative >= q, tf.int32), axis=1)  # the first bin reaching q
        out.append(low + (tf.cast(first, tf.float32) + 0.5) * width)
    return out


def _log_share(mask: Any) -> Any:
    return tf.math.log(_EPS + tf.reduce_mean(tf.cast(mask, tf.float32), axis=[1, 2]))


def _eroded_shares(mask: Any) -> list[Any]:
    """The log share of ``mask [N, H, W]`` left after erosion by k x k squares.

    A pixel survives when its whole k x k window is in the mask; window sums come from one summed-area
    table for every k, so the cost does not grow with k. Outside the image counts as in the mask, as a
    min-pool that ignores the border would have it.
    """
    m = tf.cast(mask, tf.float32)
    pad = max(_ERODE) // 2
    padded = tf.pad(m, [[0, 0], [pad, pad], [pad, pad]], constant_values=1.0)
    table = tf.pad(tf.cumsum(tf.cumsum(padded, axis=1), axis=2), [[0, 0], [1, 0], [1, 0]])
    height, width = tf.shape(m)[1], tf.shape(m)[2]
    out = []
    for k in _ERODE:
        a, b = pad - k // 2, pad + k // 2 + 1  # the window of pixel i spans padded rows [i + a, i + b)
        window = (
            table[:, b : b + height, b : b + width]
            - table[:, a : a + height, b : b + width]
            - table[:, b : b + height, a : a + width]
            + table[:, a : a + height, a : a + width]
        )
        out.append(_log_share(window > k * k - 0.5))
    return out


#: The statistics are taken on the image resampled (by area) to this size: their cost then does not grow
#: with the model's input size, and region sizes are measured against the field of view, whatever it is.
SIZE = 64


# Plain TensorFlow ops with no control flow on tensors: traced as Python, not rewritten by autograph (which
# mangles calls unpacked into a list).
@tf.autograph.experimental.do_not_convert
def input_statistics(images: Any) -> Any:
    """``[N, len(NAMES)]`` float32 statistics of uint8 images ``[N, H, W, 3]``."""
    x = tf.image.resize(tf.cast(images, tf.float32) / 255.0, [SIZE, SIZE], method="area")
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    lum = 0.299 * r + 0.587 * g + 0.114 * b
    flat = tf.reshape(lum, [tf.shape(lum)[0], -1])
    p05, p50, p95 = _percentiles(flat, 0.0, 1.0, (0.05, 0.5, 0.95))
    purple = (r + b) / 2 - g
    brightest, darkest = tf.reduce_max(x, axis=-1), tf.reduce_min(x, axis=-1)
    saturation = (brightest - darkest) / (brightest + _EPS)
    stain = (purple > 0.12) & (g < 0.6)
    dark = lum < (p50[:, None, None] - 0.15)
    grad = tf.reduce_mean(tf.abs(lum[:, :, 1:] - lum[:, :, :-1]), axis=[1, 2]) + tf.reduce_mean(
        tf.abs(lum[:, 1:, :] - lum[:, :-1, :]), axis=[1, 2]
    )
    box = tf.nn.avg_pool2d(lum[..., None], 3, 1, "VALID")[..., 0]
    high_frequency = tf.reduce_mean(tf.abs(lum[:, 1:-1, 1:-1] - box), axis=[1, 2])
    columns = [
        *(tf.reduce_mean(c, axis=[1, 2]) for c in (r, g, b)),
        *(tf.math.reduce_std(c, axis=[1, 2]) for c in (r, g, b)),
        p05,
        p50,
        p95,
        tf.reduce_mean(purple, axis=[1, 2]),
        *_percentiles(tf.reshape(purple, tf.shape(flat)), -1.0, 1.0, (0.95,)),
        tf.reduce_mean(saturation, axis=[1, 2]),
        _log_share(darkest > 0.9),
        _log_share(brightest < 0.1),
        _log_share(stain),
        *_eroded_shares(stain),
        _log_share(dark),
        *_eroded_shares(dark),
        tf.math.log(_EPS + grad),
        tf.math.log(_EPS + high_frequency),
    ]
    return tf.stack(columns, axis=1)
