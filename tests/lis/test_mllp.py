"""The MLLP sender and its durable outbox, against python-hl7's asyncio MLLP server as an independent LIS.

No sleeps: the tests wait on the receiver's events and on the sender's progress condition (checked after every
send's outcome); their timeouts only bound a failure.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import hl7  # type: ignore[import-untyped]
import hl7.mllp  # type: ignore[import-untyped]
import numpy as np
import pytest

from allxai.client import Client
from allxai.lis import _folder as files
from allxai.lis import commands, watch
from allxai.lis._image import Options
from allxai.lis._watcher import Watcher
from allxai.lis.mllp import Ack, AckError, MllpSender, frame, parse_ack
from allxai.lis.outbox import Outbox, control_id_of
from tests.conftest import png_bytes
from tests.lis.test_watcher import FakeClient

WAIT = 20.0  # bounds a wait that fails; a passing test never waits this long


def _message(control_id: str) -> str:
    return (
        f"MSH|^~\\&|ALLXAI||LIS||20260301120000||ORU^R01^ORU_R01|{control_id}|P|2.5||||||UNICODE UTF-8\r"
        f"OBR|1||{control_id}^ALLXAI|ALLXAI-CLS^Leukaemia cell classification^99ALX\r"
    )


class Receiver:
    """python-hl7's MLLP server on a loop of its own: ACKs AA unless ``plan`` says otherwise for the n-th
    distinct control id ("AE": a NAK with a reason; "silent": no answer; "crash": the server dies unanswered).
    Like an HL7 receiver it counts a control id it has accepted once, however often it arrives."""

    def __init__(self, plan: dict[int, str] | None = None) -> None:
        self.plan = dict(plan or {})
        self.arrivals: Counter[str] = Counter()
        self.accepted: list[str] = []
        self.order: list[str] = []  # distinct control ids, first arrival order
        self.crashed = threading.Event()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: asyncio.Server | None = None
        self._writers: set[Any] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(WAIT)

    def start(self) -> None:
        self._call(self._start())

    async def _start(self) -> None:
        self._server = await hl7.mllp.start_hl7_server(
            self._handle, "127.0.0.1", self.port, encoding="utf-8", limit=1 << 22
        )
        self.port = self._server.sockets[0].getsockname()[1]  # port 0 first: a free one, then the same

    def kill(self) -> None:
        self._call(self._kill())

    async def _kill(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()  # a crash: connections reset, nothing answered
        await self._server.wait_closed()

    async def _handle(self, reader: Any, writer: Any) -> None:
        self._writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                try:
                    message = await reader.readmessage()
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                cid = str(message.segment("MSH")(10))
                self.arrivals[cid] += 1
                action = "AA"
                if cid not in self.order:
                    self.order.append(cid)
                    action = self.plan.pop(len(self.order) - 1, "AA")
                if action == "crash":
                    await self._kill()
                    self.crashed.set()
                    return
                if action == "silent":
                    continue
                ack = str(message.create_ack(action)).rstrip("\r")
                if action == "AE":
                    ack += "|Order unknown\rERR|||204^Unknown key identifier^HL70357|E||||no such order\r"
                elif cid not in self.accepted:
                    self.accepted.append(cid)
                writer.writemessage(ack)
                await writer.drain()
        finally:
            writer.close()
            self._writers.discard(writer)
            self._tasks.discard(task)

    async def _shutdown(self) -> None:
        if self._server is not None and self._server.is_serving():
            await self._kill()
        for writer in list(self._writers):
            writer.transport.abort()
        # Each handler sees its connection lost and leaves; then the loop may close.
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def close(self) -> None:
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(WAIT)
        self._loop.close()


@pytest.fixture
def receiver_factory() -> Iterator[Any]:
    made: list[Receiver] = []

    def make(plan: dict[int, str] | None = None) -> Receiver:
        made.append(Receiver(plan))
        made[-1].start()
        return made[-1]

    yield make
    for r in made:
        r.close()


def _sender(outbox: Outbox, port: int, **kw: float) -> MllpSender:
    options: dict[str, float] = {"ack_timeout": 10.0, "backoff": 0.02, "max_backoff": 0.2, "idle_poll": 0.5}
    return MllpSender(outbox, "127.0.0.1", port, **(options | kw))


# --- ACK parsing -------------------------------------------------------------------------------------------


def test_parse_ack_reads_codes_and_reasons() -> None:
    aa = parse_ack("MSH|^~\\&|LIS||ALLXAI||20260301||ACK^R01^ACK|9|P|2.5\rMSA|AA|c1\r")
    assert aa == Ack("AA", "c1", "") and aa.accepted
    ae = parse_ack(
        "MSH|^~\\&|LIS||ALLXAI||20260301||ACK|9|P|2.5\rMSA|AE|c2|Order unknown\r"
        "ERR|||204^Unknown key identifier^HL70357|E||||no such order\r"
    )
    assert ae.code == "AE" and not ae.accepted and ae.control_id == "c2"
    assert ae.reason == "Order unknown; 204 Unknown key identifier HL70357; no such order"
    # v2.3's ERR-1, other separators, enhanced-mode codes read as their original-mode peers.
    ar = parse_ack("MSH#^~\\&#LIS\rMSA#CR#c3\rERR#PID^1^3^101\n")
    assert ar == Ack("AR", "c3", "PID 1 3 101")
    assert parse_ack("MSH|^~\\&|X\rMSA|CA|c4").code == "AA"
    assert parse_ack("MSH|^~\\&|X\rMSA|CE|c5").code == "AE"


@pytest.mark.parametrize(
    "text", ["", "garbage", "MSH|^~\\&|X\r", "MSH|^~\\&|X\rMSA|AA\r", "MSH|^~\\&|X\rMSA|ZZ|c1\r"]
)
def test_parse_ack_refuses_what_is_not_an_ack(text: str) -> None:
    with pytest.raises(AckError):
        parse_ack(text)


def test_parse_ack_reads_python_hl7s_acks() -> None:
    message = hl7.parse(_message("c9"))
    assert parse_ack(str(message.create_ack("AA"))) == Ack("AA", "c9", "")
    assert parse_ack(str(message.create_ack("AR"))).code == "AR"
    assert frame("MSH|x\r") == b"\x0bMSH|x\r\x1c\r"


# --- the outbox --------------------------------------------------------------------------------------------


def test_outbox_survives_a_restart_and_stores_each_control_id_once(tmp_path: Path) -> None:
    path = tmp_path / "box.sqlite"
    with Outbox(path) as box:
        assert box.put(_message("a"), source="a.png@1") == ("a", True)
        assert box.put(_message("b")) == ("b", True)
        assert box.put(_message("c")) == ("c", True)
        assert box.put(_message("a")) == ("a", False)  # the same control id: not stored twice
        box.mark_done("a", "AA")
        box.attempt_failed("b", "TimeoutError: no ACK")
    with Outbox(path) as box:  # a restarted watcher
        head = box.head()
        assert head is not None and head[0].control_id == "b" and head[1] == _message("b")
        assert head[0].attempts == 1 and "no ACK" in head[0].reason
        done = box.get("a")
        assert done is not None and done.state == "done" and done.ack_code == "AA"
        assert box.put(_message("a")) == ("a", False)  # acknowledged before the restart: never again
        assert box.by_source("a.png@1") == done
        assert [e.control_id for e in box.entries()] == ["b", "c"]
        assert box.depth() == {"pending": 2, "done": 1, "failed": 0}


def test_outbox_failed_messages_wait_for_a_person(tmp_path: Path) -> None:
    metrics = tmp_path / "outbox.prom"
    with Outbox(tmp_path / "box.sqlite", metrics_file=metrics) as box:
        box.put(_message("a"))
        box.put(_message("b"))
        box.mark_failed("a", "AE", "Order unknown")
        head = box.head()
        assert head is not None and head[0].control_id == "b"  # a refused message does not hold up the rest
        assert 'allxai_lis_outbox_messages{kind="hl7",state="failed"} 1' in metrics.read_text()
        assert not box.retry("b")  # only failed messages are retried by hand
        assert box.retry("a")
        head = box.head()
        assert head is not None and head[0].control_id == "a"  # its place in the order is kept
        assert box.drop("b") and not box.drop("b")
        assert 'allxai_lis_outbox_messages{kind="hl7",state="pending"} 1' in metrics.read_text()


@pytest.mark.parametrize("text", ["", "PID|1", "MSH|^~\\&|A||B||2026||ORU^R01|"])
def test_control_id_of_refuses_messages_without_one(text: str) -> None:
    with pytest.raises(ValueError, match="MSH"):
        control_id_of(text)


def test_outbox_command_lists_retries_and_drops(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "box.sqlite"
    with Outbox(path) as box:
        box.put(_message("a"), source="a.png@1")
        box.put(_message("b"))
        box.mark_failed("a", "AE", "Order unknown")
    assert commands.main(["outbox", "--path", str(path)]) == 0
    out = capsys.readouterr().out
    assert "a.png@1  Order unknown" in out and "depth: pending 1, done 0, failed 1" in out
    assert commands.main(["outbox", "--path", str(path), "retry", "b"]) == 1  # pending, not failed
    assert commands.main(["outbox", "--path", str(path), "retry", "a"]) == 0
    assert commands.main(["outbox", "--path", str(path), "drop", "b"]) == 0
    assert commands.main(["outbox", "--path", str(path), "drop", "b"]) == 1
    assert commands.main(["outbox", "--path", str(tmp_path / "none.sqlite")]) == 2
    capsys.readouterr()
    assert commands.main(["outbox", "--path", str(path), "list", "--all"]) == 0
    assert "depth: pending 1, done 0, failed 0" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv", [["--outbox", "x.sqlite"], ["--metrics-file", "m.prom"], ["--mllp", "lis"], ["--mllp", "lis:0"]]
)
def test_watch_refuses_bad_mllp_options(tmp_path: Path, argv: list[str]) -> None:
    assert watch.main([str(tmp_path), "--once", *argv]) == 2


# --- sending -----------------------------------------------------------------------------------------------


def test_a_message_without_an_ack_in_time_is_sent_again_with_its_control_id(
    tmp_path: Path, receiver_factory: Any
) -> None:
    receiver = receiver_factory({0: "silent"})
    with Outbox(tmp_path / "box.sqlite") as box:
        box.put(_message("slow"))
        sender = _sender(box, receiver.port, ack_timeout=0.2)
        sender.start()
        try:
            assert sender.drain(WAIT)
        finally:
            sender.stop(WAIT)
        entry = box.get("slow")
        assert entry is not None and entry.state == "done" and entry.attempts >= 2
    assert receiver.arrivals["slow"] >= 2 and receiver.accepted == ["slow"]


def test_watcher_to_lis_exactly_once_through_a_crash_a_restart_and_a_nak(
    tmp_path: Path, receiver_factory: Any
) -> None:
    """Six images; the LIS NAKs the 2nd (AE) and crashes on the 4th before answering; the watcher is
    restarted while the LIS is down, and one image lost its marker (a crash between queueing and marking)."""
    folder, box_path = tmp_path / "in", tmp_path / "box.sqlite"
    folder.mkdir()
    for i in range(6):
        (folder / f"S{i}.png").write_bytes(png_bytes(np.full((8, 8, 3), i, dtype=np.uint8)))
    receiver = receiver_factory({1: "AE", 3: "crash"})
    client = FakeClient()

    def watcher(box: Outbox) -> Watcher:
        return Watcher(folder, cast(Client, client), Options(settle=0, retry_after=0), outbox=box)

    box = Outbox(box_path)
    assert watcher(box).poll() == 0
    queued = [e.control_id for e in box.entries()]
    assert len(queued) == 6
    sender = _sender(box, receiver.port)
    sender.start()
    assert receiver.crashed.wait(WAIT)
    # While the LIS is down the 4th is retried (lost connection, then refused ones) and nothing overtakes it.
    assert sender.wait_until(lambda: (e := box.get(queued[3])) is not None and e.attempts >= 2, WAIT)
    sender.stop(WAIT)
    box.close()
    files.output(folder / "S0.png", files.MARKER_SUFFIX).unlink()

    receiver.start()  # the LIS back on the same port; then the watcher restarts
    box = Outbox(box_path)
    assert watcher(box).poll() == 0
    assert len(client.calls) == 6  # S0 found in the outbox: not classified, not queued again
    assert files.output(folder / "S0.png", files.MARKER_SUFFIX).exists()
    sender = _sender(box, receiver.port)
    sender.start()
    try:
        assert sender.drain(WAIT)
        failed = box.entries(("failed",))
        assert [(e.control_id, e.ack_code) for e in failed] == [(queued[1], "AE")]
        assert "Order unknown" in failed[0].reason and "no such order" in failed[0].reason
        assert receiver.arrivals[queued[1]] == 1  # refused: not resent on its own
        assert receiver.accepted == queued[:1] + queued[2:]  # in order; the crashed one after the restart

        assert box.retry(queued[1])  # by hand, once the LIS knows the order
        assert sender.drain(WAIT)
    finally:
        sender.stop(WAIT)
    assert sorted(receiver.accepted) == sorted(queued)
    assert len(set(receiver.accepted)) == 6
    assert receiver.arrivals[queued[1]] == 2 and receiver.arrivals[queued[3]] == 2
    assert box.depth() == {"pending": 0, "done": 6, "failed": 0}
    assert box.entries() == []
    box.close()


class _ClientInContext(FakeClient):
    def __enter__(self) -> _ClientInContext:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def test_watch_once_sends_over_mllp_and_waits_for_the_acks(
    tmp_path: Path, receiver_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(2):
        (tmp_path / f"S{i}.png").write_bytes(png_bytes(np.full((8, 8, 3), i, dtype=np.uint8)))
    receiver = receiver_factory()
    monkeypatch.setattr(watch, "_client", lambda args: _ClientInContext())
    metrics = tmp_path / "metrics" / "outbox.prom"
    metrics.parent.mkdir()
    argv = [
        str(tmp_path),
        "--once",
        "--settle",
        "0",
        "--interval",
        "0",
        "--mllp",
        f"127.0.0.1:{receiver.port}",
    ]
    assert watch.main([*argv, "--metrics-file", str(metrics)]) == 0
    assert len(set(receiver.accepted)) == 2
    assert 'allxai_lis_outbox_messages{kind="hl7",state="done"} 2' in metrics.read_text()
    assert files.output(tmp_path / "S1.png", files.HL7_SUFFIX).exists()  # the files are written as before
    with Outbox(tmp_path / commands.DEFAULT_OUTBOX_NAME) as box:
        assert box.depth() == {"pending": 0, "done": 2, "failed": 0}
        assert sorted(e.control_id for e in box.entries(("done",))) == sorted(receiver.accepted)
