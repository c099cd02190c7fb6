"""Authorisation and receive limits before a request's body is read.

grpc.aio reads (and buffers, up to the server-wide ``grpc.max_receive_message_length``) the request of a
unary method before it calls the handler, and interceptors wrap the handler: an authorisation check in
the handler runs only once a refused caller's 63 MiB are already in memory, twice (the C core's buffer
and Python's bytes) and a third time as a parsed message. A stream-shaped handler, by contrast, gets an
iterator that reads nothing until asked. So :class:`IntakeInterceptor` serves every guarded unary method
through a stream-shaped handler that first checks the caller (metadata and TLS peer only), then reads the
one request as raw bytes, refuses it if it is over its method's own limit (before parsing it), and only
then parses it and calls the real behaviour. A refused caller's body is never read by the server: the
call ends with its status and the stream is reset, so HTTP/2 flow control stops the sender after one
window. Clients see no difference: the wire format of a unary call is one message each way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import grpc

from allxai.server.errors import InvalidInput, MessageTooLarge
from allxai.server.security import Authorizer
from allxai.server.settings import Settings

if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # not subscriptable at run time
    _Interceptor = grpc.aio.ServerInterceptor

Context = grpc.aio.ServicerContext[Any, Any]

#: Health checks must pass without credentials: kubelet and load balancers carry none.
UNGUARDED_PREFIXES = ("/grpc.health.v1.Health/",)
#: What a request holds besides its image: ids (at most 256 characters each), options, model spec.
ENVELOPE_BYTES = 64 * 1024
_SERVICE = "/allxai.v1.DiagnosisService/"


def receive_limits(settings: Settings) -> dict[str, int]:
    """The largest request each method accepts, in bytes (methods not named: :func:`default_limit`).

    One image (Classify, Explain, StreamExplain) needs the image limit plus the envelope; a specimen
    needs many images and has the message limit (clients split larger specimens into several calls).
    """
    one_image = settings.max_image_bytes + ENVELOPE_BYTES
    return {
        f"{_SERVICE}Classify": one_image,
        f"{_SERVICE}Explain": one_image,
        f"{_SERVICE}StreamExplain": one_image,
        f"{_SERVICE}ClassifySpecimen": settings.max_message_bytes,
    }


def default_limit() -> int:
    """Every other method (model info, reflection) carries no image."""
    return ENVELOPE_BYTES


def server_receive_limit(settings: Settings) -> int:
    """The server-wide ``grpc.max_receive_message_length``: what the largest method needs, no more."""
    return max(default_limit(), *receive_limits(settings).values())


class IntakeInterceptor(_Interceptor):
    """Checks the caller, then each request's size, before the request is parsed (or, refused, read)."""

    def __init__(self, authorizer: Authorizer, limits: Mapping[str, int]) -> None:
        self._authorizer = authorizer
        self._limits = dict(limits)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        # Typed as Any: grpc-stubs describe the sync handler, whose behaviours are not coroutines.
        handler: Any = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(UNGUARDED_PREFIXES):
            return handler
        return self._guard(handler, method, self._limits.get(method, default_limit()))

    def _admit(self, context: Context) -> None:
        self._authorizer.check(context.invocation_metadata() or (), context.auth_context())

    def _guard(self, handler: Any, method: str, limit: int) -> Any:
        parse = handler.request_deserializer

        def check(raw: bytes) -> Any:
            if len(raw) > limit:
                raise MessageTooLarge(
                    f"the request is {len(raw)} bytes; {method.rsplit('/', 1)[-1]} accepts at most {limit}"
                )
            return parse(raw) if parse is not None else raw

        async def one(requests: AsyncIterator[bytes]) -> Any:
            async for raw in requests:
                return check(raw)
            raise InvalidInput("request", "no request message was sent")

        async def each(requests: AsyncIterator[bytes]) -> AsyncIterator[Any]:
            async for raw in requests:
                yield check(raw)

        serialize = handler.response_serializer
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(requests: AsyncIterator[bytes], context: Context) -> Any:
                self._admit(context)
                return await inner_uu(await one(requests), context)

            return grpc.stream_unary_rpc_method_handler(unary_unary, None, serialize)
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[Any]:
                self._admit(context)
                async for item in inner_us(await one(requests), context):
                    yield item

            return grpc.stream_stream_rpc_method_handler(unary_stream, None, serialize)
        if handler.stream_unary is not None:
            inner_su = handler.stream_unary

            async def stream_unary(requests: AsyncIterator[bytes], context: Context) -> Any:
                self._admit(context)
                return await inner_su(each(requests), context)

            return grpc.stream_unary_rpc_method_handler(stream_unary, None, serialize)
        if handler.stream_stream is not None:  # server reflection is one
            inner_ss = handler.stream_stream

            async def stream_stream(requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[Any]:
                self._admit(context)
                async for item in inner_ss(each(requests), context):
                    yield item

            return grpc.stream_stream_rpc_method_handler(stream_stream, None, serialize)
        raise TypeError(f"unknown handler shape for {method}")  # never pass a call through unguarded
