"""The domain's exceptions, and the one place that maps them to gRPC status codes."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status


class AllxaiError(Exception):
    """Base of every error the gateway reports to a client in words."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class FieldViolation:
    """Which request field was wrong, and why."""

    field: str
    description: str


class InvalidInput(AllxaiError):
    """The request itself is wrong; the client must change it."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.violations = [FieldViolation(field, description)]


class FailedPrecondition(AllxaiError):
    """The model cannot answer this question as it is set up."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ModelNotFound(AllxaiError):
    """No such model, version or label."""

    code = grpc.StatusCode.NOT_FOUND


class Overloaded(AllxaiError):
    """Too much work in flight; try again later."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class BackendUnavailable(AllxaiError):
    """The model is not loaded or its server cannot be reached."""

    code = grpc.StatusCode.UNAVAILABLE


class BackendError(AllxaiError):
    """The model server failed in a way the client cannot fix: its message goes to the log, and the
    client gets the generic INTERNAL message."""

    code = grpc.StatusCode.INTERNAL


class Unauthenticated(AllxaiError):
    """No credentials, or credentials not accepted."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(AllxaiError):
    """Known caller, but not allowed in."""

    code = grpc.StatusCode.PERMISSION_DENIED


class DeadlineExceeded(AllxaiError):
    """The caller's deadline passed before the work was done."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


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
    code_value: int = error.code.value[0]
    status = status_pb2.Status(code=code_value, message=error.message, details=details)
    return rpc_status.to_status(status)


#: What a client sees for anything unexpected: no stack traces or internals.
INTERNAL_MESSAGE = "internal error; the request id is in the server log"
