"""Redis as the replicas' shared state: connections that fail fast, and fail open.

Every Redis failure (refused, reset, timeout, a server that accepts connections and never
answers) is counted and opens a circuit breaker, so that the following requests do not each
pay the timeout while Redis is down; after a short back-off one request probes again.
Callers get ``None`` and carry on: the cache misses, the ledger buffers.

Key names carry digests only (``lg:v1:<sha256(tenant)[:16]>:...``), never prompt text, tenant
secrets or API keys.

The rule that keeps every key family working on a Redis Cluster (see the README's key layout):
keys that one transaction, script or multi-key command touches together share a hash tag, the
tenant's (``tenant_slot_namespace``: ``lg:v1:{<t16>}:...``, one slot per tenant); keys read
and written one at a time (cache entries, prefix-stable forms) use ``tenant_namespace``
(``lg:v1:<t16>:...``, no braces) so that they spread over every slot of the cluster.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError

from proxy.store.clients import ClientLimits, SharedRedis, build_client
from proxy.store.topology import parse_redis_url

__all__ = [
    "KEY_PREFIX",
    "BackendStatus",
    "CircuitBreaker",
    "FailOpenRedis",
    "RedisSettings",
    "canonical_json",
    "connect_redis",
    "tenant_namespace",
    "tenant_slot_namespace",
]

KEY_PREFIX = "lg:v1"
_T = TypeVar("_T")

_POOL_EXHAUSTED = "No connection available."  # redis-py's BlockingConnectionPool wait timeout
log = logging.getLogger(__name__)


def _tenant_digest(tenant: str) -> str:
    return hashlib.sha256(tenant.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def tenant_namespace(tenant: str) -> str:
    """``lg:v1:<first 16 hex of sha256(tenant name)>``: the prefix of a tenant's spread keys
    (each one lands in its own cluster slot)."""
    return f"{KEY_PREFIX}:{_tenant_digest(tenant)}"


def tenant_slot_namespace(tenant: str) -> str:
    """``lg:v1:{<the same digest>}``: the prefix of a tenant's keys that are written together
    (one cluster slot: the braces are Redis Cluster's hash tag)."""
    return f"{KEY_PREFIX}:{{{_tenant_digest(tenant)}}}"


def _json_default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"not JSON-serialisable in a cache key: {type(value).__name__}")


def canonical_json(value: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces, dataclasses as dicts, NaN refused)."""
    return json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=_json_default,
    )


@dataclass(frozen=True)
class BackendStatus:
    """What ``/readyz`` and ``/metrics`` show about a cache or ledger backend."""

    backend: str  # "memory" or "redis"
    ok: bool  # False while the circuit breaker is open
    errors: int  # failed operations since start
    detail: str = ""


class CircuitBreaker:
    """Closed -> (failure) -> open for ``backoff_s`` -> one probe -> closed or open again.

    Only one probe runs at a time; the other callers skip Redis meanwhile.
    """

    def __init__(self, backoff_s: float = 3.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.backoff_s = backoff_s
        self._clock = clock
        self._open_until: float | None = None
        self._probing = False
        self.failures = 0
        self.skipped = 0

    @property
    def is_open(self) -> bool:
        return self._open_until is not None

    def allow(self) -> bool:
        if self._open_until is None:
            return True
        if self._probing or self._clock() < self._open_until:
            self.skipped += 1
            return False
        self._probing = True
        return True

    def success(self) -> None:
        self._open_until = None
        self._probing = False

    def abandon(self) -> None:
        """The call allowed by ``allow()`` ended without telling anything about Redis."""
        self._probing = False

    def failure(self) -> None:
        self.failures += 1
        self._probing = False
        self._open_until = self._clock() + self.backoff_s


@dataclass(frozen=True)
class RedisSettings:
    """Connection knobs. Timeouts are short on purpose: a slow cache is worse than none."""

    socket_timeout_s: float = 0.15
    connect_timeout_s: float = 0.15
    health_check_interval_s: int = 10
    backoff_s: float = 3.0
    ttl_s: int = 7 * 86400
    max_connections: int = 32
    # Wait for a free pooled connection; shorter than the deadline, so a saturated
    # pool reads as "busy" (a miss) rather than as an outage.
    pool_timeout_s: float = 0.1

    @property
    def op_deadline_s(self) -> float:
        # Belt and braces over the socket timeouts: pool wait + connect + handshake + command.
        return self.pool_timeout_s + self.connect_timeout_s + 2 * self.socket_timeout_s + 0.05


def connect_redis(url: str, settings: RedisSettings = RedisSettings()) -> SharedRedis:
    """redis-py's client for any URL form of ``proxy.store.topology`` (a server, a
    Sentinel-managed primary, a cluster) that fails fast: short timeouts, no retries,
    bounded pools. ``ValueError`` for a malformed URL.

    Under a burst, callers wait (within the operation deadline) for one of
    ``max_connections`` connections (per node, on a cluster) instead of opening one socket
    each.
    """
    limits = ClientLimits(
        socket_timeout_s=settings.socket_timeout_s,
        connect_timeout_s=settings.connect_timeout_s,
        health_check_interval_s=settings.health_check_interval_s,
        max_connections=settings.max_connections,
        pool_timeout_s=settings.pool_timeout_s,
    )
    return build_client(parse_redis_url(url), limits)


class FailOpenRedis:
    """Runs Redis calls under a deadline and a circuit breaker; failures become ``None``."""

    def __init__(
        self,
        client: SharedRedis,
        settings: RedisSettings,
        *,
        name: str,
        owns_client: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.settings = settings
        self.name = name
        self.breaker = CircuitBreaker(settings.backoff_s, clock)
        self._owns_client = owns_client
        self.errors = 0
        self.busy = 0  # misses because every pooled connection was in use
        self.last_error = ""

    async def call(self, op: Callable[[], Awaitable[_T]]) -> _T | None:
        if not self.breaker.allow():
            return None
        try:
            result = await asyncio.wait_for(op(), self.settings.op_deadline_s)
        except RedisConnectionError as exc:
            # Sentinel's and the cluster's pools raise MaxConnectionsError when full.
            if str(exc) != _POOL_EXHAUSTED and not isinstance(exc, MaxConnectionsError):
                self._failed(exc)
                return None
            # Every connection is busy (a local burst, not an outage): a miss, no breaker trip.
            self.busy += 1
            self.breaker.abandon()
            return None
        except Exception as exc:  # any Redis failure must fail open
            self._failed(exc)
            return None
        if self.breaker.is_open:
            log.info("redis %s is back", self.name)
        self.breaker.success()
        return result

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        self.last_error = type(exc).__name__
        if not self.breaker.is_open:
            log.warning(
                "redis %s unavailable (%s): degrading for %.1fs",
                self.name,
                self.last_error,
                self.settings.backoff_s,
            )
        self.breaker.failure()

    async def ping(self) -> bool:
        return bool(await self.call(self.client.ping))

    def status(self) -> BackendStatus:
        ok = not self.breaker.is_open
        detail = "" if ok else f"degraded: {self.last_error}"
        return BackendStatus("redis", ok, self.errors, detail)

    async def close(self) -> None:
        if self._owns_client:
            try:
                await self.client.aclose()
            except Exception:  # closing a dead connection may fail; nothing to do
                log.debug("redis %s close failed", self.name)
