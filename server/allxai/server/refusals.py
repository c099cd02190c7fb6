"""Log lines for refused calls, rate-limited so a flood of bad calls cannot flood the log.

Every refusal (invalid input, no or a wrong token, overload, an unknown model, ...) leaves one line with
the call's request id, the method, the status code and the reason as the client got it: at INFO, and at
WARNING for authentication and permission failures, which an operator may need to act on. Each kind
has its own budget (a token bucket), so a storm of bad images cannot hide a storm of bad tokens; when
lines were held back, the next line says how many.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import grpc

log = logging.getLogger(__name__)

_SECURITY = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})


class RateLimit:
    """A token bucket: ``rate`` lines a second on average, bursts of up to ``burst``."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self.held_back = 0  # lines refused since the last one allowed

    def allow(self) -> tuple[bool, int]:
        """Whether a line may go out now, and how many were held back before it (then reset)."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < 1:
            self.held_back += 1
            return False, 0
        self._tokens -= 1
        held, self.held_back = self.held_back, 0
        return True, held


class RefusalLog:
    """Logs refused calls: security refusals at WARNING, the rest at INFO, each kind rate-limited."""

    def __init__(
        self, rate: float = 10.0, burst: int = 50, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limits = {kind: RateLimit(rate, burst, clock) for kind in ("security", "other")}

    def refused(self, method: str, code: grpc.StatusCode, reason: str) -> None:
        """One refusal of ``method`` (a full gRPC method name) with ``code`` and the client's ``reason``."""
        security = code in _SECURITY
        allowed, held = self._limits["security" if security else "other"].allow()
        if not allowed:
            return
        more = f" ({held} similar refusals not logged)" if held else ""
        log.log(
            logging.WARNING if security else logging.INFO,
            "refused %s: %s: %s%s",
            method.rsplit("/", 1)[-1],
            code.name,
            reason,
            more,
        )
