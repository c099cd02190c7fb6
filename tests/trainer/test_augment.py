"""The two papers' augmentation: Abir et al.'s on-the-fly recipe and ALL-Net's offline balancing."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from allxai.trainer.augment import Paper1Params, paper1_augment, paper1_dataset
from allxai.trainer.balance import Paper2Params, balance_minority_classes, paper2_transform
from tests.conftest import REPO

#: Paper 1 with every step but the flips and the transpose switched off.
GEOMETRY_ONLY = Paper1Params(
    max_brightness=0.0, contrast=(1.0, 1.0), saturation=(1.0, 1.0), crop_fraction=(1.0, 1.0)
)
#: Paper 2 with nothing at all: the identity.
NO_TRANSFORM = Paper2Params(rotation_degrees=0.0, shift=0.0, shear=0.0, zoom=0.0, horizontal_flip=False)


def _random_image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray[Any, Any]:
    return np.random.default_rng(seed).uniform(0, 255, shape).astype(np.float32)


def _augment_many(image: np.ndarray[Any, Any], count: int, params: Paper1Params) -> np.ndarray[Any, Any]:
    """Run paper1_augment over seeds (i, 7) for i < count inside tf.data (graph mode), stacked."""
    seeds = tf.stack([tf.range(count, dtype=tf.int64), tf.fill([count], tf.constant(7, tf.int64))], axis=1)
    dataset = tf.data.Dataset.from_tensor_slices(seeds).map(lambda seed: paper1_augment(image, seed, params))
    return np.stack([out.numpy() for out in dataset])


def _dihedral(image: np.ndarray[Any, Any]) -> dict[str, np.ndarray[Any, Any]]:
    """The eight flip/transpose variants of a square image, by name."""
    out = {}
    for transposed in (False, True):
        base = image.transpose(1, 0, 2) if transposed else image
        for ud in (False, True):
            for lr in (False, True):
                variant = base[::-1] if ud else base
                variant = variant[:, ::-1] if lr else variant
                out[f"{'T' if transposed else ''}{'U' if ud else ''}{'L' if lr else ''}"] = variant
    return out


# --- Paper 1 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(32, 32, 3), (24, 32, 3)])
def test_paper1_keeps_shape_dtype_and_range(shape: tuple[int, int, int]) -> None:
    image = _random_image(shape)
    for seed in range(4):
        out = paper1_augment(tf.constant(image), tf.constant([seed, 1]))
        assert out.shape == shape and out.dtype == tf.float32
        assert float(tf.reduce_min(out)) >= 0.0 and float(tf.reduce_max(out)) <= 255.0


def test_paper1_is_reproducible_per_seed_and_differs_across_seeds() -> None:
    image = tf.constant(_random_image((32, 32, 3)))
    first = paper1_augment(image, tf.constant([3, 4])).numpy()
    again = paper1_augment(image, tf.constant([3, 4])).numpy()
    other = paper1_augment(image, tf.constant([5, 6])).numpy()
    assert np.array_equal(first, again)
    assert not np.allclose(first, other)
    assert not np.allclose(first, image.numpy())


def test_paper1_without_seed_draws_fresh_randomness() -> None:
    image = tf.constant(_random_image((32, 32, 3)))
    outs = [paper1_augment(image).numpy() for _ in range(3)]
    assert not (np.allclose(outs[0], outs[1]) and np.allclose(outs[1], outs[2]))


def test_paper1_flips_are_exact_and_both_happen() -> None:
    image = _random_image((8, 8, 3))
    variants = _dihedral(image)
    outs = _augment_many(image, 64, Paper1Params(**{**GEOMETRY_ONLY.__dict__, "transpose_threshold": 1.0}))
    names = [next(name for name, v in variants.items() if np.array_equal(out, v)) for out in outs]
    # Without the transpose, every output is exactly one of the four flips, and each flip occurs.
    assert set(names) == {"", "U", "L", "UL"}
    assert any(np.array_equal(out, np.fliplr(image)) for out in outs)


def test_paper1_transposes_about_a_quarter_of_the_time() -> None:
    image = _random_image((4, 4, 3), seed=1)
    variants = _dihedral(image)
    outs = _augment_many(image, 200, GEOMETRY_ONLY)
    names = [next(name for name, v in variants.items() if np.array_equal(out, v)) for out in outs]
    share = sum(name.startswith("T") for name in names) / len(names)
    assert 0.10 <= share <= 0.40


def test_paper1_never_transposes_a_non_square_image() -> None:
    image = _random_image((4, 6, 3), seed=2)
    outs = _augment_many(image, 40, Paper1Params(**{**GEOMETRY_ONLY.__dict__, "transpose_threshold": 0.0}))
    flips = [image, image[::-1], image[:, ::-1], image[::-1, ::-1]]
    assert all(any(np.array_equal(out, flip) for flip in flips) for out in outs)


def test_paper1_shifts_a_grey_image_by_at_most_the_brightness_bound() -> None:
    # Flips, transpose, crop, contrast and saturation all leave a flat grey image alone;
    # only the brightness shift moves it.
    grey = np.full((16, 16, 3), 128.0, np.float32)
    outs = _augment_many(grey, 30, Paper1Params())
    shifts = outs.reshape(len(outs), -1).mean(axis=1) - 128.0
    assert np.allclose(outs, outs.mean(axis=(1, 2, 3), keepdims=True), atol=1e-3)  # still flat
    assert np.all(np.abs(shifts) <= 0.1 * 255 + 1e-3)
    assert shifts.std() > 5  # the shift really varies


def test_paper1_crop_zooms_in() -> None:
    # A vertical ramp: a crop of half the side, resized back, spans about half the ramp.
    ramp = np.repeat(np.linspace(0, 255, 32, dtype=np.float32)[:, None, None], 32, axis=1).repeat(3, axis=2)
    params = Paper1Params(
        **{**GEOMETRY_ONLY.__dict__, "crop_fraction": (0.5, 0.5), "transpose_threshold": 1.0}
    )
    outs = _augment_many(ramp, 10, params)
    spans = outs.max(axis=(1, 2, 3)) - outs.min(axis=(1, 2, 3))
    assert np.all(np.abs(spans - 0.5 * 255) < 0.1 * 255)


def test_paper1_saturation_jitter_keeps_grey_levels_and_changes_colour() -> None:
    colour = np.broadcast_to(np.array([200.0, 100.0, 50.0], np.float32), (8, 8, 3)).copy()
    params = Paper1Params(**{**GEOMETRY_ONLY.__dict__, "saturation": (0.5, 0.5)})
    out = paper1_augment(tf.constant(colour), tf.constant([1, 1]), params).numpy()
    # Halving the saturation keeps the max channel (HSV value) and pulls the others towards it.
    assert np.allclose(out[0, 0], [200.0, 150.0, 125.0], atol=0.5)


def test_paper1_dataset_augments_images_and_passes_the_rest_through() -> None:
    images = np.random.default_rng(3).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    labels = np.array([0, 1, 0, 1, 1, 0], np.int64)
    weights = np.linspace(0.5, 1.5, 6).astype(np.float32)
    dataset = paper1_dataset(tf.data.Dataset.from_tensor_slices((images, labels, weights)), seed=1).batch(3)
    batches = list(dataset)
    out_images = np.concatenate([b[0].numpy() for b in batches])
    assert out_images.shape == images.shape and out_images.dtype == np.float32
    assert out_images.min() >= 0.0 and out_images.max() <= 255.0
    assert np.array_equal(np.concatenate([b[1].numpy() for b in batches]), labels)
    assert np.array_equal(np.concatenate([b[2].numpy() for b in batches]), weights)
    assert not np.allclose(out_images, images.astype(np.float32))


def _epochs(dataset: tf.data.Dataset, count: int = 2) -> list[np.ndarray[Any, Any]]:
    """Every image of ``count`` passes over ``dataset`` (each pass is a new iteration, as an epoch)."""
    return [np.concatenate([batch[0].numpy() for batch in dataset]) for _ in range(count)]


def test_paper1_is_reproducible_under_a_fixed_seed_whatever_the_parallelism() -> None:
    images = np.random.default_rng(4).integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    labels = np.zeros(24, np.int64)

    def pipeline(seed: int, parallel: int) -> tf.data.Dataset:
        source = tf.data.Dataset.from_tensor_slices((images, labels))
        return paper1_dataset(source, seed, num_parallel_calls=parallel).batch(8)

    serial = _epochs(pipeline(7, 1))
    parallel = _epochs(pipeline(7, tf.data.AUTOTUNE))
    for one, other in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(one, other)
    assert not np.array_equal(serial[0], serial[1]), "each epoch draws new augmentations"
    assert not np.array_equal(serial[0], _epochs(pipeline(8, tf.data.AUTOTUNE), 1)[0]), "seeds matter"


def test_the_training_pipeline_repeats_itself_under_a_fixed_seed() -> None:
    """Shuffle, paper-1 augmentation and class weights together, as :func:`fit` builds them."""
    from allxai.trainer.fit import _dataset

    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    onehot = np.eye(2, dtype=np.float32)[rng.integers(0, 2, 20)]
    weights = rng.uniform(0.5, 2.0, 20).astype(np.float32)

    def run(seed: int) -> list[np.ndarray[Any, Any]]:
        return _epochs(_dataset(images, onehot, 8, seed, True, "paper1", weights))

    first, again, other = run(3), run(3), run(4)
    for one, two in zip(first, again, strict=True):
        np.testing.assert_array_equal(one, two)
    assert not np.array_equal(first[0], other[0])


@pytest.mark.parametrize(
    "kwargs", [{"max_brightness": -1.0}, {"contrast": (1.2, 0.8)}, {"crop_fraction": (0.0, 1.0)}]
)
def test_paper1_params_reject_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must"):
        Paper1Params(**kwargs)


# --- Paper 2 ---------------------------------------------------------------------------------


def _cells(count: int, colour: tuple[int, int, int], seed: int, size: int = 32) -> np.ndarray[Any, Any]:
    """Smooth blobs on a flat background of ``colour``: mean colour near ``colour``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 6) ** 2))
        out[i] = np.clip(np.array(colour) + 40 * blob[..., None] - 20, 0, 255).astype(np.uint8)
    return out


def test_paper2_without_transforms_is_the_identity() -> None:
    images = np.random.default_rng(4).integers(0, 256, (3, 9, 12, 3), dtype=np.uint8)
    assert np.array_equal(paper2_transform(images, 1, NO_TRANSFORM), images)


def test_paper2_flip_is_an_exact_mirror_half_the_time() -> None:
    images = np.random.default_rng(5).integers(0, 256, (40, 8, 10, 3), dtype=np.uint8)
    params = Paper2Params(rotation_degrees=0.0, shift=0.0, shear=0.0, zoom=0.0, horizontal_flip=True)
    out = paper2_transform(images, 2, params)
    mirrored = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images, strict=True)]
    same = [np.array_equal(o, i) for o, i in zip(out, images, strict=True)]
    assert all(m != s for m, s in zip(mirrored, same, strict=True))
    assert 8 <= sum(mirrored) <= 32


def test_paper2_rotation_zoom_shear_turn_about_the_centre() -> None:
    # Without shift, the transforms fix the centre pixel of an odd-sized image (the flip too).
    images = np.random.default_rng(6).integers(0, 256, (10, 33, 33, 3), dtype=np.uint8)
    out = paper2_transform(images, 3, Paper2Params(shift=0.0))
    assert np.array_equal(out[:, 16, 16], images[:, 16, 16])
    assert all(not np.array_equal(o, i) for o, i in zip(out, images, strict=True))


def test_paper2_is_reproducible_and_keeps_the_picture() -> None:
    images = _cells(6, (180, 120, 200), seed=7)
    first = paper2_transform(images, 11)
    assert first.shape == images.shape and first.dtype == np.uint8
    assert np.array_equal(first, paper2_transform(images, 11))
    assert not np.array_equal(first, paper2_transform(images, 12))
    for out, src in zip(first, images, strict=True):
        assert not np.array_equal(out, src)
        # Fill mode "nearest" repeats the border, so the mean colour barely moves.
        assert np.abs(out.mean(axis=(0, 1)) - src.mean(axis=(0, 1))).max() < 6


def test_balance_equalises_classes_and_keeps_the_originals() -> None:
    colours = {0: (200, 80, 80), 1: (80, 200, 80), 2: (80, 80, 200)}
    counts = {0: 9, 1: 3, 2: 6}
    images = np.concatenate([_cells(counts[c], colours[c], seed=c) for c in (1, 0, 2)])
    labels = np.repeat(np.array([1, 0, 2]), [counts[1], counts[0], counts[2]])
    result = balance_minority_classes(images, labels, seed=5, batch_size=4, classes="all_smaller")

    assert result.added_per_class == {0: 0, 1: 6, 2: 3}
    assert np.bincount(result.labels).tolist() == [9, 9, 9]
    assert result.images.dtype == np.uint8 and result.labels.dtype == np.int64
    assert result.images.shape == (27, 32, 32, 3)
    # Originals first and unchanged; the majority class gains nothing.
    assert np.array_equal(result.images[: len(images)], images)
    assert np.array_equal(result.labels[: len(images)], labels)
    assert np.all(result.labels[len(images) :] != 0)
    # Each generated image is new, yet still looks like its class.
    for image, label in zip(result.images[len(images) :], result.labels[len(images) :], strict=True):
        sources = images[labels == label]
        assert not any(np.array_equal(image, src) for src in sources)
        mean = image.reshape(-1, 3).mean(axis=0)
        assert np.abs(mean - np.array(colours[int(label)])).max() < 15


def test_balance_augments_only_the_smallest_class_by_default() -> None:
    """Paper 2 augments the minority class (Benign) only; the others keep their counts."""
    counts = {0: 3, 1: 9, 2: 6}  # label 0 plays Benign, the minority
    images = np.concatenate([_cells(counts[c], (60 + 60 * c, 120, 120), seed=c) for c in (0, 1, 2)])
    labels = np.repeat(np.array([0, 1, 2]), [counts[0], counts[1], counts[2]])
    result = balance_minority_classes(images, labels, seed=5)
    assert result.added_per_class == {0: 6, 1: 0, 2: 0}
    assert np.bincount(result.labels).tolist() == [9, 9, 6], "class 2 is smaller but not the minority"
    assert np.all(result.labels[len(images) :] == 0)
    # Explicit labels choose the classes; a label no image has is refused in words.
    chosen = balance_minority_classes(images, labels, seed=5, classes=[2])
    assert chosen.added_per_class == {0: 0, 1: 0, 2: 3}
    with pytest.raises(ValueError, match=r"cannot augment labels \[7\]"):
        balance_minority_classes(images, labels, seed=5, classes=[7])
    with pytest.raises(ValueError, match="classes must be"):
        balance_minority_classes(images, labels, seed=5, classes="largest")  # type: ignore[arg-type]


def test_the_paper2_recipes_augment_the_minority_class_only() -> None:

    from allxai.trainer.config import load_config

    configs = REPO / "configs"
    for name in ("paper2-allnet-augmented.toml", "paper2-allnet-augmented-cpu.toml"):
        config = load_config(configs / name)
        assert config.augment == "paper2" and config.balance_classes == "smallest"
    assert load_config(None).balance_classes == "smallest"
    assert load_config(None, {"balance_classes": "all_smaller"}).balance_classes == "all_smaller"


def test_balance_is_deterministic_and_independent_of_batch_size() -> None:
    images = np.concatenate([_cells(5, (150, 150, 150), seed=1), _cells(2, (90, 60, 160), seed=2)])
    labels = np.array([0] * 5 + [1] * 2)
    first = balance_minority_classes(images, labels, seed=9, batch_size=1)
    again = balance_minority_classes(images, labels, seed=9, batch_size=64)
    other = balance_minority_classes(images, labels, seed=10)
    assert np.array_equal(first.images, again.images) and np.array_equal(first.labels, again.labels)
    assert not np.array_equal(first.images, other.images)


def test_balance_of_a_balanced_set_adds_nothing() -> None:
    images = _cells(4, (120, 60, 90), seed=3)
    result = balance_minority_classes(images, np.array([0, 1, 0, 1]), seed=0)
    assert result.added_per_class == {0: 0, 1: 0}
    assert np.array_equal(result.images, images)


def test_balance_rejects_mismatched_labels() -> None:
    with pytest.raises(ValueError, match="one label per image"):
        balance_minority_classes(_cells(3, (1, 2, 3), seed=0), np.array([0, 1]), seed=0)
