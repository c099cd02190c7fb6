"""The load tester's scheduler: closed and open loop over any ``Caller``; no channels, no files.

``run_level`` drives the calls and records each one's latency (``time.perf_counter``) and status code; the
statistics are computed afterwards, in ``stats``.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from allxai.loadtest.args import METHODS
from allxai.loadtest.stats import CallRecord

#: Sends one call of ``method`` (a mix name) with image ``index``; raises ``grpc.aio.AioRpcError`` on failure.
Caller = Callable[[str, int], Awaitable[None]]


class Plan:
    """Which method and image each call uses, in the order calls start: methods drawn from the mix by a
    seeded generator (so a run can be repeated), images cycled in order."""

    def __init__(self, mix: dict[str, float], n_images: int, seed: int) -> None:
        self._methods = list(mix)
        self._weights = [mix[m] for m in self._methods]
        self._n_images = n_images
        self._rng = random.Random(seed)
        self._index = 0

    def next(self) -> tuple[str, int]:
        """The next call's method and image index."""
        method = self._rng.choices(self._methods, self._weights)[0]
        image = self._index % self._n_images
        self._index += 1
        return method, image


@dataclass(frozen=True)
class LevelResult:
    """What one level collected: its finished calls, wall time, calls started, and why it stopped."""

    records: list[CallRecord]
    elapsed: float
    sent: int
    stopped_by: str


async def run_level(
    call: Caller,
    plan: Plan,
    *,
    concurrency: int,
    total: int | None,
    duration: float | None,
    rate: float | None,
    max_time: float,
    stop: asyncio.Event,
    on_done: Callable[[CallRecord], None] | None = None,
) -> LevelResult:
    """Run calls until ``total`` have started or ``duration`` has passed, then let those in flight finish.

    Closed loop without ``rate``: ``concurrency`` workers, each starting its next call when the last ends.
    Open loop with ``rate``: call i is due at ``i / rate`` seconds whether or not earlier ones have ended, and
    its latency counts from then, so time spent queued behind the ``concurrency`` limit when the server falls
    behind is part of the latency (no coordinated omission). ``stop`` (ctrl-C) or ``max_time`` cancel the
    calls in flight; those are counted as sent but not recorded.
    """
    records: list[CallRecord] = []
    t0 = time.perf_counter()
    end = t0 + duration if duration is not None else math.inf
    sent = 0
    children: set[asyncio.Task[None]] = set()

    def more(now: float) -> bool:
        return not stop.is_set() and (total is None or sent < total) and now < end

    async def timed(method: str, image: int, started: float) -> None:
        try:
            await call(method, image)
            code, message = "OK", ""
        except grpc.aio.AioRpcError as exc:
            code, message = exc.code().name, exc.details() or ""
        latency = time.perf_counter() - started
        record = CallRecord(METHODS.get(method, method), started - t0, latency, code, message)
        records.append(record)
        if on_done is not None:
            on_done(record)

    async def worker() -> None:
        nonlocal sent
        # One clock read decides whether to start and stamps the start, so no call starts after the end.
        while more(now := time.perf_counter()):
            sent += 1
            method, image = plan.next()
            await timed(method, image, now)

    async def dispatcher(rate: float) -> None:
        nonlocal sent
        limit = asyncio.Semaphore(concurrency)

        async def limited(method: str, image: int, due: float) -> None:
            async with limit:
                await timed(method, image, due)

        while more(due := t0 + sent / rate):
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            sent += 1
            method, image = plan.next()
            task = asyncio.create_task(limited(method, image, due))
            children.add(task)
            task.add_done_callback(children.discard)
        await asyncio.gather(*list(children))

    mains = (
        [asyncio.create_task(dispatcher(rate))]
        if rate
        else [asyncio.create_task(worker()) for _ in range(concurrency)]
    )
    work = asyncio.gather(*mains)
    stopper = asyncio.ensure_future(stop.wait())
    waiters: set[asyncio.Future[Any]] = {work, stopper}
    finished = False
    try:
        await asyncio.wait(waiters, timeout=max_time, return_when=asyncio.FIRST_COMPLETED)
        finished = work.done()
    finally:
        stopper.cancel()
        # whatever ended the wait (a stop, the cap, a worker's bug), nothing of this level outlives it
        pending = [task for task in (*mains, *children) if not task.done()]
        for task in pending:
            task.cancel()
        await asyncio.gather(work, stopper, *pending, return_exceptions=True)
    if finished:
        work.result()  # a failure other than an RPC status is a bug: let it surface
    if stop.is_set():
        stopped_by = "interrupt"
    elif not finished:
        stopped_by = "max-time"
    else:
        stopped_by = "count" if total is not None else "duration"
    return LevelResult(records, time.perf_counter() - t0, sent, stopped_by)
