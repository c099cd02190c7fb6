"""Paper 1's training-time augmentation, on the fly in the ``tf.data`` pipeline.

Abir et al., transfer learning for acute lymphoblastic leukaemia on C-NMC 2019, augment every
training image: random up-down flip, random left-right flip, a transpose when a uniform draw exceeds
0.75 (so with probability 0.25; square images only, since a transpose swaps height and width),
brightness, contrast and saturation jitter, then a random crop resized back to the input size.
:func:`paper1_augment` does this for one image and :func:`paper1_dataset` for every image of a
``tf.data`` pipeline, with one stateless seed per element so a fixed seed reproduces the run.
Images are float32 in [0, 255] (the models scale pixels themselves).

:func:`cell_augment` is for cell crops (``augment = "cell"``): a cell has no up, so flips and quarter
turns, and HED stain jitter (Tellez et al., 2018): the optical density unmixed into hematoxylin,
eosin and DAB with scikit-image's matrices, each stain's amount scaled by ``1 + N(0, sigma)`` and
shifted by ``N(0, sigma)``, and mixed back, so the model learns that a laboratory's stain strength
is not a feature. Black (a crop's blanked surround) stays black.

Paper 2's offline balancing of the minority classes is in :mod:`allxai.trainer.balance`; balanced
class weights in :func:`allxai.trainer.train.balanced_class_weights`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf
from skimage.color import hed_from_rgb, rgb_from_hed

#: How many independent random streams one paper-1 augmentation uses (one per random step).
_PAPER1_STREAMS = 7


@dataclass(frozen=True)
class Paper1Params:
    """The knobs of Abir et al.'s recipe, for images in [0, 255].

    A range whose two ends are equal applies that fixed factor (1.0 disables the step);
    ``crop_fraction=(1.0, 1.0)`` disables the crop and ``transpose_threshold=1.0`` the transpose.
    """

    #: Largest brightness shift, in pixel units: 0.1 of the [0, 1] range, scaled to [0, 255].
    max_brightness: float = 0.1 * 255
    contrast: tuple[float, float] = (0.8, 1.2)
    saturation: tuple[float, float] = (0.8, 1.2)
    #: The side of the random crop as a fraction of the image side (same fraction for both sides).
    crop_fraction: tuple[float, float] = (0.8, 1.0)
    #: Transpose when a uniform draw in [0, 1) exceeds this (0.75 -> probability 0.25).
    transpose_threshold: float = 0.75

    def __post_init__(self) -> None:
        if self.max_brightness < 0:
            raise ValueError(f"max_brightness must be >= 0, got {self.max_brightness}")
        for name in ("contrast", "saturation"):
            lower, upper = getattr(self, name)
            if not 0 <= lower <= upper:
                raise ValueError(f"{name} must be a range 0 <= lower <= upper, got {(lower, upper)}")
        lower, upper = self.crop_fraction
        if not 0 < lower <= upper <= 1:
            raise ValueError(f"crop_fraction must satisfy 0 < lower <= upper <= 1, got {(lower, upper)}")


def _flip(image: tf.Tensor, seed: tf.Tensor, axis: int) -> tf.Tensor:
    """Reverse ``axis`` (0: up-down, 1: left-right) with probability 1/2."""
    if axis == 0:
        return tf.image.stateless_random_flip_up_down(image, seed=seed)
    return tf.image.stateless_random_flip_left_right(image, seed=seed)


def _transpose(image: tf.Tensor, seed: tf.Tensor, threshold: float) -> tf.Tensor:
    """Swap height and width when a uniform draw exceeds ``threshold``; square images only."""
    draw = tf.random.stateless_uniform([], seed=seed)
    height, width = image.shape[0], image.shape[1]
    if height is not None and width is not None:
        if height != width:
            return image  # a transpose would change the shape the model expects
        return tf.cond(draw > threshold, lambda: tf.transpose(image, [1, 0, 2]), lambda: image)
    # Size unknown while tracing: decide at run time, and keep the static rank.
    shape = tf.shape(image)
    do_it = tf.logical_and(draw > threshold, tf.equal(shape[0], shape[1]))
    return tf.cond(do_it, lambda: tf.transpose(image, [1, 0, 2]), lambda: image)


def _jitter_colour(image: tf.Tensor, seeds: tf.Tensor, params: Paper1Params) -> tf.Tensor:
    """Brightness, contrast and saturation jitter on [0, 255] floats."""
    if params.max_brightness > 0:
        # An additive shift, so the [0, 255] scale only changes max_delta (already in pixel units).
        image = tf.image.stateless_random_brightness(image, params.max_brightness, seed=seeds[0])
    lower, upper = params.contrast
    if lower < upper:
        # (x - mean) * factor + mean per channel: independent of the pixel scale.
        image = tf.image.stateless_random_contrast(image, lower, upper, seed=seeds[1])
    elif lower != 1.0:
        image = tf.image.adjust_contrast(image, lower)
    # The HSV round trip needs non-negative values; the two steps above may leave [0, 255].
    image = tf.clip_by_value(image, 0.0, 255.0)
    lower, upper = params.saturation
    # Hue and saturation are ratios and value scales with the pixels, so the HSV round trip
    # works on [0, 255] as it does on [0, 1].
    if lower < upper:
        image = tf.image.stateless_random_saturation(image, lower, upper, seed=seeds[2])
    elif lower != 1.0:
        image = tf.image.adjust_saturation(image, lower)
    return image


def _crop_and_resize(image: tf.Tensor, seeds: tf.Tensor, crop_fraction: tuple[float, float]) -> tf.Tensor:
    """Crop a random window whose sides are a random fraction of the image's, then resize back."""
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    lower, upper = crop_fraction
    fraction = tf.random.stateless_uniform([], seed=seeds[0], minval=lower, maxval=upper)
    crop_height = tf.clip_by_value(
        tf.cast(tf.round(fraction * tf.cast(height, tf.float32)), tf.int32), 1, height
    )
    crop_width = tf.clip_by_value(
        tf.cast(tf.round(fraction * tf.cast(width, tf.float32)), tf.int32), 1, width
    )
    crop = tf.image.stateless_random_crop(image, tf.stack([crop_height, crop_width, shape[2]]), seed=seeds[1])
    resized = tf.image.resize(crop, tf.stack([height, width]), method="bilinear")
    return tf.ensure_shape(resized, image.shape)


def paper1_augment(
    image: tf.Tensor, seed: tf.Tensor | None = None, params: Paper1Params = Paper1Params()
) -> tf.Tensor:
    """Augment one image with Abir et al.'s recipe; works eagerly and inside ``Dataset.map``.

    Args:
        image: float32 ``[H, W, 3]`` in [0, 255].
        seed: shape ``[2]`` integer seed for the stateless random ops; the same seed gives the same
            output. ``None`` draws a fresh seed from TensorFlow's global (stateful) generator, for
            eager use; inside a parallel ``Dataset.map`` that draw is not reproducible, so
            pipelines use :func:`paper1_dataset`, which hands each element its own seed.
        params: the recipe's knobs.

    Returns:
        float32 ``[H, W, 3]`` in [0, 255], the same shape as ``image`` (a non-square image is never
        transposed).
    """
    image = tf.convert_to_tensor(image, dtype=tf.float32)
    if seed is None:
        seed = tf.random.uniform([2], minval=0, maxval=2**31 - 1, dtype=tf.int64)
    # One independent stream per random step, so disabling a step does not change the others.
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=_PAPER1_STREAMS)
    image = _flip(image, seeds[0], axis=0)
    image = _flip(image, seeds[1], axis=1)
    image = _transpose(image, seeds[2], params.transpose_threshold)
    image = _jitter_colour(image, seeds[3:6], params)
    if params.crop_fraction != (1.0, 1.0):
        crop_seeds = tf.random.experimental.stateless_split(seeds[6], num=2)
        image = _crop_and_resize(image, crop_seeds, params.crop_fraction)
    # Jitter and bilinear resampling can overshoot the valid pixel range.
    return tf.clip_by_value(image, 0.0, 255.0)


def paper1_dataset(
    dataset: tf.data.Dataset,
    seed: int,
    params: Paper1Params = Paper1Params(),
    num_parallel_calls: int = tf.data.AUTOTUNE,
) -> tf.data.Dataset:
    """Augment the image (the first component) of each element of ``dataset``, reproducibly.

    Elements are ``(image, label)`` or ``(image, label, weight)``; the image may be uint8 or
    float32 in [0, 255] and comes out float32 in [0, 255]; the other components pass through.

    Each element gets its own stateless seed pair from ``tf.data.Dataset.random(seed)`` zipped
    alongside, instead of drawing one inside the map: a stateful draw in a parallel map depends on
    which thread runs first, so the same seed gave different images from run to run. Zipped
    seeds follow the element's position, so the same ``seed`` gives the same augmented images
    whatever ``num_parallel_calls`` is, while every epoch (every new iteration) draws new seeds.
    """
    return _augmented(
        dataset, seed, lambda image, pair: paper1_augment(image, pair, params), num_parallel_calls
    )


def _augmented(
    dataset: tf.data.Dataset, seed: int, fn: Any, num_parallel_calls: int = tf.data.AUTOTUNE
) -> tf.data.Dataset:
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

    def augment(element: tuple[tf.Tensor, ...], pair: tf.Tensor) -> tuple[tf.Tensor, ...]:
        image, *rest = element
        return (fn(tf.cast(image, tf.float32), pair), *rest)

    return tf.data.Dataset.zip((dataset, seeds)).map(
        augment, num_parallel_calls=num_parallel_calls, deterministic=True
    )


_HED_FROM_RGB = tf.constant(hed_from_rgb, tf.float32)
_RGB_FROM_HED = tf.constant(rgb_from_hed, tf.float32)
_LOG_ADJUST = float(np.log(1e-6))  # scikit-image's floor on the optical density


def hed_jitter(image: tf.Tensor, seed: tf.Tensor, sigma: float) -> tf.Tensor:
    """Scale and shift each stain's amount by ``N(0, sigma)``; float32 [H, W, 3] in [0, 255] in and out."""
    if sigma <= 0:
        return image
    rgb = tf.maximum(image / 255.0, 1e-6)
    stains = tf.maximum(tf.reshape(tf.math.log(rgb) / _LOG_ADJUST, (-1, 3)) @ _HED_FROM_RGB, 0.0)
    draws = tf.random.stateless_normal((2, 3), seed=seed, stddev=sigma)
    stains = stains * (1.0 + draws[0]) + draws[1] * tf.reduce_mean(stains, axis=0)
    back = tf.exp((tf.maximum(stains, 0.0) @ _RGB_FROM_HED) * _LOG_ADJUST)
    out = tf.reshape(tf.clip_by_value(back, 0.0, 1.0) * 255.0, tf.shape(image))
    # The blanked surround (black) is no stain: keep it black rather than tinted by the shift.
    black = tf.reduce_max(image, axis=-1, keepdims=True) < 20.0
    return tf.where(black, image, out)


def cell_augment(image: tf.Tensor, seed: tf.Tensor, sigma: float = 0.05) -> tf.Tensor:
    """A cell crop flipped, turned by a random quarter and stain-jittered; float32 [0, 255] in and out."""
    seeds = tf.random.experimental.stateless_split(seed, num=4)
    image = tf.image.stateless_random_flip_left_right(image, seed=seeds[0])
    turns = tf.random.stateless_uniform((), seed=seeds[1], maxval=4, dtype=tf.int32)
    image = tf.image.rot90(image, k=turns)
    return tf.clip_by_value(hed_jitter(image, seeds[2], sigma), 0.0, 255.0)


def cell_dataset(dataset: tf.data.Dataset, seed: int, sigma: float) -> tf.data.Dataset:
    """:func:`cell_augment` on the image of each element, one stateless seed per element (as paper 1's)."""
    return _augmented(dataset, seed, lambda image, pair: cell_augment(image, pair, sigma))
