"""The gRPC servicer: translates allxai.v1 messages to calls on :class:`Diagnosis` and back."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from allxai.server import convert, identifiers
from allxai.server.audit import AuditLog, sha256
from allxai.server.core import Diagnosis
from allxai.v1 import diagnosis_pb2 as pb
from allxai.v1 import diagnosis_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]


class DiagnosisServicer(pb_grpc.DiagnosisServiceServicer):
    """allxai.v1.DiagnosisService over a :class:`Diagnosis`; every answer goes to the audit trail."""

    def __init__(self, diagnosis: Diagnosis, audit: AuditLog | None = None) -> None:
        self._diagnosis = diagnosis
        self._audit = audit

    async def _record(self, build: Callable[[], dict[str, Any]]) -> None:
        # Before the answer leaves: with fsync "always", an answer a client holds is on disk.
        # The record (image hashes included) is built only when there is a trail to write it to,
        # and off the event loop.
        if self._audit is not None:
            await asyncio.wrap_future(self._audit.submit(build))

    async def Classify(self, request: pb.ClassifyRequest, context: Context) -> pb.ClassifyResponse:  # noqa: N802
        request_id = identifiers.request_id(request.request_id, context.invocation_metadata() or ())
        identifiers.check_ids(request.specimen_id, [("image.image_id", request.image.image_id)])
        outcome = await self._diagnosis.classify(
            request.image.data,
            convert.model_spec(request.model_spec),
            convert.time_left(context),
            convert.alpha(request.alpha),
        )
        log.info("classified: %s %.3f", outcome.classification.label, outcome.classification.confidence)
        await self._record(
            lambda: {
                "kind": "classify",
                "request_id": request_id,
                "specimen_id": request.specimen_id,
                "image_sha256": sha256(request.image.data),
                "model": {"name": outcome.model.name, "version": outcome.model.version},
                "label": outcome.classification.label,
                "scores": convert.scores(outcome.classification),
                **convert.judgement(outcome.classification),
            }
        )
        return pb.ClassifyResponse(
            classification=convert.classification(outcome.classification),
            model=convert.model_ref(outcome.model),
            request_id=request_id,
            specimen_id=request.specimen_id,
            image_id=request.image.image_id,
            timings=convert.timings(outcome.timings),
        )

    async def ClassifySpecimen(  # noqa: N802
        self, request: pb.ClassifySpecimenRequest, context: Context
    ) -> pb.ClassifySpecimenResponse:
        request_id = identifiers.request_id(request.request_id, context.invocation_metadata() or ())
        identifiers.check_ids(
            request.specimen_id,
            ((f"images[{i}].image_id", im.image_id) for i, im in enumerate(request.images)),
        )
        outcome = await self._diagnosis.classify_specimen(
            [image.data for image in request.images],
            convert.model_spec(request.model_spec),
            convert.time_left(context),
            convert.alpha(request.alpha),
        )
        log.info("classified a specimen of %d cells", len(outcome.cells))
        await self._record(
            lambda: {
                "kind": "classify_specimen",
                "request_id": request_id,
                "specimen_id": request.specimen_id,
                "model": {"name": outcome.model.name, "version": outcome.model.version},
                "cells": [
                    {
                        "image_sha256": sha256(image.data),
                        "label": cell.label,
                        "scores": convert.scores(cell),
                        **convert.judgement(cell),
                    }
                    for image, cell in zip(request.images, outcome.cells, strict=True)
                ],
                "summary": dataclasses.asdict(outcome.summary),
            }
        )
        return pb.ClassifySpecimenResponse(
            cells=[
                pb.CellResult(image_id=image.image_id, classification=convert.classification(cell))
                for image, cell in zip(request.images, outcome.cells, strict=True)
            ],
            summary=convert.specimen_summary(outcome.summary),
            model=convert.model_ref(outcome.model),
            request_id=request_id,
            specimen_id=request.specimen_id,
            timings=convert.timings(outcome.timings),
        )

    async def Explain(self, request: pb.ExplainRequest, context: Context) -> pb.ExplainResponse:  # noqa: N802
        request_id = identifiers.request_id(request.request_id, context.invocation_metadata() or ())
        identifiers.check_ids(request.specimen_id, [("image.image_id", request.image.image_id)])
        outcome = await self._diagnosis.explain(
            request.image.data,
            convert.model_spec(request.model_spec),
            convert.explain_options(request.options),
            convert.time_left(context),
            alpha=convert.alpha(request.alpha),
        )
        log.info(
            "explained: %s with %d samples", outcome.classification.label, outcome.explanation.num_samples
        )
        response = await asyncio.to_thread(convert.explain_response, outcome, request, request_id)
        await self._record(lambda: convert.explain_record(outcome, request, request_id))
        return response

    async def StreamExplain(  # noqa: N802
        self, request: pb.StreamExplainRequest, context: Context
    ) -> AsyncIterator[pb.StreamExplainResponse]:
        inner = request.request
        request_id = identifiers.request_id(inner.request_id, context.invocation_metadata() or ())
        identifiers.check_ids(inner.specimen_id, [("image.image_id", inner.image.image_id)])
        updates: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
        task = asyncio.create_task(
            self._diagnosis.explain(
                inner.image.data,
                convert.model_spec(inner.model_spec),
                convert.explain_options(inner.options),
                convert.time_left(context),
                progress=lambda done, total: updates.put_nowait((done, total)),
                alpha=convert.alpha(inner.alpha),
            )
        )
        getter: asyncio.Future[tuple[int, int]] | None = None
        try:
            while not task.done():
                getter = asyncio.ensure_future(updates.get())
                await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield _progress(*getter.result())
                else:
                    getter.cancel()
            outcome = task.result()
        finally:
            task.cancel()
            if getter is not None:
                getter.cancel()
        while not updates.empty():
            # Reports of batches that ended just before the explanation did: every batch is reported.
            yield _progress(*updates.get_nowait())
        log.info(
            "explained (streamed): %s with %d samples",
            outcome.classification.label,
            outcome.explanation.num_samples,
        )
        response = await asyncio.to_thread(convert.explain_response, outcome, inner, request_id)
        await self._record(lambda: convert.explain_record(outcome, inner, request_id))
        yield pb.StreamExplainResponse(result=response)

    async def GetModelInfo(  # noqa: N802
        self, request: pb.GetModelInfoRequest, context: Context
    ) -> pb.GetModelInfoResponse:
        info = await self._diagnosis.model_info(
            convert.model_spec(request.model_spec), convert.time_left(context)
        )
        return pb.GetModelInfoResponse(
            model=convert.model_ref(info),
            class_names=info.class_names,
            normal_class_names=info.normal_class_names,
            input_height=info.input_size[0],
            input_width=info.input_size[1],
            preprocessing=info.preprocessing,
            has_composition_signature=info.has_composition,
            model_card_json=info.card_json,
            available_versions=info.available_versions,
        )


def _progress(done: int, total: int) -> pb.StreamExplainResponse:
    """A progress event of StreamExplain."""
    return pb.StreamExplainResponse(progress=pb.ExplainProgress(samples_done=done, samples_total=total))
