"""Training-time augmentation from the two papers this project follows.

**Paper 1** -- Abir et al., transfer learning for acute lymphoblastic leukaemia on C-NMC 2019 --
augments every training image on the fly inside the ``tf.data`` pipeline: random up-down flip,
random left-right flip, a transpose when a uniform draw exceeds 0.75 (so with probability 0.25;
square images only, since a transpose swaps height and width), brightness, contrast and
saturation jitter, then a random crop resized back to the input size. :func:`paper1_augment`
does this for one image and :func:`paper1_map` wraps it for ``Dataset.map``.

**Paper 2** -- Thiriveedhi et al., ALL-Net (PeerJ Computer Science 2025) -- balances the classes
offline: only the minority classes are augmented, with the Keras ``ImageDataGenerator`` recipe
(rotation 10 degrees, width and height shift 0.1, shear 0.2, zoom 0.2, horizontal flip, fill mode
"nearest"), until every class has as many images as the largest. Keras 3 has no
``ImageDataGenerator``, so :func:`paper2_transform` rebuilds its maths: it draws the same
parameters from the same distributions, composes the same matrices about the image centre, and
resamples each image once with ``keras.ops.image.affine_transform`` (bilinear, fill "nearest").
:func:`balance_minority_classes` applies it.

Why not chain ``keras.layers.RandomRotation``/``RandomTranslation``/``RandomShear``/``RandomZoom``/
``RandomFlip``? Each layer resamples the image again (four bilinear passes blur the cells), and two
of them mean something else than the generator's arguments: ``RandomShear`` shears about the top-left
corner along both axes by a fraction of the image, where ``shear_range=0.2`` is an angle of at most
0.2 *degrees* along one axis about the centre; ``RandomZoom(0.2)`` keeps the aspect ratio, where
``zoom_range=0.2`` draws the two axis zooms independently from [0.8, 1.2]. One composed matrix is
both faithful and a single interpolation.

Images are float32 in [0, 255] for paper 1 (the models scale pixels themselves) and uint8 for
paper 2 (the generated images join the uint8 originals). Balanced class weights live in
:func:`allxai.trainer.train.balanced_class_weights`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import numpy.typing as npt
import tensorflow as tf

UInt8Images = npt.NDArray[np.uint8]

# --------------------------------------------------------------------------------------------
# Paper 1: on-the-fly augmentation in the tf.data pipeline
# --------------------------------------------------------------------------------------------

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
            output. ``None`` draws a fresh seed from TensorFlow's global (stateful) generator, which
            honours ``tf.random.set_seed``, so both cases share one code path.
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


def paper1_map(
    params: Paper1Params = Paper1Params(),
) -> Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    """A function for ``dataset.map``: ``(image, label) -> (augmented image, label)``.

    The image may be uint8 or float32 in [0, 255]; the output is float32 in [0, 255]. Each call
    draws a fresh seed (see :func:`paper1_augment`), so every epoch sees new augmentations.
    """

    def augment(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return paper1_augment(tf.cast(image, tf.float32), None, params), label

    return augment


# --------------------------------------------------------------------------------------------
# Paper 2: offline balancing of the minority classes
# --------------------------------------------------------------------------------------------


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
    #: How many images were generated for each class present (0 for the largest).
    added_per_class: dict[int, int] = field(default_factory=dict)


def balance_minority_classes(
    images: UInt8Images,
    labels: npt.NDArray[np.integer[Any]],
    seed: int,
    params: Paper2Params = Paper2Params(),
    batch_size: int = 64,
) -> BalanceResult:
    """Augment every class smaller than the largest until all classes have the same count.

    For each smaller class (in increasing label order), source images of that class are drawn with
    replacement by a NumPy generator seeded with ``seed`` and transformed with the paper-2 recipe.
    The largest class is untouched. The output is deterministic for a given ``seed`` and does not
    depend on ``batch_size``, which only bounds how many images are transformed at once.
    """
    _check_images(images)
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"expected one label per image, got labels {labels.shape} for images {images.shape}")
    if len(images) == 0:
        raise ValueError("cannot balance an empty dataset")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    classes, counts = np.unique(labels, return_counts=True)
    target = int(counts.max())
    rng = np.random.default_rng(seed)
    height, width = images.shape[1:3]
    # Draw every source index and matrix up front (a few floats each), so batching cannot change them.
    sources: list[npt.NDArray[np.intp]] = []
    added: dict[int, int] = {}
    for cls, count in zip(classes.tolist(), counts.tolist(), strict=True):
        need = target - count
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
