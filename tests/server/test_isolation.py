"""Classify's own lane to the embedded model: a reserved model thread (latency: bench/isolation_bench.py)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from allxai.server.backends.workers import PriorityPool

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
