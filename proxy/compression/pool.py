"""Several small LMs in one process: the proxy's default plus those named by policies.

A policy's ``[compression] model = "path/or/hf-id"`` (e.g. a folder written by
``linguagate align``) selects its own engine. Each engine is a
:class:`~proxy.compression.service.CompressorService` (own executor, loaded in a background
thread), created on first need, and the pool holds at most ``max_engines`` of them besides
the default, the least recently used one being closed to make room: a model is hundreds of
megabytes, and a typo in one policy must not exhaust the process's memory. An engine that
cannot be loaded is ``down``: its requests fail open and ``/readyz`` says why.

With ``--compressor-url`` the factory builds remote engines instead (``RemoteEngine`` for
the workers and the model name), which the workers must serve (``--extra-model``); a down
one is retried (``retry_down_s``) when next asked for, as workers change without the proxy.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from proxy.compression.service import CompressorService

__all__ = ["CompressorPool"]


class CompressorPool:
    """Engines keyed by model name (the policy's string); ``None`` is the default engine."""

    def __init__(
        self,
        default: CompressorService,
        factory: Callable[[str], CompressorService],
        *,
        default_name: str | None = None,
        max_engines: int = 2,
        retry_down_s: float | None = None,
    ) -> None:
        if max_engines < 1:
            raise ValueError("max_engines must be >= 1")
        self.default = default
        self._factory = factory
        self._default_name = default_name
        self._max = max_engines
        self._services: OrderedDict[str, CompressorService] = OrderedDict()
        # A down engine is built anew when asked for this long after it was made (None:
        # never): remote workers may come up, or be restarted with the model, later.
        self._retry_down_s = retry_down_s
        self._made: dict[str, float] = {}
        self._retries: dict[str, CompressorService] = {}
        self._lock = threading.Lock()
        self._closed = False

    def service_for(self, model: str | None) -> CompressorService:
        """The service for ``model`` (created and started loading when new)."""
        if model is None or model == self._default_name:
            return self.default
        released: list[CompressorService] = []
        with self._lock:
            service = self._services.get(model)
            if service is None:
                if self._closed:
                    raise RuntimeError("compressor pool is closed")
                if len(self._services) >= self._max:
                    name, evicted = self._services.popitem(last=False)
                    released += [evicted, *self._forget(name)]
                service = self._factory(model)
                self._services[model] = service
                self._made[model] = time.monotonic()
            else:
                service = self._retry(model, service, released)
            self._services.move_to_end(model)
        for old in released:
            old.close()  # in-flight work on it fails open (compressor_error)
        service.start()
        return service

    def _retry(
        self, model: str, service: CompressorService, released: list[CompressorService]
    ) -> CompressorService:
        """``service``, or the retry of it that has finished loading (under the lock).

        The down service keeps answering (fail open) while its retry loads, so a retry
        never shows as ``loading``."""
        retry = self._retries.get(model)
        if retry is not None and retry.wait_ready(0):
            del self._retries[model]
            self._services[model] = retry
            self._made[model] = time.monotonic()
            released.append(service)
            return retry
        if retry is None and self._due_retry(model, service):
            self._retries[model] = retry = self._factory(model)
            retry.start()
        return service

    def _due_retry(self, model: str, service: CompressorService) -> bool:
        return (self._retry_down_s is not None and service.status[0] == "down"
                and time.monotonic() - self._made.get(model, 0.0) >= self._retry_down_s)

    def _forget(self, model: str) -> list[CompressorService]:
        self._made.pop(model, None)
        retry = self._retries.pop(model, None)
        return [] if retry is None else [retry]

    def ensure(self, models: Iterable[str | None]) -> None:
        """Start loading every named model now (at start-up and policy reloads), up to the bound;
        start (and, once loaded, use) retries of down ones that are due."""
        wanted = [m for m in dict.fromkeys(models) if m is not None and m != self._default_name]
        for model in wanted[: self._max]:
            with self._lock:
                service = self._services.get(model)
                settled = (service is not None and model not in self._retries
                           and not self._due_retry(model, service))
            if not settled:
                self.service_for(model)

    def services(self) -> dict[str, CompressorService]:
        """Every engine by name, the default included (as its name, else ``"default"``)."""
        with self._lock:
            named = dict(self._services)
        return {self._default_name or "default": self.default, **named}

    def statuses(self) -> dict[str, tuple[str, str | None]]:
        """Model name -> (state, detail) of every engine besides the default."""
        with self._lock:
            items = list(self._services.items())
        return {name: service.status for name, service in items}

    def close(self) -> None:
        """Close every named engine (the default is its owner's to close)."""
        with self._lock:
            self._closed = True
            services = [*self._services.values(), *self._retries.values()]
            self._services.clear()
            self._retries.clear()
        for service in services:
            service.close()
