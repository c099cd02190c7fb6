"""The wire to TensorFlow Serving: the connection, channel options, TLS files, retries, error
translation, tensors."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy.typing as npt

from allxai.server.backends import tfserving_tensors
from allxai.server.backends.signature import TensorSpec
from allxai.server.errors import (
    AllxaiError,
    BackendError,
    BackendUnavailable,
    DeadlineExceeded,
    ModelNotFound,
    Overloaded,
)

# TensorFlow Serving's messages and stubs, generated from its descriptors (proto/allxai/tfs_protos/README.md):
# tensorflow_serving.apis would import all of TensorFlow, seconds and ~770 MB, for the same classes.
from allxai.tfs_protos.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Reconnect quickly after TensorFlow Serving restarts (gRPC's default backoff grows to 120 s).
_RECONNECT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 30000),
    ("grpc.keepalive_timeout_ms", 10000),
]


@dataclass(frozen=True)
class TLSFiles:
    """PEM files for the channel to TensorFlow Serving; a client certificate and key give mTLS."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str = ""


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    """Channel arguments: raised message limits, fast reconnects, round_robin over all addresses."""
    service_config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.service_config", json.dumps(service_config)),
        *_RECONNECT_OPTIONS,
    ]


def translate(error: grpc.aio.AioRpcError, what: str) -> AllxaiError:
    """TensorFlow Serving's status as one of our errors, with its message kept for the operator."""
    code = error.code()
    detail = f"{what}: TensorFlow Serving said {code.name}: {error.details()}"
    if code == grpc.StatusCode.NOT_FOUND:
        return ModelNotFound(detail)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(detail)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        # Its batching queue is full: the same advice as our own overload.
        return Overloaded(detail)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.CANCELLED):
        # FAILED_PRECONDITION: the servable is loading or unloading; CANCELLED: the pod went away.
        return BackendUnavailable(detail)
    return BackendError(detail)


def open_channel(
    target: str, tls: TLSFiles | None, max_message_bytes: int, own_connections: bool = False
) -> grpc.aio.Channel:
    """The channel to TensorFlow Serving: plaintext, TLS, or mTLS when a client certificate is given.

    ``own_connections`` gives the channel TCP connections of its own: channels with the same target and
    options otherwise share grpc's global subchannel pool, so their calls share connections too.
    """
    options = channel_options(max_message_bytes)
    if own_connections:
        options.append(("grpc.use_local_subchannel_pool", 1))
    if tls is None:
        return grpc.aio.insecure_channel(target, options=options)
    if tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read_file(tls.ca),
        private_key=read_file(tls.key),
        certificate_chain=read_file(tls.cert),
    )
    return grpc.aio.secure_channel(target, credentials, options=options)


def fill_model_spec(
    target: Any, name: str, version: int | None, label: str | None, signature: str = ""
) -> None:
    """Fill a ``tensorflow.serving.ModelSpec``: an exact version wins over a label; neither is the newest."""
    target.name = name
    if version is not None:
        target.version.value = version
    elif label:
        target.version_label = label
    if signature:
        target.signature_name = signature


async def call_with_retries(
    send: Callable[[float], Awaitable[T]],
    timeout: float,
    what: str,
    retries: int,
    closed: Callable[[], bool],
) -> T:
    """One unary call within ``timeout``, retrying UNAVAILABLE with jittered exponential backoff.

    Only UNAVAILABLE is retried (the request never reached a model), never past the deadline and
    never once the channel is closing; every other status is translated at once.
    """
    deadline = time.monotonic() + timeout
    delay = 0.05
    attempt = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded(f"{what}: the deadline passed before TensorFlow Serving answered")
        try:
            return await send(remaining)
        except grpc.aio.AioRpcError as exc:
            error = translate(exc, what)
            retriable = exc.code() == grpc.StatusCode.UNAVAILABLE and not closed()
            pause = delay * (0.5 + random.random())
            if not retriable or attempt >= retries or time.monotonic() + pause >= deadline:
                raise error from exc
            attempt += 1
            log.info("%s: UNAVAILABLE, retry %d in %.2f s", what, attempt, pause)
            await asyncio.sleep(pause)
            delay = min(delay * 2, 1.0)


class Connection:
    """One (load-balanced) channel to TensorFlow Serving, its two stubs, and every call over them."""

    def __init__(
        self, target: str, tls: TLSFiles | None, max_message_bytes: int, timeout: float, retries: int
    ) -> None:
        self.target = target
        #: Seconds a call may take when the caller gives no deadline.
        self.timeout = timeout
        self._tls = tls
        self._max_message_bytes = max_message_bytes
        self._retries = retries
        self._channel: grpc.aio.Channel | None = None
        self._interactive: grpc.aio.Channel | None = None
        self._closed = False
        self.predict_stub: Any = None  # tensorflow.serving.PredictionService
        #: PredictionService over connections of their own, for Classify: a large explanation batch being
        #: written on the shared connections (HTTP/2 flow control, one socket) cannot hold it up.
        self.interactive_stub: Any = None
        self.model_stub: Any = None  # tensorflow.serving.ModelService

    @property
    def is_open(self) -> bool:
        """Whether :meth:`open` made the channel."""
        return self._channel is not None

    def open(self) -> None:
        """Make the channel and its stubs; on the event loop's thread (grpc.aio channels belong to it)."""
        channel = open_channel(self.target, self._tls, self._max_message_bytes)
        self._channel = channel
        self._interactive = open_channel(
            self.target, self._tls, self._max_message_bytes, own_connections=True
        )
        self.predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        self.interactive_stub = prediction_service_pb2_grpc.PredictionServiceStub(self._interactive)
        self.model_stub = model_service_pb2_grpc.ModelServiceStub(channel)

    async def close(self) -> None:
        """Close the channel; calls in flight end with CANCELLED, and none is retried."""
        self._closed = True
        for channel in (self._channel, self._interactive):
            if channel is not None:
                await channel.close(None)

    async def call(self, send: Callable[[float], Awaitable[T]], timeout: float | None, what: str) -> T:
        """One unary call with the deadline, retrying UNAVAILABLE (see :func:`call_with_retries`)."""
        if self._channel is None or self._closed:
            raise BackendUnavailable("the TensorFlow Serving channel is closed")
        budget = self.timeout if timeout is None else timeout
        return await call_with_retries(send, budget, what, self._retries, lambda: self._closed)


def left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def read_file(path: Path | None) -> bytes | None:
    return None if path is None else path.read_bytes()


def signature_defs(response: Any) -> dict[str, Any]:
    """The ``SignatureDef`` of each signature in a ``GetModelMetadataResponse``, by name."""
    packed = response.metadata.get("signature_def")
    if packed is None:
        return {}
    signatures = get_model_metadata_pb2.SignatureDefMap()
    packed.Unpack(signatures)
    return dict(signatures.signature_def)


def tensor_specs(tensors: Any) -> list[TensorSpec]:
    """A ``SignatureDef``'s ``inputs`` or ``outputs`` (``TensorInfo`` by key) in plain terms."""
    specs = []
    for key, info in tensors.items():
        dtype = tfserving_tensors.dtype_name(info.dtype) or f"DataType {info.dtype}"
        encoding = info.WhichOneof("encoding")
        if encoding not in (None, "name"):
            dtype = f"{encoding} {dtype}"  # sparse or composite: not a dense image or score tensor
        shape = info.tensor_shape
        dims = None if shape.unknown_rank else tuple(None if d.size < 0 else int(d.size) for d in shape.dim)
        specs.append(TensorSpec(str(key), dtype, dims))
    return specs


def to_array(tensor: Any) -> npt.NDArray[Any]:
    """A ``TensorProto``'s values (:func:`.tfserving_tensors.to_array`)."""
    return tfserving_tensors.to_array(tensor)
