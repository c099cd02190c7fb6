"""The gateway's logic as plain async functions over a backend: no protobuf, no gRPC.

The servicer translates messages to these calls; tests call them directly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import numpy as np
import numpy.typing as npt

from allxai.contract.cellview import Prepared, prepare
from allxai.contract.preprocessing import ImageError, ImageLimits, resize_image
from allxai.explainer.perturb import Composition
from allxai.server import gate
from allxai.server.admission import Admission
from allxai.server.backends.base import Backend, ModelInfo, ModelSpec, split_rows
from allxai.server.errors import FailedPrecondition, InvalidInput
from allxai.server.explain_options import ExplainOptions, explain_plan
from allxai.server.metrics import Metrics
from allxai.server.outcomes import (
    Classification,
    ClassifyOutcome,
    ExplainOutcome,
    Finding,
    SpecimenOutcome,
    Timings,
)
from allxai.server.settings import Settings

ProgressFn = Callable[[int, int], None]


class Diagnosis:
    """Classify and explain images with the models of one backend."""

    def __init__(self, settings: Settings, backend: Backend, metrics: Metrics | None = None) -> None:
        self._settings = settings
        self._backend = backend
        self._metrics = metrics
        self._limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)
        self._explanations = Admission(
            "explain", settings.max_concurrent_explanations, settings.max_queued_explanations, metrics
        )
        # Classify waits for nothing but the model: past the bound it is refused, never queued.
        self._classifications = Admission("classify", settings.max_concurrent_classify, 0, metrics)

    async def model_info(self, spec: ModelSpec, timeout: float | None = None) -> ModelInfo:
        """The model a spec names."""
        return await self._backend.resolve(spec, timeout)

    async def _prepare(self, data: bytes, model: ModelInfo, field_name: str) -> Prepared:
        if not data:
            raise InvalidInput(field_name, "the request carries no image bytes")
        try:
            # Decoding and finding the cells are CPU work: keep them off the event loop.
            return await asyncio.to_thread(prepare, data, model.input_size, model.cell_input, self._limits)
        except ImageError as exc:
            raise InvalidInput(field_name, str(exc)) from exc

    async def classify(
        self, data: bytes, spec: ModelSpec, timeout: float | None, alpha: float | None = None
    ) -> ClassifyOutcome:
        """Classify one encoded image, with the domain check and the prediction set at level ``alpha``."""
        async with self._classifications:
            with self._backend.interactive():
                return await self._classify(data, spec, timeout, alpha)

    async def _classify(
        self, data: bytes, spec: ModelSpec, timeout: float | None, alpha: float | None
    ) -> ClassifyOutcome:
        started = time.perf_counter()
        deadline = _deadline(timeout)
        model = await self._backend.resolve(spec, _left(deadline))
        level = gate.level(model, alpha)
        image = await self._prepare(data, model, "image.data")
        prepared = time.perf_counter()
        rows = await self._backend.predict(model, image.input[None], _left(deadline))
        done = time.perf_counter()
        (classification,) = self._judge(model, rows, [data], level, [image])
        gate.enforce(self._settings.domain_policy, model, classification)
        timings = Timings(preprocess=prepared - started, model=done - prepared, total=done - started)
        return ClassifyOutcome(model, classification, timings)

    def _judge(
        self,
        model: ModelInfo,
        rows: npt.NDArray[np.float32],
        images: list[bytes],
        level: float | None,
        prepared: list[Prepared],
    ) -> list[Classification]:
        """The answers for the model's rows, counted in the domain metrics."""
        answers = gate.classify_rows(model, rows, images, level, [_finding(p) for p in prepared])
        if self._metrics is not None:
            self._metrics.observe_domain(model, answers)
        return answers

    async def classify_specimen(
        self, images: list[bytes], spec: ModelSpec, timeout: float | None, alpha: float | None = None
    ) -> SpecimenOutcome:
        """Classify every cell of a specimen in batches, and summarise the cells inside the domain."""
        async with self._classifications:
            with self._backend.interactive():
                return await self._classify_specimen(images, spec, timeout, alpha)

    async def _classify_specimen(
        self, images: list[bytes], spec: ModelSpec, timeout: float | None, alpha: float | None
    ) -> SpecimenOutcome:
        if not images:
            raise InvalidInput("images", "the request carries no images")
        if len(images) > self._settings.max_specimen_images:
            raise InvalidInput(
                "images", f"{len(images)} images; at most {self._settings.max_specimen_images} per call"
            )
        started = time.perf_counter()
        deadline = _deadline(timeout)
        model = await self._backend.resolve(spec, _left(deadline))
        if not model.normal_class_names:
            # Every cell would count as a blast: a number no one should read.
            raise FailedPrecondition(
                f"model {model.name!r} names no normal class, so a specimen's blast fraction has no "
                "meaning; give its class names with ALLXAI_CLASS_NAMES (a class named Benign, hem or "
                "normal is normal) or in its model card's normal_class_names"
            )
        level = gate.level(model, alpha)
        prepared = [await self._prepare(data, model, f"images[{i}].data") for i, data in enumerate(images)]
        t_prep = time.perf_counter()
        rows = await self._backend.predict(model, np.stack([p.input for p in prepared]), _left(deadline))
        done = time.perf_counter()
        cells = self._judge(model, rows, images, level, prepared)
        summary = gate.summarise(model, cells, self._settings.specimen_review_share)
        timings = Timings(preprocess=t_prep - started, model=done - t_prep, total=done - started)
        return SpecimenOutcome(model, cells, summary, timings)

    async def explain(
        self,
        data: bytes,
        spec: ModelSpec,
        options: ExplainOptions,
        timeout: float | None,
        progress: ProgressFn | None = None,
        alpha: float | None = None,
    ) -> ExplainOutcome:
        """Classify and explain one image; cancelling the call stops the work at its next batch.

        ``progress(done, total)`` is called with 0 as soon as the options are checked, then after every
        batch of perturbed samples the model has answered.

        An image outside the training domain is still explained (under the ``flag`` policy), and the
        outcome's warnings say so."""
        from allxai.explainer.engine import explain  # noqa: PLC0415
        from allxai.explainer.segmentation import SegmentationError  # noqa: PLC0415

        plan = explain_plan(options, self._settings)
        if progress is not None:
            # The total first, before any queueing or model work: a client's bar knows its length at once.
            progress(0, plan.settings.num_samples)
        deadline = _deadline(timeout)
        async with self._explanations:
            started = time.perf_counter()
            model = await self._backend.resolve(spec, _left(deadline))
            level = gate.level(model, alpha)
            image = await self._prepare(data, model, "image.data")
            # A cell model's explanation works on the view, the crop at the image's own resolution; each
            # perturbed view is resized to the model's input, as the input itself was made from the view.
            native = image.view.shape[:2] != tuple(model.input_size)
            if plan.settings.composition == "model" and (native or not model.has_composition):
                why = (
                    f"the explanation works at the cell's own resolution ({image.view.shape[0]} px), the "
                    "compose signature at the model's input size"
                    if native
                    else f"model {model.name!r} has no compose signature"
                )
                raise InvalidInput("options.composition", f"{why}; use gateway or auto")
            target = self._target(model, plan.target_label) if plan.target_label else None
            predictor = _BackendPredictor(self._backend, model, deadline, resize=native)
            t_prep = time.perf_counter()
            # The answer itself, with its domain check, first: under the refuse policy an image outside the
            # domain costs no explanation. (The explanation's batches get the domain score too, from the same
            # signature, and drop it.)
            rows = await predictor.timed(self._backend.predict(model, image.input[None], _left(deadline)))
            (classification,) = self._judge(model, rows, [data], level, [image])
            gate.enforce(self._settings.domain_policy, model, classification)
            try:
                result = await explain(
                    image.view,
                    predictor,
                    plan.settings,
                    label=target,
                    progress=progress,
                    cells=image.cell_mask,
                    blank=image.blank,
                )
            except SegmentationError as exc:
                raise InvalidInput("options.segmentation_params", str(exc)) from exc
            done = time.perf_counter()
            timings = Timings(
                preprocess=t_prep - started,
                model=predictor.seconds,
                explain=max(0.0, done - t_prep - predictor.seconds),
                total=done - started,
            )
            if self._metrics is not None:
                self._metrics.explanation_samples.observe(result.num_samples)
                self._metrics.explanation_seconds.observe(done - started)
            warnings = gate.explanation_warnings(classification, result.quality)
            return ExplainOutcome(model, classification, result, image.view, plan.pictures, timings, warnings)

    @staticmethod
    def _target(model: ModelInfo, label: str) -> int:
        if label not in model.class_names:
            raise InvalidInput(
                "options.target_label",
                f"{label!r} is not a class of this model ({', '.join(model.class_names)})",
            )
        return model.class_names.index(label)


class _BackendPredictor:
    """The engine's Predictor over one model of a backend, with the request's deadline."""

    def __init__(
        self, backend: Backend, model: ModelInfo, deadline: float | None, resize: bool = False
    ) -> None:
        self._backend = backend
        self._model = model
        self._deadline = deadline
        self._resize = resize
        self.seconds = 0.0  # time the model was busy for this request (overlapping calls counted once)
        self._busy = 0
        self._since = 0.0

    @property
    def has_composition(self) -> bool:
        return self._model.has_composition and not self._resize

    async def timed(self, call: Awaitable[npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
        """Await a model call, counting its time in ``seconds``."""
        if self._busy == 0:
            self._since = time.perf_counter()
        self._busy += 1
        try:
            return await call
        finally:
            self._busy -= 1
            if self._busy == 0:
                self.seconds += time.perf_counter() - self._since

    async def predict(self, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        if self._resize:
            images = await asyncio.to_thread(_resized, images, self._model.input_size)
        rows = await self.timed(self._backend.predict(self._model, images, _left(self._deadline), "bulk"))
        return split_rows(self._model, rows)[0]  # the explanation needs only the probabilities

    async def predict_composed(self, composition: Composition) -> npt.NDArray[np.float32]:
        return await self.timed(
            self._backend.predict_composed(self._model, composition, _left(self._deadline), "bulk")
        )


def _resized(images: npt.NDArray[np.uint8], size: tuple[int, int]) -> npt.NDArray[np.uint8]:
    """Perturbed views to the model's input size, by the resize that made the input from the view."""
    return np.stack([resize_image(image, size) for image in images])


def _finding(prepared: Prepared) -> Finding:
    scale = prepared.scale
    return Finding(
        scale=None if scale is None else scale.um_per_px,
        scale_source="" if scale is None else scale.source,
        white_cells=prepared.white_cells,
        region=prepared.region,
        reasons=prepared.notes,
    )


def _deadline(timeout: float | None) -> float | None:
    """The caller's deadline on the monotonic clock, taken once when the call arrives."""
    return None if timeout is None else time.monotonic() + timeout


def _left(deadline: float | None) -> float | None:
    """Time left before ``deadline``, for the next outbound call (queueing and decoding used some)."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())
