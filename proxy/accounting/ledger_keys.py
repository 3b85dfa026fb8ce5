"""The Redis ledger's key names, and its write: one atomic, idempotent script per tenant.

All of one tenant's ledger keys carry the tenant's hash tag (``lg:v1:{<t16>}:ledger:...``),
so they live in one Redis Cluster slot and one script can update them together; different
tenants spread over the cluster. Only the list of tenant names is global
(``lg:v1:ledger:tenants``, written with its own idempotent SADD).

Exactly once: each process is a *writer* with a random id, and numbers its batches. The
script applies a batch only when its number is above the one stored for that writer and
tenant (``lg:v1:{<t16>}:ledger:w:<writer>``), in the same atomic step as the increments.
A batch whose reply was lost (a timeout, a primary killed mid-reply) is sent again with the
same number: applied once whether or not the first try got through. A failover does not
break this: the marker replicates with the increments it guards, in one script effect.

Replication is asynchronous, so a primary can die holding batches it acknowledged but had
not yet sent to its replicas. Each writer therefore keeps the batches it stored in the last
``RecentBatches.window_s`` seconds and, after any failed write, sends them again, oldest
first, before anything newer: the new primary skips those whose marker reached it and
applies those it never saw (one tenant's keys live on one node, whose replication stream is
in order, so a surviving marker means every earlier batch survived too).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import secrets
from collections import deque
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from proxy.store.clients import SharedRedis
from proxy.store.redis import KEY_PREFIX, tenant_slot_namespace

__all__ = ["TENANTS_KEY", "BatchWriter", "RecentBatches", "model_prefix", "models_key"]

TENANTS_KEY = f"{KEY_PREFIX}:ledger:tenants"
Batch = Mapping[tuple[str, str, datetime], Mapping[str, float]]
_FLOAT_COUNTERS = frozenset({"compression_ms"})
_INT_LIMIT = 2**62  # HINCRBY is int64: a larger delta would fail the whole script
_CONCURRENT_TENANTS = 8
log = logging.getLogger(__name__)

# KEYS[1] writer marker, KEYS[2] the tenant's model set, KEYS[3..] counter hashes.
# ARGV: batch number, marker TTL, hourly TTL, tenant, then per hash: model, hourly flag,
# field count, and that many name/value pairs.
_WRITE_LUA = """
local seq = tonumber(ARGV[1])
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if last >= seq then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
local tenant = ARGV[4]
local a = 5
for k = 3, #KEYS do
  local key, model, hourly, n = KEYS[k], ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  a = a + 3
  redis.call('HSET', key, '_tenant', tenant, '_model', model)
  redis.call('SADD', KEYS[2], model)
  for _ = 1, n do
    if ARGV[a] == 'compression_ms' then
      redis.call('HINCRBYFLOAT', key, ARGV[a], ARGV[a + 1])
    else
      redis.call('HINCRBY', key, ARGV[a], ARGV[a + 1])
    end
    a = a + 2
  end
  if hourly == '1' then redis.call('EXPIRE', key, ARGV[3]) end
end
return 1
"""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def models_key(tenant: str) -> str:
    """``lg:v1:{<t16>}:ledger:models``: SET of the tenant's model names."""
    return f"{tenant_slot_namespace(tenant)}:ledger:models"


def model_prefix(tenant: str, model: str) -> str:
    """``lg:v1:{<t16>}:ledger:m:<m16>``: followed by ``:total`` or ``:h:<YYYYMMDDHH>``."""
    return f"{tenant_slot_namespace(tenant)}:ledger:m:{_digest(model)}"


def _name(text: str) -> bytes:
    # A name the client chose must never make a batch unwritable.
    return text.encode("utf-8", "surrogatepass")


def _fields(inc: Mapping[str, float]) -> list[Any]:
    """name, value pairs Redis accepts; a non-finite or absurd value is dropped, since one
    failing HINCRBY would leave the script half-applied."""
    out: list[Any] = []
    for name, value in inc.items():
        if name in _FLOAT_COUNTERS:
            if not math.isfinite(value):
                continue
            out += [name, repr(float(value))]
        elif math.isfinite(value) and abs(value) < _INT_LIMIT:
            out += [name, str(int(value))]
    return out


class BatchWriter:
    """Writes ledger batches, each tenant's part in one script call, exactly once per batch
    number (see the module docstring)."""

    def __init__(self, *, hourly_ttl_s: int, marker_ttl_s: int) -> None:
        self.writer_id = secrets.token_hex(8)
        self.hourly_ttl_s = hourly_ttl_s
        self.marker_ttl_s = marker_ttl_s
        self._script: Any = None

    async def write(self, client: SharedRedis, number: int, batch: Batch) -> bool:
        """Apply ``batch`` (all of it, or raise): True once every tenant's part is stored."""
        if self._script is None:
            self._script = client.register_script(_WRITE_LUA)
        per_tenant: dict[str, dict[tuple[str, datetime | None], dict[str, float]]] = {}
        for (tenant, model, hour), inc in batch.items():
            parts = per_tenant.setdefault(tenant, {})
            for slot in ((model, None), (model, hour)):
                into = parts.setdefault(slot, {})
                for name, value in inc.items():
                    into[name] = into.get(name, 0) + value
        await client.sadd(TENANTS_KEY, *(_name(t) for t in per_tenant))
        gate = asyncio.Semaphore(_CONCURRENT_TENANTS)

        async def one(tenant: str) -> None:
            keys: list[str] = [f"{tenant_slot_namespace(tenant)}:ledger:w:{self.writer_id}",
                               models_key(tenant)]
            args: list[Any] = [number, self.marker_ttl_s, self.hourly_ttl_s, _name(tenant)]
            for (model, hour), inc in per_tenant[tenant].items():
                suffix = "total" if hour is None else f"h:{hour:%Y%m%d%H}"
                keys.append(f"{model_prefix(tenant, model)}:{suffix}")
                fields = _fields(inc)
                args += [_name(model), "0" if hour is None else "1", len(fields) // 2, *fields]
            async with gate:
                await self._script(keys=keys, args=args, client=client)

        await asyncio.gather(*(one(t) for t in per_tenant))
        return True


class RecentBatches:
    """The batches a writer stored in the last ``window_s`` seconds (at most ``limit``), to
    send again after a failure in case the primary that acknowledged them is gone."""

    def __init__(self, clock: Callable[[], float], window_s: float = 30.0,
                 limit: int = 120) -> None:
        self.window_s = window_s
        self._clock = clock
        self._batches: deque[tuple[float, int, Batch]] = deque(maxlen=limit)
        self.replay_due = False

    def stored(self, number: int, batch: Batch) -> None:
        self._batches.append((self._clock(), number, batch))

    def due(self) -> list[tuple[int, Batch]]:
        """Oldest first; empty unless a write failed since the last complete replay."""
        if not self.replay_due:
            return []
        oldest = self._clock() - self.window_s
        while self._batches and self._batches[0][0] < oldest:
            self._batches.popleft()
        return [(number, batch) for _, number, batch in self._batches]
