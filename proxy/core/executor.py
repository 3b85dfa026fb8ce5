"""Bounded executor that keeps torch off the event loop.

Compression is CPU/GPU-bound work of tens of milliseconds to seconds. It runs in a
small thread pool; the event loop only awaits it. Two bounds make it fail open
instead of piling up (a gateway whose queue grows without limit dies under load):

* ``max_pending`` caps running + waiting jobs: past it, ``submit`` raises
  ``QueueFull`` at once and the caller forwards the original prompt.
* a per-call deadline: past it the caller stops waiting (``DeadlineExceeded``) and
  forwards the original prompt. The job itself cannot be interrupted (torch has no
  safe cancellation), so it finishes in the background; ``on_late_result`` lets the
  caller still put its result to use (e.g. warm the cache for the next request).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["BoundedExecutor", "DeadlineExceeded", "QueueFull"]

T = TypeVar("T")


class QueueFull(RuntimeError):
    """More compression jobs are pending than the executor accepts."""


class DeadlineExceeded(TimeoutError):
    """The job did not finish within the caller's deadline."""


class BoundedExecutor:
    def __init__(self, *, max_workers: int = 1, max_pending: int = 32) -> None:
        if max_workers < 1 or max_pending < 1:
            raise ValueError("max_workers and max_pending must be >= 1")
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="linguagate-compress"
        )
        self._max_pending = max_pending
        self._workers = max_workers
        self._pending = 0
        self._lock = threading.Lock()
        self._late_tasks: set[asyncio.Future[Any]] = set()

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def max_pending(self) -> int:
        return self._max_pending

    @property
    def max_workers(self) -> int:
        return self._workers

    def resize(self, max_workers: int) -> None:
        """Use ``max_workers`` threads from now on (jobs already submitted finish where they are).

        With a batch engine, a worker spends most of its time waiting for batched forwards,
        so there must be as many workers as compressions that should share a batch.
        """
        if max_workers < 1:
            raise ValueError("max_workers must be >= 1")
        if max_workers == self._workers:
            return
        with self._lock:
            old = self._pool
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=max_workers, thread_name_prefix="linguagate-compress"
            )
            self._workers = max_workers
        old.shutdown(wait=False)

    async def run(
        self,
        fn: Callable[[], T],
        *,
        deadline_s: float | None,
        on_late_result: Callable[[T], Any] | None = None,
    ) -> T:
        """Run ``fn`` in the pool; raise QueueFull or DeadlineExceeded instead of waiting long."""
        with self._lock:
            if self._pending >= self._max_pending:
                raise QueueFull(f"{self._pending} compression jobs pending")
            self._pending += 1
            try:
                future = self._pool.submit(fn)  # under the lock: `resize` may swap the pool
            except BaseException:
                self._pending -= 1
                raise
        future.add_done_callback(self._release)
        wrapped = asyncio.wrap_future(future)
        try:
            # shield: a timeout or a cancelled request must not cancel the shared future
            return await asyncio.wait_for(asyncio.shield(wrapped), timeout=deadline_s)
        except TimeoutError as exc:
            if on_late_result is not None:
                wrapped.add_done_callback(lambda f: self._deliver_late(f, on_late_result))
            raise DeadlineExceeded(f"compression exceeded {deadline_s:.3f} s") from exc

    def _deliver_late(self, future: asyncio.Future[T], callback: Callable[[T], Any]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        result = callback(future.result())
        if asyncio.iscoroutine(result):
            # The loop keeps only weak references to tasks: hold one until it is done.
            task = asyncio.ensure_future(result)
            self._late_tasks.add(task)
            task.add_done_callback(self._late_tasks.discard)

    def _release(self, _: object) -> None:
        with self._lock:
            self._pending -= 1

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
