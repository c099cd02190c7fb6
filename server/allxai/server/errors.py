"""The domain's exceptions: plain Python, no gRPC.

Each says what went wrong in words a client can act on; how it reaches a client (its status code,
and ``google.rpc.BadRequest`` details for invalid input) is the transport's business, decided in one
place: :mod:`allxai.server.status`.
"""

from __future__ import annotations

from dataclasses import dataclass


class AllxaiError(Exception):
    """Base of every error the gateway reports to a client in words."""

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

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.violations = [FieldViolation(field, description)]


class FailedPrecondition(AllxaiError):
    """The model cannot answer this question as it is set up."""


class ModelNotFound(AllxaiError):
    """No such model, version or label."""


class Overloaded(AllxaiError):
    """Too much work in flight; try again later."""


class MessageTooLarge(Overloaded):
    """A request message over its method's receive limit (RESOURCE_EXHAUSTED, as gRPC's own limit)."""


class BackendUnavailable(AllxaiError):
    """The model is not loaded or its server cannot be reached."""


class BackendError(AllxaiError):
    """The model server failed in a way the client cannot fix: its message goes to the log, and the
    client gets the generic internal-error message."""


class Unauthenticated(AllxaiError):
    """No credentials, or credentials not accepted."""


class PermissionDenied(AllxaiError):
    """Known caller, but not allowed in."""


class DeadlineExceeded(AllxaiError):
    """The caller's deadline passed before the work was done."""
