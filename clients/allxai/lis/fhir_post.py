"""POST transaction Bundles (``allxai.lis.fhir``) to a FHIR server, and send an outbox's bundles in order.

``post_transaction`` makes one ``POST [base]`` (``Content-Type: application/fhir+json``) with the standard
library only (urllib: the ``lis`` extra declares no HTTP client) and classifies the answer the way the MLLP
sender classifies ACKs:

- 2xx with a ``transaction-response`` Bundle: done. A 2xx with anything else (a proxy's login page, say) is
  failed: whether the server stored the results is unknown, and a person must look.
- 4xx other than 408 and 429, and 3xx (redirects are not followed: urllib would resend a POST as a GET):
  failed, with the reason from the OperationOutcome's issues; not retried blindly, since the same bundle
  would be refused again. A person retries or drops it.
- 408, 429, 5xx, a timeout, a refused or lost connection: retried with the same bundle (its conditional
  creates and updates make a second arrival change nothing) after ``Retry-After`` when the server sends
  one, else after a backoff that doubles up to a maximum; later bundles wait, so results arrive in order.

``FhirSender`` runs that loop on a thread against an outbox of kind ``fhir`` keyed by ``Bundle.identifier``
(see :class:`FhirOutbox` for the interface it needs).
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import sqlite3
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

__all__ = [
    "FHIR_JSON",
    "FhirOutbox",
    "FhirSender",
    "OutboxEntry",
    "PostResult",
    "bundle_identifier",
    "post_transaction",
    "retry_after_seconds",
]

log = logging.getLogger(__name__)

#: The media type of FHIR JSON (R4).
FHIR_JSON = "application/fhir+json"
#: The longest answer read; a transaction-response of ``return=minimal`` is a few kB per entry.
MAX_RESPONSE_BYTES = 16 << 20
#: The longest reason kept from an answer that is not an OperationOutcome.
_MAX_REASON = 500
#: Statuses that say "not now" rather than "not this": retried like a timeout.
_RETRIED = {408, 429}

Outcome = Literal["done", "failed", "retry"]


@dataclass(frozen=True)
class PostResult:
    """What one POST came to.

    ``status`` is the HTTP status (0 when no answer came); ``outcome`` ``done``, ``failed`` (refused: a
    person must look) or ``retry``; ``reason`` says why when not done; ``body`` is the server's answer (the
    transaction-response Bundle when done); ``retry_after`` the seconds the server asked us to wait.
    """

    status: int
    outcome: Outcome
    reason: str = ""
    body: str = ""
    retry_after: float | None = None

    @property
    def response(self) -> dict[str, Any] | None:
        """The transaction-response Bundle when done, else None."""
        if self.outcome != "done":
            return None
        document: dict[str, Any] = json.loads(self.body)
        return document

    @property
    def locations(self) -> list[str]:
        """Where the server stored each entry (``entry.response.location``), in the bundle's order."""
        response = self.response or {}
        return [str(e.get("response", {}).get("location", "")) for e in response.get("entry", [])]


def bundle_identifier(text: str) -> str:
    """The ``Bundle.identifier`` value of a bundle's JSON: its key in an outbox (``ValueError`` if none)."""
    try:
        document = json.loads(text)
        value = document["identifier"]["value"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError("not a FHIR Bundle with an identifier") from exc
    if document.get("resourceType") != "Bundle" or not isinstance(value, str) or not value:
        raise ValueError("not a FHIR Bundle with an identifier")
    return value


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """A ``Retry-After`` header in seconds (delta-seconds or an HTTP date); None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # HTTP dates are GMT; an unzoned one is read as such
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _outcome_reason(body: str) -> str:
    """The issues of an OperationOutcome in words, else the start of the answer (empty when none)."""
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if isinstance(document, dict) and document.get("resourceType") == "OperationOutcome":
        issues = []
        for issue in document.get("issue", []):
            words = issue.get("diagnostics") or issue.get("details", {}).get("text") or ""
            where = ", ".join(issue.get("expression") or issue.get("location") or [])
            head = f"{issue.get('severity', 'error')} {issue.get('code', '')}".strip()
            issues.append(f"{head}: {words}" + (f" (at {where})" if where else ""))
        if issues:
            return "; ".join(issues)
    text = " ".join(body.split())
    return text[:_MAX_REASON] + ("…" if len(text) > _MAX_REASON else "")


def _classify(
    status: int, body: str, phrase: str, location: str = "", retry_after: str | None = None
) -> PostResult:
    """Map an HTTP answer to done, failed or retry (see the module's docstring)."""
    if 200 <= status < 300:
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        if (
            isinstance(document, dict)
            and document.get("resourceType") == "Bundle"
            and document.get("type") == "transaction-response"
        ):
            return PostResult(status, "done", body=body)
        return PostResult(
            status,
            "failed",
            f"HTTP {status} without a transaction-response Bundle (is the URL the FHIR base?): "
            f"{_outcome_reason(body) or phrase}",
            body,
        )
    reason = f"HTTP {status} {phrase}".strip()
    detail = _outcome_reason(body)
    if 300 <= status < 400:
        return PostResult(
            status, "failed", f"{reason}: redirected to {location or '?'}; set the FHIR base URL to it", body
        )
    if status in _RETRIED or status >= 500:
        after = retry_after_seconds(retry_after)
        return PostResult(status, "retry", f"{reason}: {detail}" if detail else reason, body, after)
    return PostResult(status, "failed", f"{reason}: {detail}" if detail else reason, body)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Turn a redirect into an answer: urllib would resend our POST as a GET without its body."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def post_transaction(
    base_url: str,
    bundle_json: str | bytes,
    *,
    timeout: float,
    token: str | None = None,
    headers: Mapping[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> PostResult:
    """POST a transaction Bundle to the FHIR server at ``base_url`` and classify the answer.

    ``timeout`` bounds the connection and each read (seconds); ``token`` is sent as ``Authorization:
    Bearer``; ``headers`` adds or overrides headers; ``context`` is the TLS context of an https URL. Never
    raises for what the network or the server does: that is a ``PostResult`` (``ValueError`` only for a URL
    that is not http or https).
    """
    url = base_url.rstrip("/")
    if not url.lower().startswith(("http://", "https://")):
        raise ValueError(f"the FHIR base URL must be http or https, not {base_url!r}")
    data = bundle_json.encode("utf-8") if isinstance(bundle_json, str) else bundle_json
    sent = {
        "Content-Type": f"{FHIR_JSON}; charset=utf-8",
        "Accept": FHIR_JSON,
        # The response's entries then carry their status and location only, not every resource again.
        "Prefer": "return=minimal",
        "User-Agent": "allxai-lis",
    }
    if token:
        sent["Authorization"] = f"Bearer {token}"
    sent.update(headers or {})
    request = urllib.request.Request(url, data=data, headers=sent, method="POST")
    opener = urllib.request.build_opener(_NoRedirect(), urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(request, timeout=timeout) as answer:
            body = answer.read(MAX_RESPONSE_BYTES).decode("utf-8", errors="replace")
            return _classify(answer.status, body, answer.reason or "")
    except urllib.error.HTTPError as exc:
        try:
            body = exc.read(MAX_RESPONSE_BYTES).decode("utf-8", errors="replace")
        except (OSError, http.client.HTTPException):
            body = ""  # the error's body was lost; its status still says what happened
        finally:
            exc.close()
        location, after = exc.headers.get("Location", ""), exc.headers.get("Retry-After")
        return _classify(exc.code, body, str(exc.reason or ""), location, after)
    except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts and resets are OSErrors
        cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return PostResult(0, "retry", f"no answer from {url}: {type(cause).__name__}: {cause}")


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


class FhirSender:
    """Sends ``outbox``'s pending bundles to the FHIR server at ``base_url`` from a thread of its own.

    ``timeout`` bounds each POST's connection and reads; a retried bundle waits ``Retry-After`` (at most
    ``max_retry_after``) when the server says, else ``backoff`` doubling up to ``max_backoff``; the first
    success resets the backoff. ``idle_poll`` is how often an idle sender looks at the outbox again (a retry
    typed in another process cannot set our event). ``token``, ``headers`` and ``context`` go to
    :func:`post_transaction`.
    """

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
        self.outbox = outbox
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
        self._stop = threading.Event()
        self._progress = threading.Condition()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the sending thread."""
        self._thread = threading.Thread(target=self.run, name="allxai-fhir", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the POST in flight (its answer or its timeout); what is unsent stays in the outbox."""
        self._stop.set()
        self.outbox.changed.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wait_until(self, condition: Callable[[], bool], timeout: float | None = None) -> bool:
        """Wait until ``condition()`` holds, checked after every POST's outcome; False on timeout."""
        with self._progress:
            return self._progress.wait_for(condition, timeout)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until no bundle is pending (failed ones do not count); False on timeout."""
        return self.wait_until(lambda: self.outbox.head(kind="fhir") is None, timeout)

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

    def _notify(self) -> None:
        with self._progress:
            self._progress.notify_all()
