"""Dynamic micro-batching: one thread owns the model and runs every caller's forwards.

Each compression still runs in its own worker thread, sequentially; only its model
forwards (``proxy.compress.forward`` jobs) come here. The engine thread takes the oldest
job, then gathers more until ``max_batch_tokens`` padded tokens are waiting, until every
registered client is waiting on it (nobody else can submit soon), or until
``max_wait_ms`` has passed, whichever comes first. Jobs with the same key run together;
each caller's future receives its own result.

This module imports no torch: the proxy builds the engine before the model loads.

Back-pressure: past ``max_queue`` waiting jobs, ``submit_many`` raises ``QueueFull`` at
once (the request path forwards the prompt uncompressed, reason ``queue_full``).
The engine keeps no reference to a job once its future is resolved, so a request's KV
cache lives exactly as long as its compression does.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Hashable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from proxy.core.executor import QueueFull

__all__ = ["BatchEngine", "BatchSettings", "BatchStats", "Job", "chunk_by_cost"]

R = TypeVar("R", covariant=True)
T = TypeVar("T")


class Job(Protocol[R]):
    """A unit of model work: jobs with equal ``key`` may run together in ``run_batch``."""

    @property
    def key(self) -> Hashable: ...

    @property
    def cost(self) -> int: ...  # padded tokens: the unit of ``max_batch_tokens``

    @property
    def tokens(self) -> int: ...  # tokens the forward really computes (for throughput)

    def run_batch(self, group: Sequence[Any]) -> Sequence[R]: ...


def chunk_by_cost(jobs: Sequence[Job[Any]], budget: int, items: Sequence[T]) -> list[list[T]]:
    """Split ``items`` (one per job) into runs whose jobs' total cost stays within ``budget``
    (a job over budget on its own still runs, alone)."""
    chunks: list[list[T]] = []
    current: list[T] = []
    spent = 0
    for job, item in zip(jobs, items, strict=True):
        if current and spent + job.cost > budget:
            chunks.append(current)
            current, spent = [], 0
        current.append(item)
        spent += job.cost
    if current:
        chunks.append(current)
    return chunks


@dataclass(frozen=True)
class BatchSettings:
    max_batch_tokens: int = 32768  # padded tokens (rows x width, cache included) per forward
    max_wait_ms: float = 2.0
    max_queue: int = 4096  # jobs waiting

    def __post_init__(self) -> None:
        if self.max_batch_tokens < 1 or self.max_queue < 1 or self.max_wait_ms < 0:
            raise ValueError("max_batch_tokens and max_queue must be >= 1, max_wait_ms >= 0")


@dataclass(frozen=True)
class BatchStats:
    forwards: int  # model forwards run
    jobs: int  # jobs they carried
    tokens: int  # real tokens computed
    padded_tokens: int
    largest: int  # most jobs in one forward
    queued: int  # waiting now
    rejected: int  # jobs refused with QueueFull
    clients: int  # compressions in flight

    @property
    def mean_rows(self) -> float:
        return self.jobs / self.forwards if self.forwards else 0.0


@dataclass(frozen=True, eq=False)
class _Entry:
    job: Job[Any]
    future: Future[Any]
    thread: int


class BatchEngine:
    """Thread-safe; the worker thread starts with the first job. ``close()`` stops it."""

    def __init__(self, settings: BatchSettings | None = None, *, name: str = "linguagate-batch"):
        self.settings = settings or BatchSettings()
        self._name = name
        self._cond = threading.Condition()
        self._queue: deque[_Entry] = deque()
        self._clients: dict[int, int] = {}  # thread id -> open client() contexts
        self._thread: threading.Thread | None = None
        self._closed = False
        self._forwards = self._jobs = self._largest = self._rejected = 0
        self._tokens = self._padded = 0

    # --- callers -----------------------------------------------------------------------

    def submit_many(self, jobs: Sequence[Job[Any]]) -> list[Future[Any]]:
        """Queue ``jobs`` atomically (all or none); raise ``QueueFull`` past the bound."""
        me = threading.get_ident()
        entries = [_Entry(job, Future(), me) for job in jobs]
        with self._cond:
            if self._closed:
                raise RuntimeError("batch engine is closed")
            if len(self._queue) + len(entries) > self.settings.max_queue:
                self._rejected += len(entries)
                raise QueueFull(f"{len(self._queue)} forwards waiting for the batch engine")
            self._queue.extend(entries)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return [e.future for e in entries]

    @contextlib.contextmanager
    def client(self) -> Iterator[None]:
        """Mark the calling thread as one compression in flight for the duration.

        The engine stops waiting for more work as soon as every client is waiting on it,
        so a lone request never pays ``max_wait_ms``.
        """
        me = threading.get_ident()
        with self._cond:
            self._clients[me] = self._clients.get(me, 0) + 1
        try:
            yield
        finally:
            with self._cond:
                if self._clients[me] == 1:
                    del self._clients[me]
                else:
                    self._clients[me] -= 1
                self._cond.notify_all()

    def stats(self) -> BatchStats:
        with self._cond:
            return BatchStats(
                forwards=self._forwards,
                jobs=self._jobs,
                tokens=self._tokens,
                padded_tokens=self._padded,
                largest=self._largest,
                queued=len(self._queue),
                rejected=self._rejected,
                clients=len(self._clients),
            )

    def close(self) -> None:
        """Stop the worker; jobs still queued fail with ``RuntimeError``."""
        with self._cond:
            self._closed = True
            dropped = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
            thread = self._thread
        for entry in dropped:
            entry.future.set_exception(RuntimeError("batch engine closed"))
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    # --- the engine thread ---------------------------------------------------------------

    def _loop(self) -> None:
        while (batch := self._collect()) is not None:
            self._run(batch)
            del batch  # no job (and no KV cache) outlives its forward here

    def _collect(self) -> list[_Entry] | None:
        s = self.settings
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None
            taken: list[_Entry] = []
            tokens = 0
            deadline = time.monotonic() + s.max_wait_ms / 1000.0
            while True:
                while self._queue and tokens < s.max_batch_tokens:
                    entry = self._queue.popleft()
                    taken.append(entry)
                    tokens += entry.job.cost
                if tokens >= s.max_batch_tokens or self._closed or self._all_waiting(taken):
                    return taken
                left = deadline - time.monotonic()
                if left <= 0:
                    return taken
                self._cond.wait(left)

    def _all_waiting(self, taken: Sequence[_Entry]) -> bool:
        if not self._clients:
            return False  # unknown callers: only the time bound applies
        waiting = {e.thread for e in taken}
        return all(t in waiting for t in self._clients)

    def _run(self, batch: list[_Entry]) -> None:
        groups: dict[Hashable, list[_Entry]] = {}
        for entry in batch:
            groups.setdefault(entry.job.key, []).append(entry)
        budget = self.settings.max_batch_tokens
        for entries in groups.values():
            for chunk in chunk_by_cost([e.job for e in entries], budget, entries):
                self._forward(chunk)

    def _forward(self, chunk: list[_Entry]) -> None:
        jobs = [e.job for e in chunk]
        try:
            results = jobs[0].run_batch(jobs)
        except BaseException as exc:  # each caller gets the error; the engine goes on
            for entry in chunk:
                entry.future.set_exception(exc)
            return
        with self._cond:
            self._forwards += 1
            self._jobs += len(jobs)
            self._tokens += sum(j.tokens for j in jobs)
            self._padded += sum(j.cost for j in jobs)
            self._largest = max(self._largest, len(jobs))
        for entry, result in zip(chunk, results, strict=True):
            entry.future.set_result(result)
