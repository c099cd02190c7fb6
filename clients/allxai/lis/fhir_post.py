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

``allxai.lis.fhir_sender.FhirSender`` runs that loop on a thread against an outbox of kind ``fhir`` keyed by
``Bundle.identifier``.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = [
    "FHIR_JSON",
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
        found = document.get("issue")
        # A server's (or a proxy's) answer may be malformed in any way: read what is there, never fail on it.
        for issue in found if isinstance(found, list) else []:
            if not isinstance(issue, dict):
                continue
            details = issue.get("details")
            text = details.get("text") if isinstance(details, dict) else ""
            words = issue.get("diagnostics") or text or ""
            places = issue.get("expression") or issue.get("location") or []
            where = ", ".join(str(p) for p in places) if isinstance(places, list) else str(places)
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
