"""POSTing transaction bundles, and the FHIR sender's retry loop, against an in-test FHIR receiver.

No real FHIR server runs here: the receiver is ``http.server`` on a free port, in a thread, that parses each
posted bundle with fhir.resources, checks it is a transaction whose entries all carry a request, and answers a
transaction-response, or what the test's plan says (503, 400 with an OperationOutcome, no answer...).

No sleeps: the tests wait on the sender's progress condition and the receiver's events; their timeouts only
bound a failure.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import pytest

from allxai.lis import Failure, LabReport, Reviewer, parse_bundle, to_fhir_json
from allxai.lis._report import ResultStatus
from allxai.lis.fhir import bundle_key
from allxai.lis.fhir_post import (
    PostResult,
    bundle_identifier,
    post_transaction,
    retry_after_seconds,
)
from allxai.lis.fhir_sender import FhirSender
from allxai.lis.hl7 import to_oru
from allxai.lis.outbox import Outbox
from tests.lis.reports import ISSUED, MODEL, _cell, _gated_specimen

WAIT = 20.0  # bounds a wait that fails; a passing test never waits this long
TOKEN = "s3cret"


def _report(request_id: str = "req-42", status: ResultStatus = "preliminary") -> LabReport:
    reviewer = Reviewer("HAEM1", "Haem", "Dr A.") if status != "preliminary" else None
    return LabReport(
        MODEL,
        classification=replace(_cell(), request_id=request_id),
        specimen_id="S-1",
        patient_id="MRN123",
        issued_at=ISSUED,
        status=status,
        reviewer=reviewer,
    )


def _outcome(code: str, diagnostics: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    }


@dataclass
class Arrival:
    """One POST as the receiver saw it."""

    key: str
    headers: dict[str, str]
    at: float
    entries: int


class Receiver:
    """A FHIR server's transaction endpoint: ``plan`` answers the n-th POST (then "ok" for the rest).

    ``ok``: a transaction-response; ``503``: unavailable with an OperationOutcome and ``Retry-After``
    (``retry_after``, when set); ``400``: a refusal with an OperationOutcome; ``hang``: no answer until the
    test ends (the sender times out); ``429``, ``401``, ``302``, ``html``: what their names say.
    """

    def __init__(self, plan: list[str] | None = None, retry_after: str | None = None, port: int = 0) -> None:
        self.plan = list(plan or [])
        self.retry_after = retry_after
        self.arrivals: list[Arrival] = []
        self.errors: list[str] = []
        self.release = threading.Event()  # ends a "hang"
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_POST(self) -> None:
                receiver.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/fhir"
        # A short poll: shutdown() waits for it, at every test's end.
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(WAIT)

    def wait_for(self, count: int) -> bool:
        """Wait until ``count`` POSTs have arrived."""
        with self.arrived:
            return self.arrived.wait_for(lambda: len(self.arrivals) >= count, WAIT)

    def keys(self) -> list[str]:
        return [a.key for a in self.arrivals]

    def handle(self, http: BaseHTTPRequestHandler) -> None:
        at = time.monotonic()
        body = http.rfile.read(int(http.headers.get("Content-Length", "0"))).decode("utf-8")
        try:
            bundle = parse_bundle(body)  # fhir.resources validates the whole bundle
            assert bundle.type == "transaction", bundle.type
            entries = bundle.entry or []
            assert entries and all(e.request is not None and e.request.method for e in entries)
            assert bundle.identifier is not None and bundle.identifier.value
            key = str(bundle.identifier.value)
            requests = [(str(e.request.method), e.resource.get_resource_type()) for e in entries]  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001 - any problem with the bundle fails the test, loudly
            self.errors.append(f"{type(exc).__name__}: {exc}")
            self._answer(http, 400, _outcome("invalid", f"not a transaction: {exc}"))
            return
        with self.arrived:
            self.arrivals.append(Arrival(key, dict(http.headers.items()), at, len(entries)))
            self.arrived.notify_all()
        action = self.plan.pop(0) if self.plan else "ok"
        if action == "ok":
            response = {
                "resourceType": "Bundle",
                "type": "transaction-response",
                "entry": [
                    {
                        "response": {
                            "status": "201 Created" if method == "POST" else "200 OK",
                            "location": f"{kind}/{n}/_history/1",
                        }
                    }
                    for n, (method, kind) in enumerate(requests, 1)
                ],
            }
            parse_bundle(json.dumps(response))  # what we answer is a valid FHIR Bundle too
            self._answer(http, 200, response)
        elif action == "503":
            extra = {"Retry-After": self.retry_after} if self.retry_after else {}
            self._answer(http, 503, _outcome("transient", "the database is being restarted"), extra)
        elif action == "429":
            self._answer(http, 429, _outcome("throttled", "too many requests"))
        elif action == "400":
            self._answer(http, 400, _outcome("processing", "Observation.code: unknown code system"))
        elif action == "401":
            self._answer(http, 401, _outcome("login", "the token has expired"))
        elif action == "302":
            self._answer(http, 302, {}, {"Location": "https://fhir.example/r4"})
        elif action == "html":
            http.send_response(200)
            page = b"<html><body>Please log in</body></html>"
            http.send_header("Content-Type", "text/html")
            http.send_header("Content-Length", str(len(page)))
            http.end_headers()
            http.wfile.write(page)
        elif action == "hang":
            self.release.wait(WAIT)  # the client gave up long before
            self._answer(http, 200, {"resourceType": "Bundle", "type": "transaction-response"})
        else:
            raise AssertionError(f"unknown action {action!r}")

    @staticmethod
    def _answer(
        http: BaseHTTPRequestHandler,
        status: int,
        document: dict[str, Any],
        extra: dict[str, str] | None = None,
    ) -> None:
        data = json.dumps(document).encode()
        try:
            http.send_response(status)
            http.send_header("Content-Type", "application/fhir+json")
            http.send_header("Content-Length", str(len(data)))
            for name, value in (extra or {}).items():
                http.send_header(name, value)
            http.end_headers()
            http.wfile.write(data)
        except OSError:
            pass  # the client timed out and left: nobody to answer


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib honours the proxy variables, as the sender should in a hospital; the receiver is local."""
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


@pytest.fixture
def receiver_factory() -> Iterator[Any]:
    made: list[Receiver] = []

    def make(plan: list[str] | None = None, retry_after: str | None = None, port: int = 0) -> Receiver:
        made.append(Receiver(plan, retry_after, port))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()
        assert not receiver.errors, receiver.errors


@dataclass
class MemoryEntry:
    """An outbox row as ``FhirSender`` reads it (``allxai.lis.outbox.Entry`` has the same fields)."""

    control_id: str
    body: str
    kind: str
    state: str = "pending"
    attempts: int = 0
    ack_code: str = ""
    reason: str = ""
    errors: list[str] = field(default_factory=list)


class MemoryOutbox:
    """The outbox interface the sender is built against (``allxai.lis.fhir_post.FhirOutbox``: ``put`` with a
    kind and a key, ``head(kind=...)``, ``attempt_failed``, ``mark_done``, ``mark_failed``, ``changed``), in
    memory, until ``allxai.lis.outbox.Outbox`` has kinds. It keeps an HL7 message in front, which the
    sender must never take."""

    def __init__(self) -> None:
        self.changed = threading.Event()
        self._lock = threading.Lock()
        self.rows: list[MemoryEntry] = [MemoryEntry("MSG-1", "MSH|^~\\&|ALLXAI", "hl7")]

    def put(self, message: str, *, source: str = "", kind: str = "hl7", key: str = "") -> tuple[str, bool]:
        with self._lock:
            if any(row.control_id == key for row in self.rows):
                return key, False
            self.rows.append(MemoryEntry(key, message, kind))
        self.changed.set()
        return key, True

    def head(self, *, kind: Literal["fhir"]) -> tuple[MemoryEntry, str] | None:
        with self._lock:
            for row in self.rows:
                if row.kind == kind and row.state == "pending":
                    return replace(row), row.body
        return None

    def get(self, key: str) -> MemoryEntry:
        with self._lock:
            (row,) = [r for r in self.rows if r.control_id == key]
            return replace(row)

    def attempt_failed(self, control_id: str, error: str) -> None:
        self._update(control_id, lambda row: row.errors.append(error))

    def mark_done(self, control_id: str, ack_code: str) -> None:
        def done(row: MemoryEntry) -> None:
            row.state, row.ack_code = "done", ack_code

        self._update(control_id, done)

    def mark_failed(self, control_id: str, ack_code: str, reason: str) -> None:
        def fail(row: MemoryEntry) -> None:
            row.state, row.ack_code, row.reason = "failed", ack_code, reason

        self._update(control_id, fail)

    def _update(self, control_id: str, change: Callable[[MemoryEntry], None]) -> None:
        with self._lock:
            (row,) = [r for r in self.rows if r.control_id == control_id and r.state == "pending"]
            row.attempts += 1
            change(row)


def _queue(outbox: MemoryOutbox, *reports: LabReport) -> list[str]:
    keys = []
    for report in reports:
        text = to_fhir_json(report)
        key, added = outbox.put(text, source=report.request_id, kind="fhir", key=bundle_identifier(text))
        assert added
        keys.append(key)
    return keys


def _sender(outbox: MemoryOutbox, url: str, **options: Any) -> FhirSender:
    settings = {"token": TOKEN, "timeout": 5.0, "backoff": 0.01, "max_backoff": 0.05, "idle_poll": 0.5}
    return FhirSender(outbox, url, **{**settings, **options})


def test_a_transaction_is_posted_as_fhir_json_and_its_response_read(receiver_factory: Any) -> None:
    receiver = receiver_factory()
    report = _report(status="final")
    text = to_fhir_json(report)
    result = post_transaction(receiver.url + "/", text, timeout=5.0, token=TOKEN)
    assert (result.status, result.outcome, result.reason) == (200, "done", "")
    (arrival,) = receiver.arrivals
    assert arrival.key == bundle_key(report) == bundle_identifier(text)
    assert arrival.headers["Content-Type"] == "application/fhir+json; charset=utf-8"
    assert arrival.headers["Accept"] == "application/fhir+json"
    assert arrival.headers["Authorization"] == f"Bearer {TOKEN}"
    assert result.response is not None and result.response["type"] == "transaction-response"
    assert len(result.locations) == arrival.entries == len(json.loads(text)["entry"])
    assert result.locations[0] == "Device/1/_history/1"


def test_the_sender_retries_a_503_and_keeps_the_order(receiver_factory: Any) -> None:
    receiver = receiver_factory(["503"])
    outbox = MemoryOutbox()
    first, second = _queue(outbox, _report(), _report(status="final"))
    sender = _sender(outbox, receiver.url)
    sender.start()
    try:
        assert sender.drain(WAIT)
    finally:
        sender.stop(WAIT)
    assert receiver.keys() == [first, first, second]  # the later bundle waited for the first
    done = outbox.get(first)
    assert (done.state, done.attempts, done.ack_code) == ("done", 2, "HTTP 200")
    (error,) = done.errors
    assert error == "HTTP 503 Service Unavailable: error transient: the database is being restarted"
    assert outbox.get(second).state == "done"
    assert outbox.get("MSG-1").state == "pending"  # the HL7 message is the MLLP sender's


def test_the_sender_honours_retry_after(receiver_factory: Any) -> None:
    receiver = receiver_factory(["503"], retry_after="1")
    outbox = MemoryOutbox()
    (key,) = _queue(outbox, _report())
    sender = _sender(outbox, receiver.url)  # its own backoff (10 ms) would come back far sooner
    sender.start()
    try:
        assert sender.drain(WAIT)
    finally:
        sender.stop(WAIT)
    first, again = receiver.arrivals
    assert again.at - first.at >= 1.0 - 0.05
    assert outbox.get(key).state == "done"


def test_a_long_retry_after_is_capped() -> None:
    sender = FhirSender(MemoryOutbox(), "http://127.0.0.1:1/fhir", max_retry_after=30.0)
    assert sender.pause(PostResult(503, "retry", retry_after=3600.0), 0.5) == pytest.approx(30.0)
    assert sender.pause(PostResult(503, "retry", retry_after=2.0), 0.5) == pytest.approx(2.0)
    assert sender.pause(PostResult(0, "retry"), 0.5) == pytest.approx(0.5)


def test_a_refusal_fails_the_bundle_with_the_servers_reason_and_the_next_goes(receiver_factory: Any) -> None:
    receiver = receiver_factory(["400"])
    outbox = MemoryOutbox()
    first, second = _queue(outbox, _report("req-1"), _report("req-2"))
    sender = _sender(outbox, receiver.url)
    sender.start()
    try:
        assert sender.drain(WAIT)
    finally:
        sender.stop(WAIT)
    assert receiver.keys() == [first, second]  # sent once: the same bundle would be refused again
    refused = outbox.get(first)
    assert (refused.state, refused.ack_code, refused.attempts) == ("failed", "HTTP 400", 1)
    assert refused.reason == "HTTP 400 Bad Request: error processing: Observation.code: unknown code system"
    assert outbox.get(second).state == "done"


def test_a_timeout_is_retried(receiver_factory: Any) -> None:
    receiver = receiver_factory(["hang"])
    outbox = MemoryOutbox()
    (key,) = _queue(outbox, _report())
    sender = _sender(outbox, receiver.url, timeout=0.3)
    sender.start()
    try:
        assert sender.drain(WAIT)
    finally:
        sender.stop(WAIT)
    assert receiver.keys() == [key, key]
    entry = outbox.get(key)
    assert (entry.state, entry.attempts) == ("done", 2)
    (error,) = entry.errors
    assert error.startswith(f"no answer from {receiver.url}:") and "timed out" in error


def test_a_server_that_is_down_is_retried_until_it_is_up(receiver_factory: Any) -> None:
    down = receiver_factory()
    url, port = down.url, down.server.server_address[1]
    down.close()  # nothing listens on that port any more
    outbox = MemoryOutbox()
    (key,) = _queue(outbox, _report())
    sender = _sender(outbox, url)
    sender.start()
    try:
        assert sender.wait_until(lambda: len(outbox.get(key).errors) >= 2, WAIT)
        assert outbox.get(key).errors[0].startswith(f"no answer from {url}: ConnectionRefusedError")
        assert sender.last is not None and (sender.last.status, sender.last.outcome) == (0, "retry")
        up = receiver_factory(port=port)  # the server is back, on the same address
        assert sender.drain(WAIT)
    finally:
        sender.stop(WAIT)
    assert up.keys() == [key] and outbox.get(key).state == "done"


@pytest.mark.parametrize(
    ("action", "outcome", "reason"),
    [
        ("429", "retry", "HTTP 429 Too Many Requests: error throttled: too many requests"),
        ("401", "failed", "HTTP 401 Unauthorized: error login: the token has expired"),
        (
            "302",
            "failed",
            "HTTP 302 Found: redirected to https://fhir.example/r4; set the FHIR base URL to it",
        ),
        (
            "html",
            "failed",
            "HTTP 200 without a transaction-response Bundle (is the URL the FHIR base?): "
            "<html><body>Please log in</body></html>",
        ),
    ],
)
def test_answers_are_classified_like_acks(
    receiver_factory: Any, action: str, outcome: str, reason: str
) -> None:
    receiver = receiver_factory([action])
    result = post_transaction(receiver.url, to_fhir_json(_report()), timeout=5.0)
    assert (result.outcome, result.reason) == (outcome, reason)
    assert len(receiver.arrivals) == 1  # a redirect is not followed


def test_a_report_of_failures_only_is_posted_too(receiver_factory: Any) -> None:
    receiver = receiver_factory()
    report = LabReport(MODEL, failures=(Failure("bad.png", "DECODE", "cannot decode the image"),))
    specimen = LabReport(MODEL, specimen=_gated_specimen(), specimen_id="S-2", issued_at=ISSUED)
    for each in (report, specimen):
        assert post_transaction(receiver.url, to_fhir_json(each), timeout=5.0).outcome == "done"
    assert receiver.keys() == [bundle_key(report), bundle_key(specimen)]


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2026, 3, 4, 6, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("120") == pytest.approx(120.0)
    assert retry_after_seconds("Wed, 04 Mar 2026 06:00:30 GMT", now) == pytest.approx(30.0)
    assert retry_after_seconds("Wed, 04 Mar 2026 05:00:00 GMT", now) == pytest.approx(0.0)  # past: now
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


def test_only_http_urls_and_bundles_with_an_identifier_are_taken() -> None:
    with pytest.raises(ValueError, match="http or https"):
        post_transaction("ftp://fhir.example", "{}", timeout=1.0)
    with pytest.raises(ValueError, match="http or https"):
        FhirSender(MemoryOutbox(), "fhir.example")
    with pytest.raises(ValueError, match="identifier"):
        bundle_identifier('{"resourceType": "Bundle", "type": "transaction"}')
    with pytest.raises(ValueError, match="identifier"):
        bundle_identifier("MSH|^~\\&|")


def test_the_real_outbox_feeds_the_sender_its_own_kind_and_survives_a_reopen(
    receiver_factory: Any, tmp_path: Path
) -> None:
    receiver = receiver_factory(["503"])
    path = tmp_path / "outbox.sqlite"
    report = _report()
    with Outbox(path) as hl7_box:
        hl7_control, _ = hl7_box.put(to_oru(report))  # the MLLP sender's, in front
    with Outbox(path) as fhir_box:  # reopened, as after a restart of the watcher
        text = to_fhir_json(report)
        key, added = fhir_box.put(text, source="cell-1.png", kind="fhir", key=bundle_identifier(text))
        assert added and not fhir_box.put(text, kind="fhir", key=key)[1]  # the key stores it once
        with pytest.raises(ValueError, match="needs its key"):
            fhir_box.put(text, kind="fhir")
        sender = _sender(fhir_box, receiver.url)  # type: ignore[arg-type]
        sender.start()
        try:
            assert sender.drain(WAIT)
        finally:
            sender.stop(WAIT)
        assert receiver.keys() == [key, key]
        entry = fhir_box.get(key)
        assert entry is not None and (entry.kind, entry.state, entry.ack_code) == ("fhir", "done", "HTTP 200")
        assert fhir_box.depth("fhir") == {"pending": 0, "done": 1, "failed": 0}
        assert fhir_box.depth("hl7") == {"pending": 1, "done": 0, "failed": 0}  # untouched
        head = fhir_box.head()
        assert head is not None and head[0].control_id == hl7_control


def test_an_outbox_of_the_first_version_is_read_as_hl7(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:  # the schema before kinds, with one message queued
        db.execute(
            "CREATE TABLE messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, control_id TEXT NOT NULL UNIQUE, "
            "source TEXT NOT NULL DEFAULT '', state TEXT NOT NULL DEFAULT 'pending', body TEXT NOT NULL, "
            "attempts INTEGER NOT NULL DEFAULT 0, ack_code TEXT NOT NULL DEFAULT '', "
            "reason TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL, updated_at REAL NOT NULL)"
        )
        db.execute(
            "INSERT INTO messages (control_id, body, created_at, updated_at) VALUES ('OLD-1', 'MSH|x', 1, 1)"
        )
    with Outbox(path) as outbox:
        head = outbox.head("hl7")
        assert head is not None and (head[0].control_id, head[0].kind) == ("OLD-1", "hl7")
        assert outbox.head("fhir") is None
