"""The embedded backend's model threads: a priority pool, and coalescing of interactive predictions."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

#: The priority of the stop marker: after all queued work.
_STOP = 2**31


class InteractiveGate:
    """Holds bulk model work back while interactive calls (Classify) are in progress, for at most
    ``max_defer`` seconds per job.

    A reserved thread lets a classification start at once, but on a CPU it then shares the cores with
    whatever explanation batch runs beside it, and with the next one, and the next: back-to-back batches
    slowed every classification about twofold. With the gate a batch starts only between classifications,
    so one overlaps at most the batch already running when it arrived. ``max_defer`` bounds the wait, so
    a stream of classifications slows explanations but never starves them. Thread-safe; the counter is
    entered from the event loop and waited on by the model threads.
    """

    def __init__(self, max_defer: float, settle: float = 0.005) -> None:
        self.max_defer = max_defer
        #: How long the gate must stay clear before bulk work goes: a client that sends its next
        #: classification as soon as it has the last answer is a few ms away, and a batch started in that
        #: gap would run beside the whole of it.
        self.settle = settle
        self._active = 0
        self._cleared_at = 0.0
        self._clear = threading.Condition()

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Mark an interactive call in progress for the duration of the ``with`` block."""
        with self._clear:
            self._active += 1
        try:
            yield
        finally:
            with self._clear:
                self._active -= 1
                if self._active == 0:
                    self._cleared_at = time.monotonic()
                    self._clear.notify_all()

    @property
    def busy(self) -> bool:
        """Whether an interactive call is in progress."""
        return self._active > 0

    def wait_clear(self) -> None:
        """Wait until no interactive call is in progress, or ``max_defer`` seconds have passed."""
        if self.max_defer <= 0:
            return
        deadline = time.monotonic() + self.max_defer
        with self._clear:
            while True:
                now = time.monotonic()
                if now >= deadline:
                    return
                if self._active == 0:
                    quiet = now - self._cleared_at
                    if quiet >= self.settle:
                        return
                    self._clear.wait(min(self.settle - quiet, deadline - now))
                else:
                    self._clear.wait(deadline - now)


class PriorityPool:
    """Worker threads that run the lowest priority number first, FIFO within a priority.

    The first ``reserved`` threads run priority 0 (interactive) work only. Priority alone is not enough:
    a model call cannot be pre-empted, so when explanation batches occupy every thread a classification
    waits for one to end (hundreds of ms on a CPU). A reserved thread is free whenever no classification
    runs on it, so a classification starts at once and only shares the cores with the batches in progress.
    """

    def __init__(
        self, threads: int, name: str, reserved: int = 0, gate: InteractiveGate | None = None
    ) -> None:
        if not 0 <= reserved < threads:
            raise ValueError(f"reserve 0 to {threads - 1} of {threads} threads (some must run bulk work)")
        # Without a thread kept for interactive work a parked bulk job could hold the only thread the
        # classification it waits for needs: the gate then stays out of the way.
        self._gate = gate if reserved > 0 else None
        self._heap: list[tuple[int, int, Callable[[], None] | None]] = []
        self._ready = threading.Condition()
        self._order = itertools.count()
        self._threads = [
            threading.Thread(target=self._work, args=(i < reserved,), name=f"{name}-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def _work(self, interactive_only: bool) -> None:
        while True:
            with self._ready:
                while not self._heap or (interactive_only and self._heap[0][0] not in (0, _STOP)):
                    self._ready.wait()
                priority, _, job = heapq.heappop(self._heap)
                # A reserved thread may wait for the stop behind bulk work this pop uncovered.
                self._ready.notify_all()
            if job is None:
                return
            if priority > 0 and self._gate is not None:
                self._gate.wait_clear()  # bulk work yields to classifications in progress
            job()

    def submit(self, priority: int, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run ``fn(*args)`` on a worker; the result arrives on the calling event loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()

        def job() -> None:
            if future.cancelled():  # the caller gave up: skip the work entirely
                return
            try:
                value = fn(*args)
            except BaseException as exc:  # noqa: BLE001  (handed to the awaiting coroutine)
                loop.call_soon_threadsafe(_settle, future, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, value, None)

        self.put(priority, job)
        return future

    def put(self, priority: int, job: Callable[[], None]) -> None:
        """Queue a job whose result nobody awaits (it reports through its own means)."""
        with self._ready:
            heapq.heappush(self._heap, (priority, next(self._order), job))
            self._ready.notify_all()

    def shutdown(self, wait: bool = False) -> None:
        """Stop the workers once the queued work is done (and wait for them, if asked)."""
        with self._ready:
            for _ in self._threads:
                heapq.heappush(self._heap, (_STOP, next(self._order), None))
            self._ready.notify_all()
        if wait:
            for thread in self._threads:
                thread.join()


@dataclass
class _Request:
    images: npt.NDArray[np.uint8]
    future: asyncio.Future[npt.NDArray[np.float32]]
    loop: asyncio.AbstractEventLoop


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():  # the caller gave up meanwhile
        return
    if error is None:
        future.set_result(value)
    else:
        future.set_exception(error)


class Coalescer:
    """Interactive predictions that queue while the model threads are busy share one model call.

    Opportunistic batching: a request never waits for company. When a worker is free it runs the
    request at once; only requests that arrive while all workers are busy accumulate, and the next
    free worker runs them together, up to ``max_batch`` images. At concurrency 1 nothing changes.
    """

    def __init__(
        self,
        pool: PriorityPool,
        run: Callable[[npt.NDArray[np.uint8]], npt.NDArray[np.float32]],
        max_batch: int,
        workers: int,
        priority: int = 0,
    ) -> None:
        self._pool = pool
        self._run = run
        self._max = max_batch
        self._workers = workers
        self._priority = priority
        self._lock = threading.Lock()
        self._pending: deque[_Request] = deque()
        self._draining = 0
        #: Model calls made (fewer than requests when requests were coalesced).
        self.calls = 0

    async def predict(self, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """Probabilities for ``images`` (at most ``max_batch`` of them), perhaps computed with others."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[npt.NDArray[np.float32]] = loop.create_future()
        with self._lock:
            self._pending.append(_Request(images, future, loop))
            start = self._draining < self._workers
            if start:
                self._draining += 1
        if start:
            self._pool.put(self._priority, self._drain)
        return await future

    def _take(self) -> list[_Request]:
        batch: list[_Request] = []
        size = 0
        with self._lock:
            while self._pending:
                head = self._pending[0]
                if head.future.done():  # cancelled: its caller is gone
                    self._pending.popleft()
                    continue
                if batch and size + len(head.images) > self._max:
                    break
                batch.append(self._pending.popleft())
                size += len(head.images)
            if not batch:
                self._draining -= 1
        return batch

    def _drain(self) -> None:
        """Runs on a worker: serve pending requests in batches until none are left."""
        while batch := self._take():
            try:
                out = self._run(np.concatenate([r.images for r in batch]))
            except BaseException as exc:  # noqa: BLE001  (handed to every caller of this batch)
                for request in batch:
                    request.loop.call_soon_threadsafe(_settle, request.future, None, exc)
                continue
            self.calls += 1
            offset = 0
            for request in batch:
                part = out[offset : offset + len(request.images)]
                offset += len(request.images)
                request.loop.call_soon_threadsafe(_settle, request.future, part, None)
