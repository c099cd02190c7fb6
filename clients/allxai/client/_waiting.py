"""How a call waits for a gateway that is up but cannot answer yet, and how its UNAVAILABLE is told apart.

gRPC's wait-for-ready only waits for a connection, and its retries (at most 4, a second or so in all) end
long before a gateway has loaded its models: a gateway listens at once and answers UNAVAILABLE ("the models
are still loading") until they are. :class:`Patience` tries such a call again until its deadline.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from typing import Any

import grpc

from allxai.client._messages import client_error
from allxai.client._results import AllxaiClientError

#: What the gateway says (UNAVAILABLE) while its backend is still loading its models.
LOADING = "still loading"

#: The trailer the gateway sets on every status it sends itself (gRPC's own failures have none).
_GATEWAY_STATUS = "grpc-status-details-bin"


class GatewayUnavailable(AllxaiClientError):
    """UNAVAILABLE sent by the gateway itself: it is up, but cannot answer yet (its models are loading) or
    any more (it is shutting down, its model server is away)."""

    @property
    def loading(self) -> bool:
        """Whether the gateway is still loading its models."""
        return LOADING in self.message


def unavailable_hint(error: AllxaiClientError, target: str, waited: bool) -> str:
    """What the ``allxai`` commands add to an UNAVAILABLE error: whether the gateway answered at all."""
    if error.code != "UNAVAILABLE":
        return ""
    if isinstance(error, GatewayUnavailable):
        if not error.loading:
            return ""
        how = "a longer --timeout waits longer" if waited else "--wait waits for them, up to --timeout"
        return f" (the gateway at {target} is up but still loading its models; {how})"
    return f" (is the gateway running at {target}?)"


class Patience:
    """One call's attempts within its deadline. With ``wait_for_ready`` an UNAVAILABLE answer is tried
    again, with exponential backoff, until the deadline: gRPC's wait-for-ready only waits for a connection,
    and its retries (at most 4) end long before a gateway has loaded its models."""

    #: Seconds kept for the last attempt, so that the call ends with the gateway's answer, not a deadline.
    LAST_TRY = 0.1

    def __init__(
        self, timeout: float, wait_for_ready: bool, initial_backoff: float, max_backoff: float
    ) -> None:
        self._timeout = timeout
        self._deadline = time.monotonic() + timeout
        self._waiting = wait_for_ready
        self._backoff = initial_backoff
        self._max_backoff = max_backoff

    def left(self) -> float:
        """Seconds left before the call's deadline: the next attempt's timeout."""
        return max(0.0, self._deadline - time.monotonic())

    def pause(self, exc: grpc.RpcError) -> float | None:
        """Seconds to wait before the next attempt; None when the call fails with ``exc`` now."""
        if not self._waiting or exc.code() != grpc.StatusCode.UNAVAILABLE:
            return None
        # Jittered, so that clients started together do not knock at once.
        pause = min(random.uniform(0.5, 1.0) * self._backoff, self.left() - self.LAST_TRY)
        if pause <= 0:
            return None
        self._backoff = min(2 * self._backoff, self._max_backoff)
        return pause

    def error(self, exc: grpc.RpcError, image_offset: int = 0) -> AllxaiClientError:
        """The error the call raises: a :class:`GatewayUnavailable` when the gateway itself said UNAVAILABLE,
        saying so when the deadline passed while waiting."""
        error = client_error(exc, image_offset)
        # (key, value) pairs in both flavours of gRPC: a tuple of pairs, or grpc.aio's Metadata.
        trailers: Iterable[Any] = exc.trailing_metadata() or ()
        if error.code != "UNAVAILABLE" or not any(item[0] == _GATEWAY_STATUS for item in trailers):
            return error
        message = error.message
        if self._waiting:
            # Waiting, the call ends on an UNAVAILABLE only when the deadline leaves no room for another try
            # (on a busy machine even the first attempt may use it all up).
            message = f"{message}; still so when the deadline ({self._timeout:g} s) passed"
        return GatewayUnavailable(error.code, message)
