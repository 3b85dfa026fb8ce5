"""The small LM, loaded once per process, and the bounded executor that runs it.

Loading takes seconds (tens on a first start, when the packaged GGUF is converted), so
it happens in a thread at start-up while the proxy already serves: requests that come
before it is ready are forwarded uncompressed (skip reason ``compressor_loading``) and
``/readyz`` reports ``loading``. A model that cannot be loaded is reported as ``down``
and every request fails open (``compressor_unavailable``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from proxy.executor import BoundedExecutor

if TYPE_CHECKING:
    from proxy.compress import CompressionResult, ProtectRules

__all__ = ["CompressionEngine", "CompressorService", "default_deadline_ms"]

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
        protect: ProtectRules | None = ...,
    ) -> CompressionResult: ...

    def mean_nll(self, text: str) -> float: ...


class CompressorService:
    """Owns the engine (once loaded) and the executor every compression runs in."""

    def __init__(
        self,
        load: Callable[[], CompressionEngine],
        *,
        max_workers: int = 1,
        max_pending: int = 32,
        description: str = "compressor",
    ) -> None:
        self._load = load
        self._engine: CompressionEngine | None = None
        self._error: str | None = None
        self._ready = threading.Event()
        self._started = False
        self._start_lock = threading.Lock()
        self._description = description
        self.executor = BoundedExecutor(max_workers=max_workers, max_pending=max_pending)

    @classmethod
    def ready(cls, engine: CompressionEngine, **kwargs: int) -> CompressorService:
        """A service around an engine that is already loaded (tests, embedding)."""
        service = cls(lambda: engine, **kwargs)  # type: ignore[arg-type]
        service._engine = engine
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
            self._engine = self._load()
        except Exception as exc:  # reported on /readyz; requests fail open
            self._error = f"{type(exc).__name__}: {exc}"
            _log.error("compressor failed to load: %s", self._error)
        else:
            elapsed = time.perf_counter() - started
            _log.info("compressor ready: %s (%.1f s)", self._engine.model_id, elapsed)
        finally:
            self._ready.set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    @property
    def engine(self) -> CompressionEngine | None:
        return self._engine

    @property
    def status(self) -> tuple[str, str | None]:
        """("ok" | "idle" | "loading" | "down", detail) for ``/readyz``."""
        if self._engine is not None:
            return "ok", self._engine.model_id
        if not self._started:
            return "idle", "loads when a policy first needs it"
        if not self._ready.is_set():
            return "loading", self._description
        return "down", self._error

    async def run(
        self,
        fn: Callable[[], T],
        *,
        deadline_s: float | None,
        on_late_result: Callable[[T], object] | None = None,
    ) -> T:
        return await self.executor.run(fn, deadline_s=deadline_s, on_late_result=on_late_result)

    def close(self) -> None:
        self.executor.shutdown()
