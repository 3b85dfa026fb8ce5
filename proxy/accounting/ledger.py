"""Savings ledger: what each tenant sent, what went upstream, what compression saved.

One ``UsageRecord`` per proxied request is added to two sets of counters per
(tenant, model): all-time totals and an hourly bucket (kept ``retention`` long, 30
days by default, for dashboards and ``--since`` reports). Besides the summed counters,
each bucket holds two histograms (non-cumulative bucket counts): the achieved rate
(forwarded/original) of applied compressions (``rate:<le>``) and the compression
latency in milliseconds (``ms:<le>``); ``series()`` reads the hourly buckets back.
``MemoryLedger`` lives in the process; ``RedisLedger`` survives restarts and is shared by
replicas: one atomic, idempotent script per tenant per flush (``proxy.accounting.ledger_keys``),
so a Redis Cluster can hold it and a retried flush never counts twice.

Recording never fails a request: Redis errors are counted and dropped (the same
circuit breaker as the cache). Reading raises ``LedgerUnavailable`` instead, so a
report never shows an outage as zero savings.

Redis layout (key names carry digests only; tenant and model names live in values; the
braces are the tenant's cluster hash tag)::

    lg:v1:ledger:tenants                          SET   tenant names
    lg:v1:{<t16>}:ledger:models                   SET   model names of that tenant
    lg:v1:{<t16>}:ledger:m:<m16>:total            HASH  counters + _tenant, _model
    lg:v1:{<t16>}:ledger:m:<m16>:h:<YYYYMMDDHH>   HASH  same, EXPIRE retention
    lg:v1:{<t16>}:ledger:w:<writer>               STRING last batch number applied for one
                                                        proxy process, EXPIRE retention
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from proxy.accounting.cost import CacheEstimate, PromptBill
from proxy.accounting.ledger_keys import (
    TENANTS_KEY,
    BatchWriter,
    RecentBatches,
    model_prefix,
    models_key,
)
from proxy.core.safetext import safe_text
from proxy.store.clients import SharedRedis
from proxy.store.redis import (
    BackendStatus,
    FailOpenRedis,
    RedisSettings,
    connect_redis,
)

__all__ = [
    "COUNTERS",
    "LATENCY_EDGES_MS",
    "OTHER_MODEL",
    "RATE_EDGES",
    "HourBucket",
    "Ledger",
    "LedgerRow",
    "LedgerUnavailable",
    "MemoryLedger",
    "RedisLedger",
    "UsageRecord",
]

# Integer counters, in the order reports show them; compression_ms is the one float.
COUNTERS = (
    "requests",
    "original_tokens",
    "forwarded_tokens",
    "saved_tokens",
    "compressed_requests",
    "shadow_requests",
    "would_forward_tokens",
    "would_save_tokens",
    "cache_hits",
    "cache_misses",
    "upstream_usage_requests",
    "upstream_prompt_tokens",
    "upstream_completion_tokens",
    # Net of the provider's prompt cache (proxy.accounting.cost): prompt tokens as billed,
    # as the original would have been billed sent directly, and (shadow) as the compressed
    # prompt would have been; each with the part served from the provider's cache.
    "upstream_cached_tokens",
    "billed_prompt_tokens",
    "billed_cached_tokens",
    "direct_prompt_tokens",
    "direct_cached_tokens",
    "would_prompt_tokens",
    "would_cached_tokens",
)
_SKIP = "skip:"
# Histogram upper bounds ("le", inclusive); a value above the last one lands in "inf".
RATE_EDGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
LATENCY_EDGES_MS = (5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
                    10000.0, 30000.0, 60000.0)
RATE_PREFIX = "rate:"
LATENCY_PREFIX = "ms:"
_RETENTION = timedelta(days=30)
log = logging.getLogger(__name__)
OTHER_MODEL = "other"  # where model names beyond ``max_models`` per tenant are counted
_TENANTS_KEY = TENANTS_KEY
_SETTINGS = RedisSettings()


class LedgerUnavailable(RuntimeError):
    """The ledger backend could not be read (Redis down or timing out)."""


@dataclass(frozen=True)
class UsageRecord:
    """One request's accounting. Token counts are target-model (tiktoken) counts of message text.

    ``outcome`` is the ``x-linguagate-compression`` value without its reason:
    ``applied`` (compressed text forwarded), ``shadow`` (computed, original forwarded),
    ``off`` or ``skipped`` (with ``skip_reason``).
    """

    tenant: str
    model: str
    outcome: str
    original_tokens: int
    forwarded_tokens: int
    would_forward_tokens: int | None = None  # shadow mode: what compression would have sent
    compression_ms: float = 0.0
    cache_hits: int = 0
    cache_misses: int = 0
    skip_reason: str | None = None
    upstream_prompt_tokens: int | None = None  # the upstream's own ``usage``, when it sent one
    upstream_completion_tokens: int | None = None
    # ``usage.prompt_tokens_details.cached_tokens``: input the provider billed at its cached price.
    upstream_cached_tokens: int | None = None
    cache_estimate: CacheEstimate | None = None  # the proxy's own provider-cache estimates
    at: datetime | None = None  # default: now (UTC)

    def increments(self) -> dict[str, float]:
        """Counter deltas (zero deltas left out); ``compression_ms`` is the only float."""
        inc: dict[str, float] = {
            "requests": 1,
            "original_tokens": self.original_tokens,
            "forwarded_tokens": self.forwarded_tokens,
            "saved_tokens": self.original_tokens - self.forwarded_tokens,
            "compressed_requests": int(self.outcome == "applied"),
            "cache_hits": self.cache_hits,
            "cache_misses": self.cache_misses,
            "compression_ms": self.compression_ms,
        }
        if self.would_forward_tokens is not None:
            inc["shadow_requests"] = 1
            inc["would_forward_tokens"] = self.would_forward_tokens
            inc["would_save_tokens"] = self.original_tokens - self.would_forward_tokens
        if self.upstream_prompt_tokens is not None or self.upstream_completion_tokens is not None:
            inc["upstream_usage_requests"] = 1
            inc["upstream_prompt_tokens"] = self.upstream_prompt_tokens or 0
            inc["upstream_completion_tokens"] = self.upstream_completion_tokens or 0
        if self.upstream_cached_tokens is not None:
            inc["upstream_cached_tokens"] = self.upstream_cached_tokens
        inc.update(self._bill_increments())
        if self.skip_reason:
            inc[_SKIP + self.skip_reason] = 1
        return {k: v for k, v in inc.items() if v}

    def _bill_increments(self) -> dict[str, float]:
        """Billed / direct / would-be prompt tokens (see ``proxy.accounting.cost``).

        Billed is the upstream's own count when it sent one, else the proxy's estimate.
        Direct: when the compressed prompt went upstream, the same prompt plus the tokens
        compression removed, with the cached part the original would have had; otherwise
        the original went, so direct is what was billed.
        """
        est = self.cache_estimate
        if est is None:
            return {}
        prompt = (self.upstream_prompt_tokens if self.upstream_prompt_tokens is not None
                  else est.sent_prompt if self.outcome == "applied" else est.direct_prompt)
        cached = (self.upstream_cached_tokens if self.upstream_cached_tokens is not None
                  else est.sent_cached if self.outcome == "applied" else est.direct_cached)
        inc: dict[str, float] = {"billed_prompt_tokens": prompt, "billed_cached_tokens": cached}
        removed = self.original_tokens - self.forwarded_tokens
        if self.outcome == "applied":
            inc["direct_prompt_tokens"] = prompt + removed
            inc["direct_cached_tokens"] = min(est.direct_cached, prompt + removed)
        else:
            inc["direct_prompt_tokens"], inc["direct_cached_tokens"] = prompt, cached
        if self.would_forward_tokens is not None:
            would = max(0, prompt - (self.original_tokens - self.would_forward_tokens))
            inc["would_prompt_tokens"] = would
            inc["would_cached_tokens"] = min(est.sent_cached, would)
        return inc

    def histogram_increments(self) -> dict[str, int]:
        """One count in the achieved-rate histogram (applied compressions only) and one in
        the latency histogram (whenever compression ran)."""
        inc: dict[str, int] = {}
        if self.outcome == "applied" and self.original_tokens > 0:
            rate = self.forwarded_tokens / self.original_tokens
            inc[histogram_field(RATE_PREFIX, RATE_EDGES, rate)] = 1
        if self.compression_ms > 0:
            inc[histogram_field(LATENCY_PREFIX, LATENCY_EDGES_MS, self.compression_ms)] = 1
        return inc

    def counters(self) -> dict[str, float]:
        """Everything a ledger adds for this request: ``increments()`` and the histograms."""
        return {**self.increments(), **self.histogram_increments()}

    def hour(self) -> datetime:
        at = self.at or datetime.now(UTC)
        return _floor_hour(at)


@dataclass(frozen=True)
class LedgerRow:
    """Summed counters of one (tenant, model)."""

    tenant: str
    model: str
    requests: int = 0
    original_tokens: int = 0
    forwarded_tokens: int = 0
    saved_tokens: int = 0
    compressed_requests: int = 0
    shadow_requests: int = 0
    would_forward_tokens: int = 0
    would_save_tokens: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    upstream_usage_requests: int = 0
    upstream_prompt_tokens: int = 0
    upstream_completion_tokens: int = 0
    upstream_cached_tokens: int = 0
    billed_prompt_tokens: int = 0
    billed_cached_tokens: int = 0
    direct_prompt_tokens: int = 0
    direct_cached_tokens: int = 0
    would_prompt_tokens: int = 0
    would_cached_tokens: int = 0
    compression_ms: float = 0.0
    skips: Mapping[str, int] = field(default_factory=dict)

    @property
    def saved_fraction(self) -> float:
        return self.saved_tokens / self.original_tokens if self.original_tokens else 0.0

    @property
    def billed(self) -> PromptBill:
        return PromptBill(self.billed_prompt_tokens, self.billed_cached_tokens)

    @property
    def direct(self) -> PromptBill:
        return PromptBill(self.direct_prompt_tokens, self.direct_cached_tokens)

    @property
    def would(self) -> PromptBill:
        return PromptBill(self.would_prompt_tokens, self.would_cached_tokens)

    @classmethod
    def from_counters(cls, tenant: str, model: str, counters: Mapping[str, float]) -> LedgerRow:
        ints = {name: int(counters.get(name, 0)) for name in COUNTERS}
        skips = {k[len(_SKIP) :]: int(v) for k, v in counters.items() if k.startswith(_SKIP)}
        return cls(
            tenant,
            model,
            compression_ms=float(counters.get("compression_ms", 0.0)),
            skips=dict(sorted(skips.items())),
            **ints,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for ``GET /v1/linguagate/usage``)."""
        return {**dataclasses.asdict(self), "skips": dict(self.skips)}


@dataclass(frozen=True)
class HourBucket:
    """The raw counters of one (tenant, model, UTC hour), histogram fields included."""

    tenant: str
    model: str
    hour: datetime
    counters: Mapping[str, float]


def histogram_field(prefix: str, edges: tuple[float, ...], value: float) -> str:
    """The counter name of the bucket holding ``value``: ``prefix`` + its upper bound."""
    for edge in edges:
        if value <= edge:
            return f"{prefix}{edge:g}"
    return f"{prefix}inf"


class Ledger(Protocol):
    async def record(self, rec: UsageRecord) -> None: ...
    async def totals(
        self, tenant: str | None = None, since: datetime | None = None
    ) -> list[LedgerRow]: ...
    def status(self) -> BackendStatus: ...
    async def close(self) -> None: ...


def _floor_hour(at: datetime) -> datetime:
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _add(into: dict[str, float], inc: Mapping[str, float]) -> None:
    for name, value in inc.items():
        into[name] = into.get(name, 0) + value


class _ModelNames:
    """Bounds the model names one process records per tenant (clients choose them)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: dict[str, set[str]] = {}

    def __call__(self, rec: UsageRecord) -> UsageRecord:
        tenant, model = safe_text(rec.tenant), safe_text(rec.model)
        if (tenant, model) != (rec.tenant, rec.model):
            # A name no Redis key or field can hold would fail every flush, for every tenant.
            rec = dataclasses.replace(rec, tenant=tenant, model=model)
        seen = self._seen.setdefault(rec.tenant, set())
        if rec.model in seen:
            return rec
        if len(seen) >= self.limit:
            return dataclasses.replace(rec, model=OTHER_MODEL)
        seen.add(rec.model)
        return rec


class MemoryLedger:
    """In-process ledger (lost on restart); same semantics as ``RedisLedger``."""

    def __init__(
        self,
        *,
        retention: timedelta = _RETENTION,
        max_models: int = 200,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.retention = retention
        self._now = now
        self._models = _ModelNames(max_models)
        self._totals: dict[tuple[str, str], dict[str, float]] = {}
        self._hourly: dict[tuple[str, str, datetime], dict[str, float]] = {}

    async def record(self, rec: UsageRecord) -> None:
        rec = self._models(rec)
        inc = rec.counters()
        _add(self._totals.setdefault((rec.tenant, rec.model), {}), inc)
        bucket = (rec.tenant, rec.model, rec.hour())
        if bucket not in self._hourly:
            self._expire()
        _add(self._hourly.setdefault(bucket, {}), inc)

    def _expire(self) -> None:
        oldest = _floor_hour(self._now() - self.retention)
        for bucket in [b for b in self._hourly if b[2] < oldest]:
            del self._hourly[bucket]

    async def totals(
        self, tenant: str | None = None, since: datetime | None = None
    ) -> list[LedgerRow]:
        sums: dict[tuple[str, str], dict[str, float]] = {}
        if since is None:
            sums = {k: dict(v) for k, v in self._totals.items() if tenant in (None, k[0])}
        else:
            start = _floor_hour(since)
            for (t, model, hour), counters in self._hourly.items():
                if tenant in (None, t) and hour >= start:
                    _add(sums.setdefault((t, model), {}), counters)
        return [LedgerRow.from_counters(t, m, c) for (t, m), c in sorted(sums.items())]

    async def series(
        self, tenant: str | None, since: datetime, until: datetime | None = None
    ) -> list[HourBucket]:
        """Hourly buckets of one tenant (or all) from ``since`` to ``until`` (default now),
        both rounded down to the hour and inclusive; sorted by tenant, model, hour."""
        start, end = _floor_hour(since), _floor_hour(until or self._now())
        return [
            HourBucket(t, m, hour, dict(counters))
            for (t, m, hour), counters in sorted(self._hourly.items())
            if tenant in (None, t) and start <= hour <= end
        ]

    def status(self) -> BackendStatus:
        return BackendStatus("memory", True, 0, f"{len(self._totals)} rows")

    async def close(self) -> None:
        return None


def _model_prefix(tenant: str, model: str) -> str:
    return model_prefix(tenant, model)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decode(raw: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


class RedisLedger:
    """Ledger in Redis: atomic, shared by replicas, survives restarts; recording never raises.

    ``record()`` does no I/O: it adds the request's increments to a small pending
    table (one entry per tenant, model and hour) that a background task writes
    every ``flush_interval_s``, one script call per tenant. A burst of requests thus
    costs one round-trip, and a Redis outage or failover loses nothing: a flush seals
    the pending table as a numbered batch and sends that same batch until it is stored,
    while new records pend beside it; the number makes a resent batch count once even
    when the server applied the first try and only its reply was lost. ``close()``
    flushes.
    """

    def __init__(
        self,
        client: SharedRedis,
        settings: RedisSettings = _SETTINGS,
        *,
        owns_client: bool = True,
        retention: timedelta = _RETENTION,
        flush_interval_s: float = 1.0,
        max_pending: int = 10_000,
        max_models: int = 200,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._redis = FailOpenRedis(
            client, settings, name="ledger", owns_client=owns_client, clock=clock
        )
        self.retention = retention
        self.flush_interval_s = flush_interval_s
        self.max_pending = max_pending
        self._models = _ModelNames(max_models)
        self.dropped = 0
        self._now = now
        self._pending: dict[tuple[str, str, datetime], dict[str, float]] = {}
        # The batch being written, with its number: resent as it is until stored.
        self._sealed: tuple[int, dict[tuple[str, str, datetime], dict[str, float]]] | None = None
        self._batches = 0
        ttl_s = int(retention.total_seconds()) + 3600
        self._writer = BatchWriter(hourly_ttl_s=ttl_s, marker_ttl_s=ttl_s)
        self._recent = RecentBatches(clock)
        self._flusher: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()

    @classmethod
    def from_url(cls, url: str, settings: RedisSettings = _SETTINGS, **kwargs: Any) -> RedisLedger:
        return cls(connect_redis(url, settings), settings, **kwargs)

    @property
    def pending(self) -> int:
        return len(self._pending) + (len(self._sealed[1]) if self._sealed else 0)

    async def record(self, rec: UsageRecord) -> None:
        rec = self._models(rec)
        bucket = (rec.tenant, rec.model, rec.hour())
        if bucket not in self._pending and self.pending >= self.max_pending:
            self.dropped += 1  # bounded memory during a long outage
            return
        _add(self._pending.setdefault(bucket, {}), rec.counters())
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        while self._pending or self._sealed:
            await asyncio.sleep(self.flush_interval_s)
            await self.flush()

    async def flush(self) -> bool:
        """Write pending increments now; False (and kept for later) when Redis failed."""
        async with self._flush_lock:
            # After a failure, the recent batches again first (a failover may have lost them).
            for number, batch in self._recent.due():
                write = functools.partial(self._writer.write, self._redis.client, number, batch)
                if not await self._redis.call(write):
                    return False
            self._recent.replay_due = False
            for _ in range(2):  # the batch left by an earlier failure, then the pending one
                if self._sealed is None:
                    if not self._pending:
                        return True
                    self._batches += 1
                    self._sealed, self._pending = (self._batches, self._pending), {}
                write = functools.partial(self._writer.write, self._redis.client, *self._sealed)
                if not await self._redis.call(write):
                    self._recent.replay_due = True
                    return False  # sealed: the next flush resends this batch, same number
                self._recent.stored(*self._sealed)
                self._sealed = None
            return not self._pending

    async def totals(
        self, tenant: str | None = None, since: datetime | None = None
    ) -> list[LedgerRow]:
        """Rows for one tenant (or all when ``tenant`` is None), all-time or since ``since``."""
        await self.flush()
        tenants = await self._tenant_names(tenant)
        rows: list[LedgerRow] = []
        for name in tenants:
            rows.extend(await self._tenant_rows(name, since))
        return rows

    async def _tenant_names(self, tenant: str | None) -> list[str]:
        """``[tenant]``, or every tenant the ledger has seen (sorted) when None."""
        if tenant is not None:
            return [tenant]
        client = self._redis.client
        members = await self._redis.call(lambda: client.smembers(_TENANTS_KEY))
        if members is None:
            raise LedgerUnavailable("redis ledger unreachable")
        return sorted(_text(m) for m in members)

    async def _tenant_rows(self, tenant: str, since: datetime | None) -> list[LedgerRow]:
        client = self._redis.client
        members = await self._redis.call(lambda: client.smembers(models_key(tenant)))
        if members is None:
            raise LedgerUnavailable("redis ledger unreachable")
        models = sorted(_text(m) for m in members)
        suffixes = ["total"] if since is None else [f"h:{h:%Y%m%d%H}" for h in self._hours(since)]

        async def _read() -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                for model in models:
                    for suffix in suffixes:
                        pipe.hgetall(f"{_model_prefix(tenant, model)}:{suffix}")
                return list(await pipe.execute())

        hashes = await self._redis.call(_read) if models else []
        if hashes is None:
            raise LedgerUnavailable("redis ledger unreachable")
        rows = []
        for i, model in enumerate(models):
            sums: dict[str, float] = {}
            for raw in hashes[i * len(suffixes) : (i + 1) * len(suffixes)]:
                fields = _decode(raw)
                # The digest prefix could in theory collide: the stored names decide.
                if fields.pop("_tenant", tenant) != tenant or fields.pop("_model", model) != model:
                    continue
                _add(sums, {k: float(v) for k, v in fields.items()})
            if sums:
                rows.append(LedgerRow.from_counters(tenant, model, sums))
        return rows

    async def series(
        self, tenant: str | None, since: datetime, until: datetime | None = None
    ) -> list[HourBucket]:
        """Hourly buckets of one tenant (or all) from ``since`` to ``until`` (default now),
        inclusive, sorted by tenant, model, hour: three pipelined round-trips at most."""
        await self.flush()
        client = self._redis.client
        tenants = await self._tenant_names(tenant)

        async def _models() -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                for name in tenants:
                    pipe.smembers(models_key(name))
                return list(await pipe.execute())

        model_sets = await self._redis.call(_models) if tenants else []
        if model_sets is None:
            raise LedgerUnavailable("redis ledger unreachable")
        hours = self._hours(since, until)
        wanted = [
            (name, model, hour)
            for name, models in zip(tenants, model_sets, strict=True)
            for model in sorted(_text(m) for m in models)
            for hour in hours
        ]

        async def _read() -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                for name, model, hour in wanted:
                    pipe.hgetall(f"{_model_prefix(name, model)}:h:{hour:%Y%m%d%H}")
                return list(await pipe.execute())

        hashes = await self._redis.call(_read) if wanted else []
        if hashes is None:
            raise LedgerUnavailable("redis ledger unreachable")
        buckets = []
        for (name, model, hour), raw in zip(wanted, hashes, strict=True):
            fields = _decode(raw)
            if not fields:
                continue
            # The digest prefix could in theory collide: the stored names decide.
            if fields.pop("_tenant", name) != name or fields.pop("_model", model) != model:
                continue
            buckets.append(HourBucket(name, model, hour, {k: float(v) for k, v in fields.items()}))
        return buckets

    def _hours(self, since: datetime, until: datetime | None = None) -> list[datetime]:
        end = _floor_hour(min(until, self._now()) if until is not None else self._now())
        start = max(_floor_hour(since), _floor_hour(self._now() - self.retention))
        count = int((end - start).total_seconds() // 3600) + 1
        return [start + timedelta(hours=i) for i in range(max(count, 0))]

    def status(self) -> BackendStatus:
        return self._redis.status()

    async def close(self) -> None:
        """Stop the background flusher, write what is pending (best effort), close."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if not await self.flush():
            log.warning("ledger: %d pending buckets not written (redis unavailable)", self.pending)
        await self._redis.close()
