"""Send the outbox's HL7 messages to a LIS over MLLP and wait for each acknowledgement (original mode).

Framing is MLLP release 1: ``<VT> message <FS><CR>``, the message in UTF-8 (MSH-18 says ``UNICODE UTF-8``).
Our messages leave MSH-15 and MSH-16 empty, which in HL7 v2.5 means *original* acknowledgement mode: the
receiver answers every message with one ACK whose MSA-1 is AA (accepted), AE (error) or AR (rejected), and
MSA-2 repeats our MSH-10. A receiver that answers in enhanced mode anyway is read the same way: CA as AA,
CE as AE, CR as AR.

One message is in flight at a time, oldest first, on one kept-open connection:

- AA: the message is done.
- AE, AR: it is marked failed with the reason (MSA-3 and the ERR segments) and the sender goes on with the
  next; it is not retried blindly, since the same message would be refused again. A person retries or drops
  it (``allxai lis outbox``).
- No ACK within ``ack_timeout``, a refused or lost connection, an ACK to another control id: the connection
  is closed and the same message (same control id, which receivers use to drop duplicates) is sent again
  after a backoff that doubles from ``backoff`` up to ``max_backoff``; later messages wait, so the LIS gets
  results in order.

The blocking socket code is ours (MLLP framing is two bytes either side); python-hl7's ``hl7.mllp`` is
asyncio-only, while the watcher is threaded, and it serves as the independent receiver in the tests.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sqlite3
import time
from dataclasses import dataclass

from allxai.lis._sender_thread import SenderThread
from allxai.lis.outbox import Entry, Outbox

__all__ = ["END_BLOCK", "START_BLOCK", "Ack", "MllpSender", "frame", "parse_ack"]

log = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\r"
_ACCEPTED = {"AA": "AA", "CA": "AA"}
_REFUSED = {"AE": "AE", "AR": "AR", "CE": "AE", "CR": "AR"}
#: Longest ACK we read before calling the peer broken (an ACK is a few hundred bytes).
_MAX_ACK_BYTES = 1 << 20


class AckError(Exception):
    """The peer answered something that is not an ACK to the message sent (retried like a timeout)."""


@dataclass(frozen=True)
class Ack:
    """An acknowledgement: ``code`` is AA, AE or AR (enhanced-mode codes mapped), and why when not AA."""

    code: str
    control_id: str
    reason: str = ""

    @property
    def accepted(self) -> bool:
        """Whether the receiver took the message (AA)."""
        return self.code == "AA"


def frame(message: str) -> bytes:
    """The MLLP block of an ER7 message (segments ended by CR), in UTF-8."""
    return START_BLOCK + message.encode("utf-8") + END_BLOCK


def _fields(segment: str, separator: str) -> list[str]:
    return segment.split(separator)


def parse_ack(text: str) -> Ack:
    """Read an ACK's MSA-1, MSA-2 and reason (MSA-3, ERR-3/ERR-8 or v2.3's ERR-1); ``AckError`` if none."""
    if not text.startswith("MSH") or len(text) < 8:
        raise AckError("the answer is not an HL7 message")
    sep, comp = text[3], text[4]
    msa: list[str] | None = None
    errors: list[str] = []
    for segment in text.replace("\n", "\r").split("\r"):
        fields = _fields(segment, sep)
        if fields[0] == "MSA":
            msa = fields
        elif fields[0] == "ERR":
            # v2.5 ERR-3 is the error code (CWE: code^text), ERR-8 the user message; v2.3 used ERR-1 (ELD).
            parts = [fields[i] for i in (3, 8, 1) if len(fields) > i and fields[i]]
            errors += [p.replace(comp, " ").strip() for p in parts]
    if msa is None or len(msa) < 3:
        raise AckError("the answer has no MSA segment with a code and a control id")
    raw = msa[1].strip().upper()
    code = _ACCEPTED.get(raw) or _REFUSED.get(raw)
    if code is None:
        raise AckError(f"unknown acknowledgement code {raw!r}")
    reasons = [msa[3].strip()] if len(msa) > 3 and msa[3].strip() else []
    return Ack(code, msa[2].strip(), "; ".join(reasons + [e for e in errors if e]))


class MllpSender(SenderThread):
    """Sends ``outbox``'s pending messages to ``host:port`` from a thread of its own (``start``/``stop``)."""

    kind = "hl7"
    thread_name = "allxai-mllp"

    def __init__(
        self,
        outbox: Outbox,
        host: str,
        port: int,
        *,
        connect_timeout: float = 10.0,
        ack_timeout: float = 30.0,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        idle_poll: float = 5.0,
    ) -> None:
        super().__init__(outbox)
        self.address = (host, port)
        self.connect_timeout = connect_timeout
        self.ack_timeout = ack_timeout
        self.backoff = backoff
        self.max_backoff = max_backoff
        # A retry typed in another process (``allxai lis outbox retry``) cannot set our event: look again.
        self.idle_poll = idle_poll
        self._sock: socket.socket | None = None

    def run(self) -> None:
        """Send until stopped: the loop the thread runs (callable directly, e.g. in a test)."""
        delay = self.backoff
        try:
            while not self._stop.is_set():
                self.outbox.changed.clear()
                head = self.outbox.head()
                if head is None:
                    self._notify()
                    self.outbox.changed.wait(self.idle_poll)
                    continue
                entry, body = head
                try:
                    sent = self._send(entry, body)
                except sqlite3.Error:
                    # The outbox could not record an outcome (disk full, say): keep the thread, try again.
                    log.exception("MLLP: the outbox cannot be updated; retrying")
                    sent = False
                if sent:
                    delay = self.backoff
                else:
                    # Bounded exponential backoff; stop() interrupts the wait.
                    self._stop.wait(delay)
                    delay = min(delay * 2, self.max_backoff)
        finally:
            self._close()
            self._notify()

    def _send(self, entry: Entry, body: str) -> bool:
        """One attempt; True when the LIS answered (AA or a refusal), False when it must be retried."""
        cid = entry.control_id
        try:
            ack = self._exchange(frame(body))
            if ack.control_id != cid:
                raise AckError(f"ACK for {ack.control_id!r}, expected {cid!r}")
        except (OSError, AckError) as exc:  # socket.timeout is an OSError
            self._close()  # a late ACK on this connection would answer the wrong message
            error = f"{type(exc).__name__}: {exc}"
            self.outbox.attempt_failed(cid, error)
            log.warning(
                "MLLP %s: %s not acknowledged (attempt %d): %s", self._peer(), cid, entry.attempts + 1, error
            )
            self._notify()
            return False
        if ack.accepted:
            self.outbox.mark_done(cid, ack.code)
            log.info("MLLP %s: %s acknowledged AA; outbox %s", self._peer(), cid, self.outbox.depth())
        else:
            self.outbox.mark_failed(cid, ack.code, ack.reason)
            log.error(
                "MLLP %s: %s refused %s (%s); left in the outbox as failed, retry it by hand",
                self._peer(),
                cid,
                ack.code,
                ack.reason or "no reason given",
            )
        self._notify()
        return True

    def _exchange(self, block: bytes) -> Ack:
        sock = self._connect()
        sock.settimeout(self.ack_timeout)
        sock.sendall(block)
        deadline = time.monotonic() + self.ack_timeout
        buffer = b""
        while END_BLOCK not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no ACK within {self.ack_timeout:g} s")
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the receiver closed the connection before its ACK")
            buffer += chunk
            if len(buffer) > _MAX_ACK_BYTES:
                raise AckError("the answer is too long for an ACK")
        start = buffer.find(START_BLOCK)
        text = buffer[start + 1 if start >= 0 else 0 : buffer.index(END_BLOCK)]
        return parse_ack(text.decode("utf-8", errors="replace"))

    def _connect(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.create_connection(self.address, timeout=self.connect_timeout)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self._sock

    def _close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def _peer(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"
