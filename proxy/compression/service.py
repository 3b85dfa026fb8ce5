"""The small LM, loaded once per process, and the bounded executor that runs it.

Loading takes seconds (tens on a first start, when the packaged GGUF is converted), so
it happens in a thread at start-up while the proxy already serves: requests that come
before it is ready are forwarded uncompressed (skip reason ``compressor_loading``) and
``/readyz`` reports ``loading``. A model that cannot be loaded is reported as ``down``
and every request fails open (``compressor_unavailable``).

With ``batching`` (``Batching``; on by default on a GPU), every compression still runs in
its own worker thread, but their model forwards go through one ``BatchEngine`` thread
that runs concurrent requests' forwards together; the executor then gets as many workers
as it admits pending jobs, so everything admitted can share a batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from proxy.compress.batching import BatchEngine, BatchSettings, BatchStats
from proxy.core.executor import BoundedExecutor

if TYPE_CHECKING:
    from proxy.compress import CompressionResult, ProtectRules
    from proxy.compress.budget import Fill
    from proxy.core.settings import Settings

__all__ = [
    "Batching",
    "CompressionEngine",
    "CompressorService",
    "batching_for",
    "default_deadline_ms",
]

# Default per-request compression deadlines. On CPU the bound is "a 1,000-token prompt
# compresses on 2 busy cores" (measured up to ~25 s, longer prompts ~50 s); on a GPU a
# compression takes tens of milliseconds, and anything slower is better forwarded as is.
_CPU_DEADLINE_MS = 60_000
_GPU_DEADLINE_MS = 2_000


def default_deadline_ms(device_type: str) -> int:
    return _CPU_DEADLINE_MS if device_type == "cpu" else _GPU_DEADLINE_MS


_log = logging.getLogger("linguagate.compressor")
T = TypeVar("T")


class CompressionEngine(Protocol):
    """What the request path needs from ``proxy.compress.Compressor``."""

    model_id: str

    @property
    def device(self) -> Any: ...  # torch.device

    def compress(
        self,
        instruction: str,
        demonstrations: list[str],
        question: str,
        rate: float,
        *,
        instruction_rate: float = ...,
        question_rate: float = ...,
        question_aware: bool = ...,
        target_model: str | None = ...,
        segment_tokens: int = ...,
        granularity_k: float = ...,
        fill: Fill = ...,
        protect: ProtectRules | None = ...,
    ) -> CompressionResult: ...

    def mean_nll(self, text: str) -> float: ...


@dataclass(frozen=True)
class Batching:
    """Cross-request batching of model forwards. ``mode`` auto: only when the model is on a GPU
    (on a CPU a batch costs what its rows cost one by one, and interleaving requests only
    delays each of them)."""

    mode: Literal["auto", "on"] = "auto"
    settings: BatchSettings = BatchSettings()

    def applies(self, device_type: str) -> bool:
        return self.mode == "on" or device_type != "cpu"


def load_local_engine(settings: Settings) -> CompressionEngine:
    """Load ``settings.compressor_model`` in this process (the proxy's and the worker's loader)."""
    import torch

    from proxy.compress import Compressor

    engine = Compressor(
        settings.compressor_model, settings.device, cpu_precision=settings.cpu_precision
    )
    if engine.device.type == "cpu" and settings.torch_threads > 0:
        # Process-wide. One intra-op thread per compression worker leaves a core for the
        # event loop and avoids OpenMP contention, which on small CPUs costs more than it gives.
        torch.set_num_threads(settings.torch_threads)
    return engine


def batching_for(settings: Settings) -> Batching | None:
    """The batching that ``--compress-batching`` and its companions ask for (None: off)."""
    if settings.compress_batching == "off":
        return None
    return Batching(
        mode="on" if settings.compress_batching == "on" else "auto",
        settings=BatchSettings(
            max_batch_tokens=settings.compress_batch_tokens,
            max_wait_ms=settings.compress_batch_wait_ms,
            max_queue=settings.compress_batch_queue,
        ),
    )


class CompressorService:
    """Owns the engine (once loaded) and the executor every compression runs in."""

    def __init__(
        self,
        load: Callable[[], CompressionEngine],
        *,
        max_workers: int = 1,
        max_pending: int = 32,
        description: str = "compressor",
        batching: Batching | None = None,
    ) -> None:
        self._load = load
        self._engine: CompressionEngine | None = None
        self._error: str | None = None
        self._ready = threading.Event()
        self._started = False
        self._start_lock = threading.Lock()
        self._description = description
        self.executor = BoundedExecutor(max_workers=max_workers, max_pending=max_pending)
        self._batching = batching
        # Built now (no thread until the first forward): loading may attach it to the engine.
        self._batcher = BatchEngine(batching.settings) if batching is not None else None
        self._batched = False

    @classmethod
    def ready(cls, engine: CompressionEngine, **kwargs: Any) -> CompressorService:
        """A service around an engine that is already loaded (tests, embedding)."""
        service = cls(lambda: engine, **kwargs)
        service._engine = service._attach(engine)
        service._started = True
        service._ready.set()
        return service

    def start(self) -> None:
        """Begin loading the engine in a background thread (idempotent; returns at once)."""
        with self._start_lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self._load_now, name="linguagate-model-load", daemon=True).start()

    def _load_now(self) -> None:
        started = time.perf_counter()
        _log.info("loading %s ...", self._description)
        try:
            self._engine = self._attach(self._load())
        except Exception as exc:  # reported on /readyz; requests fail open
            self._error = f"{type(exc).__name__}: {exc}"
            _log.error("compressor failed to load: %s", self._error)
        else:
            elapsed = time.perf_counter() - started
            numerics = getattr(self._engine, "numerics", None)  # remote engines: the worker's
            _log.info("compressor ready: %s%s (%.1f s); compression starts now",
                      self._engine.model_id, f", {numerics}" if numerics else "", elapsed)
        finally:
            self._ready.set()

    def _attach(self, engine: CompressionEngine) -> CompressionEngine:
        """The engine whose forwards go through the batcher, when batching applies to it."""
        if getattr(engine, "parallel_calls", False):  # e.g. a remote worker: calls only wait
            self.executor.resize(max(self.executor.max_workers, self.executor.max_pending))
        attach = getattr(engine, "with_batcher", None)
        if self._batching is None or attach is None:
            return engine
        device = str(getattr(engine.device, "type", engine.device))
        if not self._batching.applies(device):
            return engine
        if str(getattr(engine, "numerics", "")).split()[:2] == ["cpu", "bf16"]:
            # oneDNN's bf16 kernels pick their blocking by row count: a request's bytes would
            # depend on who shares its forwards (measured; fp32 rows are batch-invariant).
            _log.warning("compress batching on a CPU in bf16: outputs depend on the batch; "
                         "use --cpu-precision fp32 for batch-invariant bytes")
        batched: CompressionEngine = attach(self._batcher)
        self.executor.resize(max(self.executor.max_workers, self.executor.max_pending))
        self._batched = True
        return batched

    @property
    def batch_stats(self) -> BatchStats | None:
        """The batch engine's counters while batching is in use, else None."""
        return self._batcher.stats() if self._batched and self._batcher is not None else None

    def peak_gpu_bytes(self) -> int | None:
        """Peak GPU memory allocated by this process (torch's counter), None off a GPU."""
        device = getattr(self._engine, "device", None)  # test doubles may have none
        if str(getattr(device, "type", "cpu")) != "cuda":
            return None
        import torch

        return int(torch.cuda.max_memory_allocated(device))

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    @property
    def engine(self) -> CompressionEngine | None:
        return self._engine

    @property
    def status(self) -> tuple[str, str | None]:
        """("ok" | "idle" | "loading" | "down", detail) for ``/readyz``."""
        if self._engine is not None:
            return "ok", self._describe(self._engine)
        if not self._started:
            return "idle", "loads when a policy first needs it"
        if not self._ready.is_set():
            return "loading", self._description
        return "down", self._error

    def _describe(self, engine: CompressionEngine) -> str:
        model_id = engine.model_id
        numerics = getattr(engine, "numerics", None)  # a remote engine's worker reports its own
        notes = [numerics] if isinstance(numerics, str) else []
        stats = self.batch_stats
        if stats is not None:
            notes.append(
                f"batching: {stats.forwards} forwards, {stats.mean_rows:.1f} requests each, "
                f"{stats.rejected} refused"
            )
        peak = self.peak_gpu_bytes()
        if peak is not None:
            notes.append(f"peak GPU memory {peak / 2**20:.0f} MiB")
        return f"{model_id} ({'; '.join(notes)})" if notes else model_id

    async def run(
        self,
        fn: Callable[[], T],
        *,
        deadline_s: float | None,
        on_late_result: Callable[[T], object] | None = None,
    ) -> T:
        batcher = self._batcher
        if self._batched and batcher is not None:
            plain = fn

            def fn() -> T:
                with batcher.client():  # lets the engine stop waiting once all are waiting
                    return plain()

        return await self.executor.run(fn, deadline_s=deadline_s, on_late_result=on_late_result)

    def close(self) -> None:
        """Stop taking work and release the engine's resources (a remote engine's
        connections); in-flight work fails open."""
        self.executor.shutdown()
        if self._batcher is not None:
            self._batcher.close()
        close = getattr(self._engine, "close", None)  # local models hold nothing to close
        if callable(close):
            close()
