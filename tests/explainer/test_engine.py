"""The fast explainer: faithful to lime to 1e-6, reproducible, adaptive, with quality figures."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from lime import lime_image
from lime.wrappers.scikit_image import SegmentationAlgorithm

from allxai.explainer import regions
from allxai.explainer.engine import ExplainSettings, explain
from allxai.explainer.segmentation import SegmentationSpec, segment
from allxai.trainer.synthetic import make_cell_image
from tests.support.predictors import FnPredictor


def nucleus_score(images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """A smooth 3-class function of where violet pixels are: deterministic, batch-independent."""
    x = images.astype(np.float32)
    violet = ((x[..., 2] - x[..., 1]) / 255.0).clip(0, 1)
    h = images.shape[1]
    centre = violet[:, h // 4 : 3 * h // 4, h // 4 : 3 * h // 4].mean(axis=(1, 2))
    left = violet[:, :, : h // 2].mean(axis=(1, 2))
    logits = np.stack([4 * centre, 3 * left, 1 - centre], axis=1)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def cell() -> npt.NDArray[np.uint8]:
    return make_cell_image(3, 96, np.random.default_rng(3))


def lime_reference(image, fn, label, seed, num_samples):  # type: ignore[no-untyped-def]
    explainer = lime_image.LimeImageExplainer(random_state=seed)
    seg = SegmentationAlgorithm("quickshift", kernel_size=4, max_dist=200, ratio=0.2, random_seed=seed)
    return explainer.explain_instance(
        image,
        fn,
        labels=(label,),
        top_labels=None,
        num_samples=num_samples,
        segmentation_fn=seg,
        random_seed=seed,
    )


@pytest.mark.parametrize("composition", [False, True], ids=["gateway-composes", "model-composes"])
def test_weights_equal_lime_explain_instance(cell: npt.NDArray[np.uint8], composition: bool) -> None:
    reference = lime_reference(cell, nucleus_score, 0, seed=5, num_samples=300)
    predictor = FnPredictor(nucleus_score, composition)
    ours = asyncio.run(
        explain(cell, predictor, ExplainSettings(num_samples=300, seed=5, batch_size=32), label=0)
    )
    assert np.array_equal(ours.segments, reference.segments)
    expected = dict(reference.local_exp[0])
    assert [s for s, _ in ours.weights] == [s for s, _ in reference.local_exp[0]]
    for segment_id, weight in ours.weights:
        assert weight == pytest.approx(expected[segment_id], abs=1e-6)
    assert ours.intercept == pytest.approx(reference.intercept[0], abs=1e-6)
    assert ours.score == pytest.approx(reference.score, abs=1e-6)
    assert ours.composition == ("model" if composition else "gateway")
    # Row 0 is the unperturbed image: no call of its own. The gateway composes in batches of 32;
    # the model gets all masks in one request (its compose signature chunks them itself).
    assert sum(predictor.calls) == 300
    assert sorted(predictor.calls) == ([300] if composition else [12] + [32] * 9)


def test_weights_equal_lime_with_the_real_model(model_base: Path, cell: npt.NDArray[np.uint8]) -> None:
    import tensorflow as tf

    from tests.conftest import INPUT_SIZE

    serve = tf.saved_model.load(str(model_base / "allnet" / "1")).signatures["serving_default"]

    def model(images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        return np.asarray(serve(images=tf.constant(images.astype(np.uint8)))["probabilities"].numpy())

    image = cell[:INPUT_SIZE, :INPUT_SIZE].copy()
    reference = lime_reference(image, model, 1, seed=2, num_samples=200)
    ours = asyncio.run(
        explain(image, FnPredictor(model, False), ExplainSettings(num_samples=200, seed=2), label=1)
    )
    expected = dict(reference.local_exp[1])
    for segment_id, weight in ours.weights:
        assert weight == pytest.approx(expected[segment_id], abs=1e-6)


def test_same_seed_same_answer_other_seed_other_masks(cell: npt.NDArray[np.uint8]) -> None:
    def run(seed: int):  # type: ignore[no-untyped-def]
        return asyncio.run(
            explain(cell, FnPredictor(nucleus_score, True), ExplainSettings(num_samples=120, seed=seed))
        )

    a, b, c = run(4), run(4), run(9)
    assert a.weights == b.weights and a.seed == 4
    assert a.weights != c.weights


def round_ends(num_samples: int, round_size: int) -> list[int]:
    """Where adaptive rounds end: ``round_size`` at first, then an eighth of the samples so far."""
    ends, done = [], 0
    while done < num_samples:
        done += min(max(round_size, done // 8), num_samples - done)
        ends.append(done)
    return ends


def test_adaptive_sampling_stops_early_on_a_stable_top_k(cell: npt.NDArray[np.uint8]) -> None:
    # Top 2: on this cell the 4th and 5th positive weights are near zero even at 5,000 samples,
    # so a top 5 is a coin flip that adaptive sampling rightly keeps sampling on.
    settings = ExplainSettings(
        num_samples=1000, seed=1, adaptive=True, min_samples=100, round_size=50, patience=2, top_k=2
    )
    result = asyncio.run(explain(cell, FnPredictor(nucleus_score, True), settings, label=0))
    assert result.stopped_early
    assert 100 <= result.num_samples < 1000 and result.num_samples in round_ends(1000, 50)
    full = asyncio.run(
        explain(
            cell,
            FnPredictor(nucleus_score, True),
            ExplainSettings(num_samples=5000, seed=1, top_k=2),
            label=0,
        )
    )
    assert set(result.top_segments) == set(full.top_segments)


def _linear_samples(
    coefficients: list[float], n: int = 2000, noise: float = 0.05, seed: int = 0
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """lime-like masks (row 0 all ones) and a target linear in them, plus noise."""
    rng = np.random.default_rng(seed)
    masks = rng.integers(0, 2, (n, len(coefficients))).astype(np.int64)
    masks[0] = 1
    target = masks @ np.array(coefficients) + noise * rng.standard_normal(n)
    return masks, target.astype(np.float32)


def test_top_k_separation_tests_the_boundary_the_answer_uses() -> None:
    from allxai.explainer.surrogate import top_k_separated

    # By signed weight: 3 clearly positive, then a zero-effect one: a clear top 2, and a top 3.
    masks, y = _linear_samples([0.5, 0.4, 0.3, 0.0, -0.2])
    assert top_k_separated(masks, y, 2, 2.0, positive_only=True)
    assert top_k_separated(masks, y, 3, 2.0, positive_only=True)
    # Fewer positive weights than k: the set is every positive one, and the zero-effect
    # superpixel's sign is a coin flip, so the set is not settled.
    assert not top_k_separated(masks, y, 4, 2.0, positive_only=True)
    # By |weight| (positive_only false), a strong negative weight belongs in the top 2 ...
    masks, y = _linear_samples([0.5, -0.6, 0.1, 0.0])
    assert top_k_separated(masks, y, 2, 2.0, positive_only=False)
    # ... and a near-tie in size between a negative and a positive weight is not settled.
    masks, y = _linear_samples([0.5, -0.501, 0.1, 0.0])
    assert not top_k_separated(masks, y, 1, 2.0, positive_only=False)
    # Only the superpixels lime's feature selection kept count.
    masks, y = _linear_samples([0.5, 0.4, 0.39, 0.0])
    assert top_k_separated(masks, y, 1, 2.0, positive_only=True, features=[0, 3])
    # A target that never moves has nothing to separate.
    assert top_k_separated(masks, np.full(len(masks), 0.3, np.float32), 2, 2.0)


def test_a_failing_batch_stops_the_others(cell: npt.NDArray[np.uint8]) -> None:
    class Failing(FnPredictor):
        async def predict(self, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
            self.calls.append(len(images))
            if len(self.calls) == 2:
                raise RuntimeError("model server went away")
            # The others never answer, so no slot frees for a further batch however slow the machine
            # (answering after a sleep let a loaded machine start more before the failure landed).
            await asyncio.Event().wait()
            return self.fn(images)

    predictor = Failing(nucleus_score, False)

    async def run() -> int:
        settings = ExplainSettings(num_samples=2000, batch_size=20, max_in_flight=4, seed=1)
        with pytest.raises(RuntimeError, match="went away"):
            await explain(cell, predictor, settings)
        await asyncio.sleep(0.3)  # anything still running would call the model meanwhile
        return len(predictor.calls)

    assert asyncio.run(run()) <= 4  # the failing call and the batches already in flight, no more


def test_segmentations_with_too_few_or_too_many_superpixels_are_refused(
    cell: npt.NDArray[np.uint8],
) -> None:
    from allxai.explainer.segmentation import SegmentationError

    one = ExplainSettings(
        num_samples=20, segmentation=SegmentationSpec("quickshift", {"kernel_size": 60, "max_dist": 1e5})
    )
    with pytest.raises(SegmentationError, match="at least 2"):
        asyncio.run(explain(cell, FnPredictor(nucleus_score, False), one))
    many = ExplainSettings(num_samples=20, max_segments=5)  # the cell has 7
    with pytest.raises(SegmentationError, match="at most 5"):
        asyncio.run(explain(cell, FnPredictor(nucleus_score, False), many))
    with pytest.raises(ValueError, match="out of range"):
        asyncio.run(
            explain(cell, FnPredictor(nucleus_score, False), ExplainSettings(num_samples=20), label=3)
        )


def test_quality_figures(cell: npt.NDArray[np.uint8]) -> None:
    # A black hide colour: with lime's mean-colour fill a hidden nucleus stays violet, and this toy
    # score (unlike a CNN) only sees colour.
    settings = ExplainSettings(num_samples=300, seed=1, hide_color=(0, 0, 0))
    result = asyncio.run(explain(cell, FnPredictor(nucleus_score, False), settings, label=0))
    q = result.quality
    assert q is not None
    assert 0.5 < q.r2 <= 1.0 and 0.0 <= q.stability <= 1.0
    assert q.model_prediction == pytest.approx(float(nucleus_score(cell[None])[0, 0]))
    assert abs(q.local_prediction - q.model_prediction) < 0.2
    assert q.cell_share + q.background_share + q.corner_share == pytest.approx(1.0)
    assert q.cell_share > 0.5, "the score is computed from the nucleus, so the weight must sit on the cell"


def test_a_corner_shortcut_shows() -> None:
    """A model that reads only the bottom-right corner (the Aria scale bar) is caught by corner_share."""
    image = make_cell_image(1, 96, np.random.default_rng(0))
    image[84:94, 80:94] = 255  # a white label with a black bar, inside the bottom-right corner square
    image[88:90, 83:91] = 0

    def scale_bar(images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        dark = (images[:, 84:94, 80:94].max(axis=3) < 60).mean(axis=(1, 2)) * 7
        return np.stack([dark, 1 - dark], axis=1).astype(np.float32)

    result = asyncio.run(
        explain(image, FnPredictor(scale_bar, True), ExplainSettings(num_samples=300, seed=0), label=0)
    )
    assert result.quality is not None and result.quality.corner_share > 0.5


def test_cell_mask_on_real_cells(shared_data: Path) -> None:
    from PIL import Image

    bmp = np.asarray(Image.open(next((shared_data / "cnmc-sample" / "all").glob("*.bmp"))).convert("RGB"))
    mask = regions.cell_mask(bmp)
    assert 0.05 < mask.mean() < 0.8 and mask[225, 225]
    smear = np.asarray(
        Image.open(shared_data / "aria-all" / "Original" / "Pro" / "WBC-Malignant-Pro-401.jpg")
    )
    smear_mask = regions.cell_mask(smear)
    assert 0.01 < smear_mask.mean() < 0.5


@pytest.mark.parametrize(
    ("method", "params"), [("slic", {"n_segments": 30}), ("felzenszwalb", {"scale": 50.0})]
)
def test_other_segmentations_give_dense_ids(cell: npt.NDArray[np.uint8], method: str, params: dict) -> None:  # type: ignore[type-arg]
    segments = segment(cell, SegmentationSpec(method, params), seed=0)  # type: ignore[arg-type]
    assert segments.min() == 0 and set(np.unique(segments)) == set(range(segments.max() + 1))


def test_unknown_segmentation_parameter() -> None:
    with pytest.raises(ValueError, match="quickshift has no parameter n_segments"):
        SegmentationSpec("quickshift", {"n_segments": 3}).resolved()
