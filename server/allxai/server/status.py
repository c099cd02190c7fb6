"""Domain errors as gRPC statuses: the one place that maps each exception to its status code.

Used only by the error-mapping interceptor (:class:`~allxai.server.interceptors.ErrorMappingInterceptor`);
the domain (:mod:`allxai.server.errors`, the core, the backends) knows no status codes.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from allxai.server.errors import (
    AllxaiError,
    BackendError,
    BackendUnavailable,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidInput,
    ModelNotFound,
    Overloaded,
    PermissionDenied,
    Unauthenticated,
)

#: What a client sees for anything unexpected: no stack traces or internals.
INTERNAL_MESSAGE = "internal error; the request id is in the server log"

#: Each domain error's code; a subclass takes its nearest listed base's, anything unlisted is INTERNAL.
_CODES: dict[type[AllxaiError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    BackendUnavailable: grpc.StatusCode.UNAVAILABLE,
    BackendError: grpc.StatusCode.INTERNAL,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_code(error: AllxaiError) -> grpc.StatusCode:
    """The status code a client receives for ``error``."""
    for cls in type(error).__mro__:
        if cls in _CODES:
            return _CODES[cls]
    return grpc.StatusCode.INTERNAL


def to_status(error: AllxaiError) -> grpc.Status:
    """A gRPC status with the message, and ``google.rpc.BadRequest`` details for invalid input."""
    details = []
    if isinstance(error, InvalidInput):
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in error.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad)
        details.append(packed)
    code_value: int = status_code(error).value[0]
    status = status_pb2.Status(code=code_value, message=error.message, details=details)
    return rpc_status.to_status(status)
