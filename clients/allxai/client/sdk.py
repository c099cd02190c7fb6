"""A synchronous client for allxai.v1.DiagnosisService with typed results."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, TypeVar, Unpack

import grpc

from allxai.client import _messages as m
from allxai.client._channel import MAX_MESSAGE_BYTES, ClientBase
from allxai.client._results import (
    PICTURE_KINDS,
    AllxaiClientError,
    ClassifyResult,
    ExplainParams,
    ExplainResult,
    ImageInput,
    ModelDescription,
    ProgressFn,
    SpecimenResult,
)
from allxai.v1 import diagnosis_pb2 as pb
from allxai.v1 import diagnosis_pb2_grpc as pb_grpc

__all__ = [
    "MAX_MESSAGE_BYTES",
    "PICTURE_KINDS",
    "AllxaiClientError",
    "ClassifyResult",
    "Client",
    "ExplainParams",
    "ExplainResult",
    "ModelDescription",
    "SpecimenResult",
]

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


class Client(ClientBase):
    """Calls the gateway at ``target`` and blocks until each answer; see :class:`ClientBase` for options.

    Use it as a context manager, or call :meth:`close`. Failed calls raise :class:`AllxaiClientError`.
    """

    def _open(
        self, target: str, options: list[tuple[str, Any]], credentials: grpc.ChannelCredentials | None
    ) -> None:
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            self._channel = grpc.secure_channel(target, credentials, options=options)
        self._stub = pb_grpc.DiagnosisServiceStub(self._channel)

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unary(
        self, method: grpc.UnaryUnaryMultiCallable[_Request, _Response], request: _Request, offset: int = 0
    ) -> _Response:
        patience = self._patience(self._timeout)
        while True:
            try:
                return method(request, timeout=patience.left(), metadata=self._metadata)
            except grpc.RpcError as exc:
                pause = patience.pause(exc)
                if pause is None:
                    raise patience.error(exc, offset) from exc
            time.sleep(pause)  # a backoff, bounded by the call's deadline

    def classify(
        self,
        image: ImageInput,
        image_id: str | None = None,
        specimen_id: str = "",
        *,
        alpha: float | None = None,
    ) -> ClassifyResult:
        """Classify one image, given as bytes or a path (a path names the image unless ``image_id`` does).

        ``alpha`` is the miscoverage level of the prediction set, one the model was calibrated for
        (:attr:`ModelDescription.alphas`); None means the server's default, 0.05.
        """
        request = m.classify_request(image, image_id, self._spec, specimen_id, alpha)
        return m.classify_result(self._unary(self._stub.Classify, request))

    def classify_specimen(
        self,
        images: Iterable[ImageInput],
        specimen_id: str = "",
        image_ids: Iterable[str] | None = None,
        *,
        alpha: float | None = None,
    ) -> SpecimenResult:
        """Classify every cell image of one specimen, in as many calls as the batch size needs.

        Images are named by ``image_ids`` when given, else a path by its file name. The summary covers
        all cells; every batch after the first goes to the model version that answered the first.
        Paths are read as their batch is sent, so a file that cannot be read raises ``OSError`` only then.
        The client's ``timeout`` is the deadline of each batch's call, not of the whole specimen.
        ``alpha`` is the level of every cell's prediction set, as for :meth:`classify`.
        """
        batches = self._specimen_batches(images, specimen_id, image_ids, alpha)
        for request in batches:
            batches.add(self._unary(self._stub.ClassifySpecimen, request, batches.offset))
        return batches.result()

    def explain(
        self, image: ImageInput, progress: ProgressFn | None = None, **params: Unpack[ExplainParams]
    ) -> ExplainResult:
        """Explain one image (see :class:`ExplainParams` for the options).

        ``progress(done, total)`` is called as samples are predicted (StreamExplain's progress events).
        """
        request = m.explain_request(image, self._spec, params)
        response: pb.ExplainResponse | None = None
        patience = self._patience(self._explain_timeout)
        while True:
            try:
                for event in self._stub.StreamExplain(
                    request, timeout=patience.left(), metadata=self._metadata
                ):
                    response = m.explain_event(event, progress, response)
                return m.explain_result(response)
            except grpc.RpcError as exc:
                # Until the result arrives, an UNAVAILABLE explanation can start again from scratch.
                pause = None if response is not None else patience.pause(exc)
                if pause is None:
                    raise patience.error(exc) from exc
            time.sleep(pause)

    def model_info(self) -> ModelDescription:
        """Describe the model this client's calls go to."""
        return m.model_description(self._unary(self._stub.GetModelInfo, m.model_info_request(self._spec)))
