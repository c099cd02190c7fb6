"""Server interceptors: metrics and error mapping, each an async context around a call.

One wrapper (:func:`_wrap`) knows the shapes of gRPC handlers; each interceptor only says what
happens around a call. The order in ``create_server`` is metrics (outermost: it sees the final code),
then error mapping (the single place where domain errors become statuses, with :mod:`.status`).
Authorisation is not an interceptor: it runs in :mod:`.intake`, before a request's body is read (an
interceptor of a unary call runs only once gRPC has read and parsed the whole request).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

import grpc

from allxai.server import identifiers
from allxai.server.errors import AllxaiError, BackendError
from allxai.server.metrics import Metrics
from allxai.server.refusals import RefusalLog
from allxai.server.status import INTERNAL_MESSAGE, status_code, to_status

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # not subscriptable at run time
    _Interceptor = grpc.aio.ServerInterceptor

Context = grpc.aio.ServicerContext[Any, Any]
Around = Callable[[str, Context], AbstractAsyncContextManager[None]]


def _wrap(handler: Any, method: str, around: Around) -> Any:
    """The same handler with ``around(method, context)`` entered for the whole call (or stream)."""
    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: Context) -> Any:
            async with around(method, context):
                return await inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: Context) -> AsyncIterator[Any]:
            async with around(method, context):
                async for item in inner_us(request, context):
                    yield item

        return grpc.unary_stream_rpc_method_handler(
            unary_stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_unary is not None:
        inner_su = handler.stream_unary

        async def stream_unary(requests: Any, context: Context) -> Any:
            async with around(method, context):
                return await inner_su(requests, context)

        return grpc.stream_unary_rpc_method_handler(
            stream_unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_stream is not None:  # server reflection is one
        inner_ss = handler.stream_stream

        async def stream_stream(requests: Any, context: Context) -> AsyncIterator[Any]:
            async with around(method, context):
                async for item in inner_ss(requests, context):
                    yield item

        return grpc.stream_stream_rpc_method_handler(
            stream_stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    raise TypeError(f"unknown handler shape for {method}")  # never pass a call through unguarded


class _AroundInterceptor(_Interceptor):
    """An interceptor defined by an async context entered around each call."""

    def around(self, method: str, context: Context) -> AbstractAsyncContextManager[None]:
        raise NotImplementedError

    def applies_to(self, method: str) -> bool:
        return True

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        # Typed as Any: grpc-stubs describe the sync handler, whose behaviours are not coroutines.
        handler: Any = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not self.applies_to(method):
            return handler
        return _wrap(handler, method, self.around)


async def _abort(context: Context, error: Exception, method: str, refusals: RefusalLog) -> None:
    if isinstance(error, BackendError):
        # The model server's own words are for the operator, not the caller.
        log.error("model backend failed: %s", error.message)
        await context.abort(status_code(error), INTERNAL_MESSAGE)
    if isinstance(error, AllxaiError):
        status = to_status(error)
        refusals.refused(method, status.code, error.message)
        await context.abort(status.code, status.details, trailing_metadata=status.trailing_metadata)
    log.exception("unexpected error", exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


class ErrorMappingInterceptor(_AroundInterceptor):
    """Turns :class:`AllxaiError` into its status (with details) and anything else into INTERNAL.

    It also gives the call its request id for the log from the start (the ``x-request-id`` metadata's,
    or a fresh one), so that every refusal it logs, authentication's included, carries one.
    """

    def __init__(self, refusals: RefusalLog | None = None) -> None:
        self._refusals = refusals or RefusalLog()

    @asynccontextmanager
    async def around(self, method: str, context: Context) -> AsyncIterator[None]:
        identifiers.begin(context.invocation_metadata() or ())
        try:
            yield
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001  (every error must become a status)
            await _abort(context, exc, method, self._refusals)


class MetricsInterceptor(_AroundInterceptor):
    """Requests, errors and latency per method and code; calls in flight per method."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    @asynccontextmanager
    async def around(self, method: str, context: Context) -> AsyncIterator[None]:
        name = method.rsplit("/", 1)[-1]
        in_flight = self._metrics.in_flight.labels(name)
        in_flight.inc()
        started = time.perf_counter()
        code = "OK"
        try:
            yield
        except grpc.aio.AbortError:
            found = context.code()
            code = found.name if isinstance(found, grpc.StatusCode) else "UNKNOWN"
            raise
        except asyncio.CancelledError:
            # gRPC cancels the handler both when the caller cancels and when its deadline passes.
            remaining = context.time_remaining()
            code = "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
            raise
        except BaseException:
            code = "UNKNOWN"
            raise
        finally:
            in_flight.dec()
            self._metrics.requests.labels(name, code).inc()
            self._metrics.latency.labels(name, code).observe(time.perf_counter() - started)
