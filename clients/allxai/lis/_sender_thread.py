"""What the MLLP and FHIR senders share: a thread over one kind of the outbox, stopped and waited on alike."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class SenderThread:
    """A sending thread for the outbox messages of ``kind``; a subclass supplies ``run`` and calls
    ``_notify`` after every outcome, which is when ``wait_until`` looks again."""

    #: The kind of message this sender takes from the outbox ("hl7" or "fhir").
    kind = ""
    #: The thread's name.
    thread_name = "allxai-sender"

    def __init__(self, outbox: Any) -> None:
        self.outbox = outbox
        self._stop = threading.Event()
        self._progress = threading.Condition()
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        """Send until stopped."""
        raise NotImplementedError

    def start(self) -> None:
        """Start the sending thread."""
        self._thread = threading.Thread(target=self.run, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the message in flight (its answer or timeout); what is unsent stays in the outbox."""
        self._stop.set()
        self.outbox.changed.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wait_until(self, condition: Callable[[], bool], timeout: float | None = None) -> bool:
        """Wait until ``condition()`` holds, checked after every send's outcome; False on timeout."""
        with self._progress:
            return self._progress.wait_for(condition, timeout)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until no message of this sender's kind is pending (failed ones do not count, nor the other
        kind's, which another sender takes); False on timeout."""
        return self.wait_until(lambda: self.outbox.head(kind=self.kind) is None, timeout)

    def _notify(self) -> None:
        with self._progress:
            self._progress.notify_all()
