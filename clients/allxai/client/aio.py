"""An asyncio client for allxai.v1.DiagnosisService (grpc.aio): the same methods and results as Client."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, TypeVar, Unpack

import grpc
import grpc.aio

from allxai.client import _messages as m
from allxai.client import _results as r
from allxai.client._channel import ClientBase
from allxai.v1 import diagnosis_pb2 as pb
from allxai.v1 import diagnosis_pb2_grpc as pb_grpc

__all__ = ["AsyncClient"]

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


class AsyncClient(ClientBase):
    """Calls the gateway at ``target`` from asyncio code; see :class:`ClientBase` for options.

    Make it inside the event loop that uses it, and ``async with`` it or ``await`` :meth:`close`.
    Images given as paths are read on a worker thread, never on the event loop.
    Failed calls raise :class:`AllxaiClientError`.
    """

    def _open(
        self, target: str, options: list[tuple[str, Any]], credentials: grpc.ChannelCredentials | None
    ) -> None:
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        else:
            self._channel = grpc.aio.secure_channel(target, credentials, options=options)
        self._stub = pb_grpc.DiagnosisServiceStub(self._channel)

    async def close(self) -> None:
        """Close the channel, cancelling calls still in flight."""
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _unary(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[_Request, _Response],
        request: _Request,
        offset: int = 0,
    ) -> _Response:
        patience = self._patience(self._timeout)
        while True:
            try:
                return await method(request, timeout=patience.left(), metadata=self._metadata)
            except grpc.RpcError as exc:
                pause = patience.pause(exc)
                if pause is None:
                    raise patience.error(exc, offset) from exc
            await asyncio.sleep(pause)  # a backoff, bounded by the call's deadline

    async def classify(
        self,
        image: r.ImageInput,
        image_id: str | None = None,
        specimen_id: str = "",
        *,
        alpha: float | None = None,
    ) -> r.ClassifyResult:
        """Classify one image, given as bytes or a path (a path names the image unless ``image_id`` does).

        ``alpha`` is the prediction set's miscoverage level, as for :meth:`Client.classify`.
        """
        request = await asyncio.to_thread(m.classify_request, image, image_id, self._spec, specimen_id, alpha)
        return m.classify_result(await self._unary(self._stub.Classify, request))

    async def classify_specimen(
        self,
        images: Iterable[r.ImageInput],
        specimen_id: str = "",
        image_ids: Iterable[str] | None = None,
        *,
        alpha: float | None = None,
    ) -> r.SpecimenResult:
        """Classify every cell image of one specimen, as :meth:`Client.classify_specimen` does.

        The client's ``timeout`` is the deadline of each batch's call, not of the whole specimen.
        """
        batches = self._specimen_batches(images, specimen_id, image_ids, alpha)
        pending = iter(batches)
        # Each batch's images are read (from paths) on a worker thread as the batch is built.
        while (request := await asyncio.to_thread(next, pending, None)) is not None:
            batches.add(await self._unary(self._stub.ClassifySpecimen, request, batches.offset))
        return batches.result()

    async def explain(
        self, image: r.ImageInput, progress: r.ProgressFn | None = None, **params: Unpack[r.ExplainParams]
    ) -> r.ExplainResult:
        """Explain one image (see :class:`ExplainParams` for the options).

        ``progress(done, total)`` is called on the event loop as samples are predicted.
        """
        request = await asyncio.to_thread(m.explain_request, image, self._spec, params)
        response: pb.ExplainResponse | None = None
        patience = self._patience(self._explain_timeout)
        while True:
            try:
                async for event in self._stub.StreamExplain(
                    request, timeout=patience.left(), metadata=self._metadata
                ):
                    response = m.explain_event(event, progress, response)
                return m.explain_result(response)
            except grpc.RpcError as exc:
                # Until the result arrives, an UNAVAILABLE explanation can start again from scratch.
                pause = None if response is not None else patience.pause(exc)
                if pause is None:
                    raise patience.error(exc) from exc
            await asyncio.sleep(pause)

    async def model_info(self) -> r.ModelDescription:
        """Describe the model this client's calls go to."""
        return m.model_description(
            await self._unary(self._stub.GetModelInfo, m.model_info_request(self._spec))
        )
