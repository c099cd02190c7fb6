"""The gateway's logic as plain async functions over a backend: no protobuf, no gRPC.

The servicer translates messages to these calls; tests call them directly.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from allxai.explainer.lime_plain import ExplainParams, ExplanationResult
from allxai.server.backends.base import Backend, ModelInfo, ModelSpec
from allxai.server.errors import Cancelled, InvalidInput, Overloaded
from allxai.server.settings import Settings
from allxai.trainer.preprocessing import ImageError, ImageLimits, prepare_image

ProgressFn = Callable[[int, int], None]


@dataclass
class Timings:
    """Seconds spent per stage of one request."""

    preprocess: float = 0.0
    model: float = 0.0
    explain: float = 0.0
    total: float = 0.0


@dataclass(frozen=True)
class Classification:
    """Scores in the model's class order, and the top class."""

    class_names: tuple[str, ...]
    scores: tuple[float, ...]

    @property
    def label_index(self) -> int:
        """Index of the most probable class."""
        return int(np.argmax(self.scores))

    @property
    def label(self) -> str:
        """Name of the most probable class."""
        return self.class_names[self.label_index]

    @property
    def confidence(self) -> float:
        """Probability of the most probable class."""
        return self.scores[self.label_index]


@dataclass
class ClassifyOutcome:
    """One classified image."""

    model: ModelInfo
    classification: Classification
    timings: Timings


@dataclass
class SpecimenOutcome:
    """All cells of one specimen, and its summary."""

    model: ModelInfo
    cells: list[Classification]
    counts: dict[str, int]
    blast_fraction: float
    review_first: list[int]
    timings: Timings


@dataclass
class ExplainOptions:
    """A request's explanation options; ``None`` means the server's default."""

    num_samples: int | None = None
    top_k: int = 5
    positive_only: bool = True
    seed: int | None = None
    target_label: str = ""
    batch_size: int | None = None


@dataclass
class ExplainOutcome:
    """A classification, its explanation, and the prepared image the explanation is drawn on."""

    model: ModelInfo
    classification: Classification
    explanation: ExplanationResult
    image: npt.NDArray[np.uint8]
    timings: Timings = field(default_factory=Timings)


class Diagnosis:
    """Classify and explain images with the models of one backend."""

    def __init__(self, settings: Settings, backend: Backend) -> None:
        self._settings = settings
        self._backend = backend
        self._limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)
        self._explain_slots = settings.max_concurrent_explanations

    async def model_info(self, spec: ModelSpec) -> ModelInfo:
        """The model a spec names."""
        return await self._backend.resolve(spec)

    async def _prepare(self, data: bytes, model: ModelInfo, field_name: str) -> npt.NDArray[np.uint8]:
        if not data:
            raise InvalidInput(field_name, "the request carries no image bytes")
        try:
            # Decoding is CPU work: keep it off the event loop.
            return await asyncio.to_thread(prepare_image, data, model.input_size, self._limits)
        except ImageError as exc:
            raise InvalidInput(field_name, str(exc)) from exc

    async def classify(self, data: bytes, spec: ModelSpec, timeout: float | None) -> ClassifyOutcome:
        """Classify one encoded image."""
        started = time.perf_counter()
        model = await self._backend.resolve(spec)
        image = await self._prepare(data, model, "image.data")
        prepared = time.perf_counter()
        probs = await self._backend.predict(model, image[None], timeout)
        done = time.perf_counter()
        timings = Timings(preprocess=prepared - started, model=done - prepared, total=done - started)
        return ClassifyOutcome(model, _classification(model, probs[0]), timings)

    async def classify_specimen(
        self, images: list[bytes], spec: ModelSpec, timeout: float | None
    ) -> SpecimenOutcome:
        """Classify every cell of a specimen in batches, and summarise."""
        if not images:
            raise InvalidInput("images", "the request carries no images")
        if len(images) > self._settings.max_specimen_images:
            raise InvalidInput(
                "images", f"{len(images)} images; at most {self._settings.max_specimen_images} per call"
            )
        started = time.perf_counter()
        model = await self._backend.resolve(spec)
        prepared = [await self._prepare(data, model, f"images[{i}].data") for i, data in enumerate(images)]
        t_prep = time.perf_counter()
        probs = await self._backend.predict(model, np.stack(prepared), timeout)
        done = time.perf_counter()
        cells = [_classification(model, p) for p in probs]
        counts = {name: 0 for name in model.class_names}
        for cell in cells:
            counts[cell.label] += 1
        blasts = sum(n for name, n in counts.items() if name not in model.normal_class_names)
        review = sorted(range(len(cells)), key=lambda i: cells[i].confidence)
        timings = Timings(preprocess=t_prep - started, model=done - t_prep, total=done - started)
        return SpecimenOutcome(model, cells, counts, blasts / len(cells), review, timings)

    async def explain(
        self,
        data: bytes,
        spec: ModelSpec,
        options: ExplainOptions,
        timeout: float | None,
        progress: ProgressFn | None = None,
    ) -> ExplainOutcome:
        """Classify and explain one image with LIME, off the event loop; stops when the caller goes."""
        from allxai.explainer.lime_plain import explain  # noqa: PLC0415

        params = self._params(options)
        if self._explain_slots <= 0:
            raise Overloaded(
                f"{self._settings.max_concurrent_explanations} explanations are running; try again shortly"
            )
        self._explain_slots -= 1
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            started = time.perf_counter()
            model = await self._backend.resolve(spec)
            image = await self._prepare(data, model, "image.data")
            t_prep = time.perf_counter()
            first = await self._backend.predict(model, image[None], timeout)
            classification = _classification(model, first[0])
            target = self._target(model, options.target_label, classification.label_index)
            loop = asyncio.get_running_loop()
            stop = threading.Event()
            model_seconds = [time.perf_counter() - t_prep]
            done_samples = [0]

            def predict(batch: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
                # Runs in lime's worker thread; the model call itself goes back to the loop.
                if stop.is_set():
                    raise Cancelled("the explanation was cancelled")
                t0 = time.perf_counter()
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                future = asyncio.run_coroutine_threadsafe(
                    self._backend.predict(model, batch, remaining), loop
                )
                result = future.result()
                model_seconds[0] += time.perf_counter() - t0
                done_samples[0] += len(batch)
                if progress is not None:
                    loop.call_soon_threadsafe(progress, done_samples[0], params.num_samples)
                return result

            try:
                result = await asyncio.to_thread(explain, image, predict, target, params)
            except BaseException:
                stop.set()
                raise
            done = time.perf_counter()
            timings = Timings(
                preprocess=t_prep - started,
                model=model_seconds[0],
                explain=max(0.0, done - t_prep - model_seconds[0]),
                total=done - started,
            )
            return ExplainOutcome(model, classification, result, image, timings)
        finally:
            self._explain_slots += 1

    def _params(self, options: ExplainOptions) -> ExplainParams:
        samples = options.num_samples or self._settings.explain_default_samples
        if samples < 1 or samples > self._settings.explain_max_samples:
            raise InvalidInput(
                "options.num_samples", f"{samples} samples; allowed 1 to {self._settings.explain_max_samples}"
            )
        if options.top_k < 0:
            raise InvalidInput("options.top_k", "must not be negative")
        batch = options.batch_size or self._settings.predict_batch_size
        if batch < 1:
            raise InvalidInput("options.batch_size", "must be positive")
        seed = options.seed if options.seed is not None else random.SystemRandom().randrange(2**31)
        if not 0 <= seed < 2**32:
            raise InvalidInput("options.seed", "must be between 0 and 2**32 - 1")
        return ExplainParams(samples, options.top_k or 5, options.positive_only, seed, batch)

    @staticmethod
    def _target(model: ModelInfo, label: str, default: int) -> int:
        if not label:
            return default
        if label not in model.class_names:
            raise InvalidInput(
                "options.target_label",
                f"{label!r} is not a class of this model ({', '.join(model.class_names)})",
            )
        return model.class_names.index(label)


def _classification(model: ModelInfo, probs: npt.NDArray[np.float32]) -> Classification:
    return Classification(model.class_names, tuple(float(p) for p in probs))
