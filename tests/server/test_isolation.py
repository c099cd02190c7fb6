"""Classify's own lane to the embedded model: a reserved model thread (latency: bench/isolation_bench.py)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from allxai.client import Client
from allxai.server.backends.workers import InteractiveGate, PriorityPool
from tests.conftest import GatewayThread, gateway_settings

INTERACTIVE, BULK = 0, 1


def test_an_interactive_job_runs_while_bulk_work_holds_every_other_thread() -> None:
    pool = PriorityPool(2, "test-pool", reserved=1)
    release = threading.Event()
    started = threading.Event()
    ran: list[str] = []

    def bulk(name: str) -> str:
        started.set()
        release.wait()
        ran.append(name)
        return name

    async def main() -> None:
        first = pool.submit(BULK, bulk, "bulk-1")
        queued = pool.submit(BULK, bulk, "bulk-2")
        await asyncio.to_thread(started.wait)
        # The only thread bulk work may use is held: without the reserved thread this would wait.
        assert await pool.submit(INTERACTIVE, lambda: "classify") == "classify"
        assert not first.done() and not queued.done()
        release.set()
        assert await asyncio.gather(first, queued) == ["bulk-1", "bulk-2"]

    try:
        asyncio.run(main())
    finally:
        release.set()
        pool.shutdown(wait=True)  # the reserved thread stops too, after the queued work
    assert ran == ["bulk-1", "bulk-2"]


def test_queued_bulk_work_finishes_before_the_pool_stops() -> None:
    pool = PriorityPool(3, "test-pool", reserved=2)
    done: list[int] = []
    for i in range(5):
        pool.put(BULK, lambda i=i: done.append(i))  # type: ignore[misc]
    pool.shutdown(wait=True)
    assert sorted(done) == list(range(5))


@pytest.mark.parametrize("reserved", [-1, 2, 3])
def test_some_thread_must_be_left_for_bulk_work(reserved: int) -> None:
    with pytest.raises(ValueError, match="reserve 0 to 1 of 2"):
        PriorityPool(2, "test-pool", reserved=reserved)


def test_bulk_work_waits_while_a_classification_is_in_progress() -> None:
    gate = InteractiveGate(max_defer=600.0)
    pool = PriorityPool(2, "test-pool", reserved=1, gate=gate)
    ran = threading.Event()
    try:
        with gate.active():
            pool.put(BULK, ran.set)
            # Held back while the classification lasts, however long the machine takes to get there.
            assert not ran.wait(0.3)
            assert gate.busy
        assert ran.wait(30)  # and let go as soon as it ends
        assert not gate.busy
    finally:
        pool.shutdown(wait=True)


def test_bulk_work_is_deferred_at_most_max_defer_so_explanations_never_starve() -> None:
    gate = InteractiveGate(max_defer=0.05)
    pool = PriorityPool(2, "test-pool", reserved=1, gate=gate)
    ran = threading.Event()
    interactive = threading.Event()
    try:
        with gate.active():
            pool.put(BULK, ran.set)
            assert ran.wait(30)  # the classification is still in progress: the batch ran anyway
            # Interactive work never waits for the gate.
            pool.put(INTERACTIVE, interactive.set)
            assert interactive.wait(30)
    finally:
        pool.shutdown(wait=True)


def test_a_zero_defer_never_holds_bulk_work_and_scopes_nest() -> None:
    gate = InteractiveGate(max_defer=0.0)
    with gate.active(), gate.active():
        gate.wait_clear()  # returns at once
        assert gate.busy
    assert not gate.busy


class _Watching:
    """The real embedded backend, noting whether each model call came inside an interactive scope."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.depth = 0
        self.calls: list[tuple[str, bool]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @contextlib.contextmanager
    def interactive(self) -> Iterator[None]:
        with self._inner.interactive():
            self.depth += 1
            try:
                yield
            finally:
                self.depth -= 1

    async def predict(self, model: Any, images: Any, timeout: Any, lane: str = "interactive") -> Any:
        self.calls.append((lane, self.depth > 0))
        return await self._inner.predict(model, images, timeout, lane)

    async def predict_composed(self, model: Any, composition: Any, timeout: Any, lane: str = "bulk") -> Any:
        self.calls.append((lane, self.depth > 0))
        return await self._inner.predict_composed(model, composition, timeout, lane)


def test_classify_runs_inside_the_interactive_scope_and_explain_outside(
    model_base: Path, cell_png: bytes
) -> None:
    from allxai.server.app import make_backend

    settings = gateway_settings(model_base)
    backend = _Watching(make_backend(settings))  # type: ignore[arg-type]
    thread = GatewayThread(settings, backend)
    running = thread.start()
    try:
        with Client(running.target) as client:
            client.classify(cell_png)
            client.explain(cell_png, num_samples=40, seed=1)
    finally:
        thread.stop()
    assert backend.calls[0] == ("interactive", True)  # Classify, from decoding to the answer
    bulk = [inside for lane, inside in backend.calls if lane == "bulk"]
    assert bulk and not any(bulk)  # the perturbation batches are the work the scope holds back
