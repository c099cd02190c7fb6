"""``FhirSender``: sends an outbox's FHIR bundles to a server in order, on a thread of its own, with
``allxai.lis.fhir_post.post_transaction`` (see that module for how each answer is classified).
"""

from __future__ import annotations

import logging
import sqlite3
import ssl
import threading
from collections.abc import Mapping
from typing import Literal, Protocol

from allxai.lis.fhir_post import PostResult, post_transaction

__all__ = ["FhirOutbox", "FhirSender", "OutboxEntry"]

from allxai.lis._sender_thread import SenderThread

log = logging.getLogger(__name__)


class OutboxEntry(Protocol):
    """What the sender reads of an outbox entry (``allxai.lis.outbox.Entry`` has it)."""

    @property
    def control_id(self) -> str:
        """The entry's key: for a bundle, its ``Bundle.identifier`` value."""

    @property
    def attempts(self) -> int:
        """How many sends came to an outcome or failed so far."""


class FhirOutbox(Protocol):
    """The outbox interface ``FhirSender`` needs: ``allxai.lis.outbox.Outbox`` with kinds of messages.

    ``head(kind="fhir")`` gives the oldest pending bundle and its JSON; ``attempt_failed`` counts a send
    without an outcome (it stays pending), ``mark_done`` and ``mark_failed`` settle it (``ack_code`` here is
    ``HTTP <status>``); ``changed`` is set when a bundle is put or retried.
    """

    @property
    def changed(self) -> threading.Event:
        """Set by every put and retry, so a waiting sender wakes up."""

    def head(self, *, kind: Literal["fhir"]) -> tuple[OutboxEntry, str] | None:
        """The oldest pending entry of ``kind`` and its body, or None."""

    def attempt_failed(self, control_id: str, error: str) -> None:
        """Count a send without an outcome; the entry stays pending."""

    def mark_done(self, control_id: str, ack_code: str) -> None:
        """The server stored the bundle."""

    def mark_failed(self, control_id: str, ack_code: str, reason: str) -> None:
        """The server refused the bundle: it waits, with the reason, for a person."""


class FhirSender(SenderThread):
    """Sends ``outbox``'s pending bundles to the FHIR server at ``base_url`` from a thread of its own.

    ``timeout`` bounds each POST's connection and reads; a retried bundle waits ``Retry-After`` (at most
    ``max_retry_after``) when the server says, else ``backoff`` doubling up to ``max_backoff``; the first
    success resets the backoff. ``idle_poll`` is how often an idle sender looks at the outbox again (a retry
    typed in another process cannot set our event). ``token``, ``headers`` and ``context`` go to
    :func:`post_transaction`.
    """

    kind = "fhir"
    thread_name = "allxai-fhir"

    def __init__(
        self,
        outbox: FhirOutbox,
        base_url: str,
        *,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        context: ssl.SSLContext | None = None,
        timeout: float = 30.0,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        max_retry_after: float = 600.0,
        idle_poll: float = 5.0,
    ) -> None:
        if not base_url.lower().startswith(("http://", "https://")):
            raise ValueError(f"the FHIR base URL must be http or https, not {base_url!r}")
        super().__init__(outbox)
        self.base_url = base_url
        self.token = token
        self.headers = dict(headers or {})
        self.context = context
        self.timeout = timeout
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after
        self.idle_poll = idle_poll
        #: The outcome of the latest POST (None before the first).
        self.last: PostResult | None = None

    def pause(self, result: PostResult | None, delay: float) -> float:
        """How long to wait before the next try: the server's ``Retry-After`` (capped), else ``delay``."""
        if result is not None and result.retry_after is not None:
            return min(result.retry_after, self.max_retry_after)
        return delay

    def run(self) -> None:
        """Send until stopped: the loop the thread runs (callable directly, e.g. in a test)."""
        delay = self.backoff
        try:
            while not self._stop.is_set():
                self.outbox.changed.clear()
                head = self.outbox.head(kind="fhir")
                if head is None:
                    self._notify()
                    self.outbox.changed.wait(self.idle_poll)
                    continue
                entry, body = head
                result: PostResult | None
                try:
                    result = self._send(entry, body)
                except sqlite3.Error:
                    # The outbox could not record an outcome (disk full, say): keep the thread, try again.
                    log.exception("FHIR: the outbox cannot be updated; retrying")
                    result = None
                except Exception:  # a sender thread that dies sends nothing more, silently
                    log.exception("FHIR: sending %s failed unexpectedly; retrying", entry.control_id)
                    result = None
                if result is not None and result.outcome != "retry":
                    delay = self.backoff
                else:
                    self._stop.wait(self.pause(result, delay))  # stop() interrupts the wait
                    delay = min(delay * 2, self.max_backoff)
        finally:
            self._notify()

    def _send(self, entry: OutboxEntry, body: str) -> PostResult:
        """One POST of one bundle, its outcome recorded in the outbox."""
        key = entry.control_id
        result = post_transaction(
            self.base_url,
            body,
            timeout=self.timeout,
            token=self.token,
            headers=self.headers,
            context=self.context,
        )
        self.last = result
        code = f"HTTP {result.status}" if result.status else ""
        if result.outcome == "done":
            self.outbox.mark_done(key, code)
            log.info("FHIR %s: bundle %s stored (%s)", self.base_url, key, code)
        elif result.outcome == "failed":
            self.outbox.mark_failed(key, code, result.reason)
            log.error(
                "FHIR %s: bundle %s refused (%s); left in the outbox as failed, retry it by hand",
                self.base_url,
                key,
                result.reason,
            )
        else:
            self.outbox.attempt_failed(key, result.reason)
            log.warning(
                "FHIR %s: bundle %s not stored (attempt %d), will retry: %s",
                self.base_url,
                key,
                entry.attempts + 1,
                result.reason,
            )
        self._notify()
        return result
