"""The durable outbox of the LIS senders: one SQLite file in WAL mode, keyed by each message's own id.

It holds two kinds: ``hl7`` messages for the MLLP sender, keyed by MSH-10, and ``fhir`` transaction bundles
for the FHIR sender (``allxai.lis.fhir_post``), keyed by ``Bundle.identifier``. Each sender takes only its
kind.

A message is ``pending`` from ``put`` until the LIS answers: AA (or CA) makes it ``done``, AE or AR makes it
``failed`` with the reason, which a person reads (``allxai lis outbox list``) and then retries or drops by
hand. Timeouts and lost connections leave it ``pending``, with the count of attempts and the last error.

Why SQLite: one commit is atomic and, with ``synchronous=FULL``, on disk before ``put`` returns, so a watcher
killed at any moment has either queued a message or not; WAL lets ``allxai lis outbox`` read (and retry)
while a watcher runs. The control id is the primary key, so a message put twice is stored (and sent) once.
A done message keeps its row (the key, the outcome) but not its body, so the file stays small; done rows
older than ``KEEP_DONE`` are pruned when the outbox opens.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from allxai.lis import _folder as files

#: The states of a message: waiting to be sent (or resent), acknowledged AA, refused (AE/AR).
STATES = ("pending", "done", "failed")
#: How long done rows (key and outcome, no body) are kept to refuse a control id put again.
KEEP_DONE = 30 * 24 * 3600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    control_id TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL DEFAULT 'pending',
    body TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    ack_code TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_state ON messages (state, seq);
CREATE INDEX IF NOT EXISTS messages_source ON messages (source);
"""
#: The kinds of message: HL7 v2 for MLLP, FHIR bundles for a FHIR server.
KINDS = ("hl7", "fhir")
_COLUMNS = "seq, control_id, source, state, attempts, ack_code, reason, created_at, updated_at, kind"


@dataclass(frozen=True)
class Entry:
    """One message of the outbox, without its body."""

    seq: int
    control_id: str
    source: str
    state: str
    attempts: int
    ack_code: str
    reason: str
    created_at: float
    updated_at: float
    kind: str = "hl7"


def control_id_of(message: str) -> str:
    """MSH-10 of an ER7 message (``ValueError`` when it has no MSH or no control id)."""
    if not message.startswith("MSH") or len(message) < 8:
        raise ValueError("not an HL7 v2 message: it does not start with MSH")
    first = message.replace("\n", "\r").split("\r", 1)[0]
    fields = first.split(message[3])  # MSH-1 is the separator itself, so MSH-n is fields[n - 1]
    if len(fields) < 10 or not fields[9]:
        raise ValueError("the message has no control id (MSH-10)")
    return fields[9]


class Outbox:
    """The outbox at ``path`` (created when missing); safe to share between threads.

    ``metrics_file``, when given, is rewritten atomically after every change with the depth per state in
    Prometheus' text format (for node_exporter's textfile collector): the LIS adapter serves no HTTP itself.
    """

    def __init__(self, path: Path, *, metrics_file: Path | None = None) -> None:
        self.path = path
        self.metrics_file = metrics_file
        #: Set by every ``put`` and ``retry`` of this process, so a waiting sender wakes up.
        self.changed = threading.Event()
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: each statement commits on its own, no implicit transactions left open.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # WAL with NORMAL may lose the last commits on power loss
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(messages)")}
        if "kind" not in columns:  # an outbox of the first version: every message in it is HL7
            self._db.execute("ALTER TABLE messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'hl7'")
        self._db.execute("CREATE INDEX IF NOT EXISTS messages_kind ON messages (kind, state, seq)")
        self._db.execute(
            "DELETE FROM messages WHERE state = 'done' AND updated_at < ?", (time.time() - KEEP_DONE,)
        )
        self._write_metrics()

    def close(self) -> None:
        """Close the database (the file stays)."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def put(self, message: str, *, source: str = "", kind: str = "hl7", key: str = "") -> tuple[str, bool]:
        """Queue ``message``; returns its key and whether it is new (False: that key is known already).

        The key of an HL7 message is its MSH-10 (``key`` may only repeat it); a FHIR bundle's is its
        ``Bundle.identifier`` value, given as ``key``. ``source`` names what the message is about (the
        watcher: image name and digest), see ``by_source``.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown kind of message {kind!r}; one of {', '.join(KINDS)}")
        if kind == "hl7":
            control_id = control_id_of(message)
            if key and key != control_id:
                raise ValueError(f"the key of an HL7 message is its MSH-10 {control_id!r}, not {key!r}")
        elif not key:
            raise ValueError("a FHIR bundle needs its key (its Bundle.identifier value)")
        else:
            control_id = key
        now = time.time()
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO messages (control_id, source, body, created_at, updated_at, kind) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (control_id, source, message, now, now, kind),
            )
            added = cursor.rowcount == 1
        if added:
            self._changed()
        return control_id, added

    def by_source(self, source: str, kind: str = "hl7") -> Entry | None:
        """The newest message of ``kind`` about ``source``, or None (the watcher asks before it redoes an
        image)."""
        return self._one(
            f"SELECT {_COLUMNS} FROM messages WHERE source = ? AND kind = ? ORDER BY seq DESC", (source, kind)
        )

    def get(self, control_id: str) -> Entry | None:
        """The message with that control id, or None."""
        return self._one(f"SELECT {_COLUMNS} FROM messages WHERE control_id = ?", (control_id,))

    def head(self, kind: str = "hl7") -> tuple[Entry, str] | None:
        """The oldest pending message of ``kind`` and its body: messages go out in the order they were put."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS}, body FROM messages WHERE state = 'pending' AND kind = ? "
                "ORDER BY seq LIMIT 1",
                (kind,),
            ).fetchone()
        return None if row is None else (Entry(*row[:-1]), row[-1])

    def entries(
        self, states: tuple[str, ...] = ("pending", "failed"), kind: str | None = None
    ) -> list[Entry]:
        """The messages in those states (of ``kind``, or of every kind), oldest first."""
        marks = ", ".join("?" * len(states))
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE state IN ({marks}) ORDER BY seq", states
            ).fetchall()
        return [entry for entry in (Entry(*row) for row in rows) if kind is None or entry.kind == kind]

    def depth(self, kind: str | None = None) -> dict[str, int]:
        """How many messages (of ``kind``, or of every kind) are in each state."""
        counts = dict.fromkeys(STATES, 0)
        for (of_kind, state), n in self._depths().items():
            if kind is None or of_kind == kind:
                counts[state] += n
        return counts

    def _depths(self) -> dict[tuple[str, str], int]:
        """Messages per (kind, state), zero included."""
        with self._lock:
            rows = self._db.execute(
                "SELECT kind, state, COUNT(*) FROM messages GROUP BY kind, state"
            ).fetchall()
        counts = {(kind, state): 0 for kind in KINDS for state in STATES}
        counts.update({(kind, state): n for kind, state, n in rows})
        return counts

    def attempt_failed(self, control_id: str, error: str) -> None:
        """Count a send that got no answer (timeout, lost connection); the message stays pending."""
        self._update(
            "UPDATE messages SET attempts = attempts + 1, reason = ?, updated_at = ? "
            "WHERE control_id = ? AND state = 'pending'",
            (error, time.time(), control_id),
        )

    def mark_done(self, control_id: str, ack_code: str) -> None:
        """The LIS accepted the message: keep the row, drop the body."""
        self._update(
            "UPDATE messages SET state = 'done', body = '', ack_code = ?, reason = '', "
            "attempts = attempts + 1, updated_at = ? WHERE control_id = ?",
            (ack_code, time.time(), control_id),
        )

    def mark_failed(self, control_id: str, ack_code: str, reason: str) -> None:
        """The LIS refused the message (AE, AR): it waits, with the reason, for a person."""
        self._update(
            "UPDATE messages SET state = 'failed', ack_code = ?, reason = ?, attempts = attempts + 1, "
            "updated_at = ? WHERE control_id = ?",
            (ack_code, reason, time.time(), control_id),
        )

    def retry(self, control_id: str) -> bool:
        """Make a failed message pending again (same control id, same place in the order)."""
        changed = self._update(
            "UPDATE messages SET state = 'pending', updated_at = ? WHERE control_id = ? AND state = 'failed'",
            (time.time(), control_id),
        )
        if changed:
            self.changed.set()
        return changed

    def drop(self, control_id: str) -> bool:
        """Delete a message whatever its state; True when there was one."""
        return self._update("DELETE FROM messages WHERE control_id = ?", (control_id,))

    def _one(self, sql: str, params: tuple[str, ...]) -> Entry | None:
        with self._lock:
            row = self._db.execute(sql, params).fetchone()
        return None if row is None else Entry(*row)

    def _update(self, sql: str, params: tuple[object, ...]) -> bool:
        with self._lock:
            changed = self._db.execute(sql, params).rowcount > 0
        if changed:
            self._write_metrics()
        return changed

    def _changed(self) -> None:
        self._write_metrics()
        self.changed.set()

    def _write_metrics(self) -> None:
        if self.metrics_file is None:
            return
        lines = [
            "# HELP allxai_lis_outbox_messages Messages in the LIS outbox, by kind (hl7, fhir) and state.",
            "# TYPE allxai_lis_outbox_messages gauge",
            *(
                f'allxai_lis_outbox_messages{{kind="{k}",state="{s}"}} {n}'
                for (k, s), n in sorted(self._depths().items())
            ),
        ]
        # A scraper reads the old file or the new one, never half of one; losing it in a crash costs nothing.
        files.write_atomic(self.metrics_file, ("\n".join(lines) + "\n").encode(), durable=False)
