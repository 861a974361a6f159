"""Admission and workers: model work off the event loop, bounded concurrency, a bounded queue.

At most ``max_concurrency`` jobs run, each on its own worker thread; at most ``max_queue`` more
wait; anything beyond is refused at once with a Retry-After estimate (never an unbounded backlog).
A worker slot is given back when the worker thread actually finishes, not when the client goes away,
so a cancelled stream can never make more jobs run at once than configured.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from .errors import ApiError, overloaded
from .metrics import Metrics

T = TypeVar("T")


class DeadlineExceeded(ApiError):
    def __init__(self, seconds: float, where: str) -> None:
        super().__init__(504, "deadline_exceeded", f"the request took longer than {seconds:g} s ({where})")


class Scheduler:
    def __init__(self, max_concurrency: int, max_queue: int, metrics: Metrics) -> None:
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self._metrics = metrics
        self._slots = asyncio.Semaphore(max_concurrency)
        self._executor = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="tts-worker")
        self.waiting = 0
        self.running = 0
        #: moving average of how long a job holds a worker: the basis of Retry-After
        self._service_seconds = 2.0

    def retry_after(self) -> int:
        backlog = self.waiting + self.running
        return max(1, min(120, math.ceil(self._service_seconds * backlog / self.max_concurrency)))

    async def submit(self, fn: Callable[[], T], deadline: float, timeout_seconds: float) -> asyncio.Future[T]:
        """Wait for a worker (or refuse), start ``fn`` on it and return its future.

        ``deadline`` is a ``time.monotonic()`` instant; waiting past it raises ``DeadlineExceeded``.
        """
        if self._slots.locked() and self.waiting >= self.max_queue:
            self._metrics.rejected.labels(reason="queue_full").inc()
            raise overloaded(self.retry_after())
        self.waiting += 1
        self._metrics.queue_depth.set(self.waiting)
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            self._metrics.rejected.labels(reason="deadline_in_queue").inc()
            raise DeadlineExceeded(timeout_seconds, "waiting in the queue") from None
        finally:
            self.waiting -= 1
            self._metrics.queue_depth.set(self.waiting)
        self.running += 1
        self._metrics.in_flight.set(self.running)
        started = time.monotonic()
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn)

        def _release(_: object) -> None:
            self.running -= 1
            self._metrics.in_flight.set(self.running)
            self._service_seconds = 0.8 * self._service_seconds + 0.2 * (time.monotonic() - started)
            self._slots.release()

        future.add_done_callback(_release)
        return future

    async def run(self, fn: Callable[[], T], deadline: float, timeout_seconds: float) -> T:
        """Run ``fn`` on a worker and wait for its result."""
        future = await self.submit(fn, deadline, timeout_seconds)
        try:
            return await asyncio.wait_for(
                asyncio.shield(future), timeout=max(0.0, deadline - time.monotonic())
            )
        except TimeoutError:
            raise DeadlineExceeded(timeout_seconds, "generating") from None

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
