"""LIME made fast and faithful: lime's masks, images and surrogate, with the model kept busy.

The stages: segment the image (concurrently with classifying it), draw lime's masks from its
random stream, predict the perturbed images in batches with several in flight (the images built
by one gather here, or next to the model by its ``compose`` signature, which moves the masks
instead of the pixels), and fit the surrogate with lime's own ``LimeBase``. With the same
segmentation, seed and predict function the weights equal ``explain_instance``'s.

Adaptive sampling draws in rounds (``round_size``, growing to an eighth of the samples so far, so
the refits cost O(n) in all rather than O(n^2)) and stops, after ``min_samples`` and at the latest
at ``num_samples``, once the top-k superpixels have not changed for ``patience`` rounds and the
boundary of the top-k is ``z`` standard errors clear in the weighted linear fit (see
:func:`surrogate.top_k_separated`; a near-tie keeps sampling). The stream of masks is lime's
either way, so an early stop is a prefix of the full explanation.

CPU work (segmentation, gateway-side composition, the fits) runs on a small pool of its own, so
explanations cannot take every thread from the rest of the process; a cancelled explanation
waits for the piece of work already running to end before it returns, so whoever counts running
explanations does not count it gone while it still holds a core.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal, ParamSpec, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from allxai.explainer import perturb, quality, surrogate
from allxai.explainer.result import ExplanationResult, top_segments
from allxai.explainer.segmentation import SegmentationError, SegmentationSpec, isolate, segment

Probs = npt.NDArray[np.float32]
Image = npt.NDArray[np.uint8]
ProgressFn = Callable[[int, int], None]
#: Where the perturbed images are built: next to the model when it can (auto), here, or by the model.
CompositionMode = Literal["auto", "gateway", "model"]
_P = ParamSpec("_P")
_T = TypeVar("_T")

#: Threads for explanations' CPU work (half the cores, at least 2): the rest stay for the model.
_CPU = ThreadPoolExecutor(max(2, (os.cpu_count() or 2) // 2), thread_name_prefix="allxai-explain")


async def _in_thread(fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """``fn`` on the explanation threads; if the caller is cancelled, wait for ``fn`` to end first."""
    future = asyncio.get_running_loop().run_in_executor(_CPU, functools.partial(fn, *args, **kwargs))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait({future})
        if not future.cancelled():
            future.exception()  # retrieved: the caller is gone, its error with it
        raise


class Predictor(Protocol):
    """The model as the engine sees it; both calls may run concurrently."""

    @property
    def has_composition(self) -> bool:
        """Whether :meth:`predict_composed` builds the perturbed images next to the model."""

    async def predict(self, images: Image) -> Probs:
        """Probabilities ``[N, C]`` for uint8 images ``[N, H, W, 3]``."""

    async def predict_composed(self, composition: perturb.Composition) -> Probs:
        """Probabilities for the images ``composition.images()`` would build, built next to the model."""


@dataclass(frozen=True)
class ExplainSettings:
    """How to explain. Defaults are lime's where lime has one; the engine trusts the values as given."""

    num_samples: int = 1000
    top_k: int = 5
    compose_batch_size: int = 1000
    num_features: int = 100000
    positive_only: bool = True
    seed: int = 0
    batch_size: int = 64
    max_in_flight: int = 4
    segmentation: SegmentationSpec = field(default_factory=SegmentationSpec)
    hide_color: tuple[int, int, int] | None = None
    composition: CompositionMode = "auto"
    adaptive: bool = False
    min_samples: int = 150
    round_size: int = 50
    max_segments: int = 1000
    patience: int = 1
    z: float = 2.0
    stability_refits: int = 5


async def explain(
    image: Image,
    predictor: Predictor,
    settings: ExplainSettings,
    label: int | None = None,
    progress: ProgressFn | None = None,
    cells: npt.NDArray[np.bool_] | None = None,
    blank: npt.NDArray[np.bool_] | None = None,
) -> ExplanationResult:
    """Explain ``label`` (default: the predicted class) for one uint8 image ``[H, W, 3]``.

    ``cells`` marks the white-cell pixels the quality figures count weight on (the gateway passes the
    mask its preprocessing found); without it the localiser runs on ``image``. ``blank`` marks pixels that
    hold no image (a cell crop's blanked surround): they become one superpixel of their own.

    ``settings`` are used as they are: whoever builds them from a request checks them first (the
    gateway does in one place), and composition ``"model"`` needs a predictor with
    ``has_composition``. Raises :class:`SegmentationError` when the segmentation fails or gives fewer
    than 2 or more than ``settings.max_segments`` superpixels, and ``ValueError`` when ``label`` is
    not one of the model's classes.
    """
    if label is not None and label < 0:
        raise ValueError(f"label must not be negative, got {label}")
    segments = await _in_thread(segment, image, settings.segmentation, settings.seed)
    if blank is not None:
        segments = isolate(segments, blank)
    fill = (
        perturb.mean_fill(image, segments)
        if settings.hide_color is None
        else perturb.solid_fill(image, settings.hide_color)
    )
    n_features = int(segments.max()) + 1
    _check_segments(n_features, settings)
    random_state = np.random.RandomState(settings.seed)
    sampler = perturb.MaskSampler(random_state, n_features)
    use_model = settings.composition == "model" or (
        settings.composition == "auto" and predictor.has_composition
    )
    batches = _Batches(image, fill, segments, predictor, settings, use_model, progress)

    # lime's first mask row is all ones: its prediction is the unperturbed image's, so the image
    # is classified with the samples rather than by a call of its own.
    masks_parts: list[npt.NDArray[np.int64]] = []
    probs_parts: list[Probs] = []
    stopped_early = False
    target = label
    if settings.adaptive:
        previous: list[int] | None = None
        steady = 0
        while sum(len(m) for m in masks_parts) < settings.num_samples:
            done = sum(len(m) for m in masks_parts)
            # Rounds grow with the samples so far: every round refits on all of them.
            size = max(settings.round_size, done // 8)
            masks = sampler.draw(min(size, settings.num_samples - done))
            masks_parts.append(masks)
            probs_parts.append(await batches.run(masks))
            target = _label(probs_parts[0][0], target)
            if done + len(masks) < settings.min_samples:
                continue
            so_far_masks, so_far_probs = np.concatenate(masks_parts), np.concatenate(probs_parts)
            fit = await _in_thread(
                surrogate.fit, so_far_masks, so_far_probs, target, random_state, settings.num_features
            )
            current = sorted(top_segments(fit.weights, settings.top_k, settings.positive_only))
            steady = steady + 1 if current == previous else 0
            previous = current
            separated = await _in_thread(
                surrogate.top_k_separated,
                so_far_masks,
                so_far_probs[:, target],
                settings.top_k,
                settings.z,
                settings.positive_only,
                [s for s, _ in fit.weights],
            )
            if steady >= settings.patience and separated:
                stopped_early = done + len(masks) < settings.num_samples
                break
    else:
        masks = sampler.draw(settings.num_samples)
        masks_parts.append(masks)
        probs_parts.append(await batches.run(masks))
    probabilities = probs_parts[0][0]
    target = _label(probabilities, target)

    all_masks = np.concatenate(masks_parts)
    all_probs = np.concatenate(probs_parts)
    fit = await _in_thread(surrogate.fit, all_masks, all_probs, target, random_state, settings.num_features)
    measured = await _in_thread(
        quality.measure,
        image,
        segments,
        all_masks,
        all_probs,
        target,
        fit,
        float(probabilities[target]),
        settings,
        cells,
    )
    # Weights that are only noise rank nothing: no superpixel is shown as the evidence.
    shown = top_segments(fit.weights, settings.top_k, settings.positive_only)
    return ExplanationResult(
        label_index=target,
        weights=fit.weights,
        top_segments=[] if measured.no_evidence else shown,
        segments=segments,
        intercept=fit.intercept,
        score=fit.score,
        local_prediction=fit.local_prediction,
        num_samples=len(all_masks),
        seed=settings.seed,
        quality=measured,
        stopped_early=stopped_early,
        composition="model" if use_model else "gateway",
        probabilities=probabilities,
    )


def _check_segments(count: int, settings: ExplainSettings) -> None:
    if count < 2:
        raise SegmentationError(
            f"the segmentation found {count} superpixel; an explanation needs at least 2 to compare "
            "(a smaller kernel_size, max_dist or scale, or more n_segments, gives more)"
        )
    if count > settings.max_segments:
        # lime's masks are samples x superpixels and the fit inverts superpixels^2: bound both.
        raise SegmentationError(
            f"the segmentation found {count} superpixels; at most {settings.max_segments} are allowed "
            "(a larger kernel_size, max_dist or scale, or fewer n_segments, gives fewer)"
        )


def _label(probabilities: Probs, label: int | None) -> int:
    """The label to explain: the one asked for (checked against the model's classes), else the top one."""
    if label is None:
        return int(np.argmax(probabilities))
    if label >= len(probabilities):
        raise ValueError(f"label {label} is out of range: the model has {len(probabilities)} classes")
    return label


class _Batches:
    """Predicts masks in batches of ``batch_size`` with at most ``max_in_flight`` outstanding."""

    def __init__(
        self,
        image: Image,
        fill: Image,
        segments: npt.NDArray[np.int32],
        predictor: Predictor,
        settings: ExplainSettings,
        use_model: bool,
        progress: ProgressFn | None,
    ) -> None:
        self._image, self._fill, self._segments = image, fill, segments
        self._predictor = predictor
        self._settings = settings
        self._use_model = use_model
        self._progress = progress
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._done = 0

    async def _one(self, masks: npt.NDArray[np.int64]) -> Probs:
        async with self._slots:
            if self._use_model:
                out = await self._predictor.predict_composed(
                    perturb.Composition(self._image, self._fill, self._segments, masks.astype(np.uint8))
                )
            else:
                images = await _in_thread(perturb.compose, self._image, self._fill, self._segments, masks)
                out = await self._predictor.predict(images)
        self._done += len(masks)
        if self._progress is not None:
            self._progress(self._done, self._settings.num_samples)
        return out

    async def run(self, masks: npt.NDArray[np.int64]) -> Probs:
        # With the model composing, few large requests: the image, fill and segments travel once each.
        size = self._settings.compose_batch_size if self._use_model else self._settings.batch_size
        tasks = [asyncio.ensure_future(self._one(masks[i : i + size])) for i in range(0, len(masks), size)]
        try:
            parts = await asyncio.gather(*tasks)
        except BaseException:
            # One batch failed (or the call was cancelled): the others must not go on to the model.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return np.concatenate(parts).astype(np.float32, copy=False)
