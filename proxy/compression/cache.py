"""Compression cache: per-tenant keys, an in-process LRU, and a fail-open Redis cache.

A cache can only ever make a request faster: on Redis (``proxy.store.redis``) every
failure becomes a miss or a dropped write.

Key names carry digests only (``lg:v1:<tenant digest>:cmp:<sha256>``), never
prompt text, tenant secrets or API keys. The tenant name is hashed into both the
namespace and the full digest, so one tenant's inputs can never produce another
tenant's key. The names carry no hash tag: on a Redis Cluster the entries spread over
every slot, and ``get_many`` is one MGET per slot (``proxy.store.clients.SpreadCluster``).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeAlias

from proxy.store.clients import SharedRedis
from proxy.store.redis import (
    BackendStatus,
    CircuitBreaker,
    FailOpenRedis,
    RedisSettings,
    canonical_json,
    connect_redis,
    tenant_namespace,
)

__all__ = ["CompressionCache", "MemoryCache", "RedisCache", "TtlGroup", "cache_key"]

# Entries to write and their TTL in seconds (None: the cache's own).
TtlGroup: TypeAlias = tuple[Mapping[str, str], float | None]


def cache_key(
    tenant: str,
    policy_version: str,
    component_kind: str,
    text: str,
    knobs: Mapping[str, Any],
    model_id: str,
    algo_version: str,
) -> str:
    """Cache key for one compressed component.

    ``knobs`` holds everything else that changes the output (rates, protect rules,
    target model, segment size...). Pass values with stable types: ``1`` and ``1.0``
    are different keys.
    """
    payload = {
        "tenant": tenant,
        "policy_version": policy_version,
        "kind": component_kind,
        "text_sha256": hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest(),
        "knobs": dict(knobs),
        "model_id": model_id,
        "algo_version": algo_version,
    }
    digest = hashlib.sha256(canonical_json(payload).encode()).hexdigest()
    return f"{tenant_namespace(tenant)}:cmp:{digest}"


class CompressionCache(Protocol):
    """Never raises: failures are misses and dropped writes."""

    async def get(self, key: str) -> str | None: ...
    async def set(self, key: str, value: str) -> None: ...
    async def get_many(self, keys: Sequence[str]) -> list[str | None]: ...
    # ``ttl_s`` overrides the cache's own TTL for these entries (None: the cache's).
    async def set_many(self, items: Mapping[str, str], ttl_s: float | None = None) -> None: ...
    # Several ``set_many`` (entries, TTL) at once: one round trip on Redis.
    async def set_groups(self, groups: Sequence[TtlGroup]) -> None: ...
    def status(self) -> BackendStatus: ...
    async def close(self) -> None: ...


class MemoryCache:
    """Bounded in-process LRU (entries and UTF-8 bytes of keys + values) with a TTL."""

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        max_bytes: int = 64 * 2**20,
        ttl_s: float | None = 7 * 86400,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, tuple[str, float, int]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> str | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expires_at, _size = entry
        if expires_at <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def set(self, key: str, value: str, ttl_s: float | None = None) -> None:
        size = len(key.encode()) + len(value.encode("utf-8", "surrogatepass"))
        if key in self._entries:
            self._drop(key)
        if size > self.max_bytes or self.max_entries <= 0:
            return
        ttl = ttl_s if ttl_s is not None else self.ttl_s
        expires_at = self._clock() + ttl if ttl is not None else float("inf")
        self._entries[key] = (value, expires_at, size)
        self.bytes += size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    async def get_many(self, keys: Sequence[str]) -> list[str | None]:
        return [await self.get(key) for key in keys]

    async def set_many(self, items: Mapping[str, str], ttl_s: float | None = None) -> None:
        for key, value in items.items():
            await self.set(key, value, ttl_s)

    async def set_groups(self, groups: Sequence[TtlGroup]) -> None:
        for items, ttl_s in groups:
            await self.set_many(items, ttl_s)

    def _drop(self, key: str) -> None:
        _value, _expires, size = self._entries.pop(key)
        self.bytes -= size

    def status(self) -> BackendStatus:
        return BackendStatus("memory", True, 0, f"{len(self._entries)} entries")

    async def close(self) -> None:
        self._entries.clear()
        self.bytes = 0


def _decode(raw: object) -> str | None:
    if not isinstance(raw, bytes):
        return None
    try:
        return raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return None


class RedisCache:
    """``CompressionCache`` on Redis: ``SET key value EX ttl`` / ``GET``; never raises."""

    def __init__(
        self,
        client: SharedRedis,
        settings: RedisSettings = RedisSettings(),
        *,
        owns_client: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = FailOpenRedis(
            client, settings, name="cache", owns_client=owns_client, clock=clock
        )
        self.ttl_s = settings.ttl_s

    @classmethod
    def from_url(cls, url: str, settings: RedisSettings = RedisSettings()) -> RedisCache:
        return cls(connect_redis(url, settings), settings)

    @property
    def breaker(self) -> CircuitBreaker:
        return self._redis.breaker

    async def get(self, key: str) -> str | None:
        return _decode(await self._redis.call(lambda: self._redis.client.get(key)))

    async def set(self, key: str, value: str) -> None:
        data = value.encode("utf-8", "surrogatepass")
        await self._redis.call(lambda: self._redis.client.set(key, data, ex=self.ttl_s))

    async def get_many(self, keys: Sequence[str]) -> list[str | None]:
        """One MGET for all of a request's components."""
        if not keys:
            return []
        raw = await self._redis.call(lambda: self._redis.client.mget(list(keys)))
        if not isinstance(raw, list) or len(raw) != len(keys):
            return [None] * len(keys)
        return [_decode(value) for value in raw]

    async def set_many(self, items: Mapping[str, str], ttl_s: float | None = None) -> None:
        await self.set_groups([(items, ttl_s)])

    async def set_groups(self, groups: Sequence[TtlGroup]) -> None:
        """Every group's ``SET key value EX ttl`` in one non-transactional pipeline (on a
        cluster, one pipeline per node)."""
        writes = [(key, value, max(1, int(ttl_s)) if ttl_s is not None else self.ttl_s)
                  for items, ttl_s in groups for key, value in items.items()]
        if not writes:
            return

        async def _write() -> None:
            async with self._redis.client.pipeline(transaction=False) as pipe:
                for key, value, ex in writes:
                    pipe.set(key, value.encode("utf-8", "surrogatepass"), ex=ex)
                await pipe.execute()

        await self._redis.call(_write)

    async def ping(self) -> bool:
        """Round-trip to Redis (through the breaker: no I/O while it is open)."""
        return await self._redis.ping()

    def status(self) -> BackendStatus:
        return self._redis.status()

    async def close(self) -> None:
        await self._redis.close()
