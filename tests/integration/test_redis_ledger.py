from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from proxy.accounting.ledger import LedgerUnavailable, RedisLedger, UsageRecord
from proxy.store.redis import RedisSettings
from tests.support.redis import BlackHole, RedisServer

pytestmark = pytest.mark.integration

FAST = RedisSettings(socket_timeout_s=0.5, connect_timeout_s=0.5, backoff_s=0.2)


def rec(tenant: str = "research", model: str = "gpt-4o", **kw: object) -> UsageRecord:
    args: dict[str, object] = {
        "outcome": "applied",
        "original_tokens": 100,
        "forwarded_tokens": 40,
        "compression_ms": 0.25,
    }
    args.update(kw)
    return UsageRecord(tenant, model, **args)  # type: ignore[arg-type]


async def test_concurrent_increments_add_up_and_persist(redis_url: str) -> None:
    ledger = RedisLedger.from_url(redis_url, FAST)
    await asyncio.gather(*(ledger.record(rec(cache_hits=1)) for _ in range(200)))
    await ledger.record(rec(outcome="skipped", forwarded_tokens=100, skip_reason="deadline"))
    await ledger.close()

    reopened = RedisLedger.from_url(redis_url, FAST)  # a new client: a restarted proxy
    [row] = await reopened.totals("research")
    assert row.requests == 201 and row.original_tokens == 20_100
    assert row.forwarded_tokens == 200 * 40 + 100 and row.saved_tokens == 200 * 60
    assert row.cache_hits == 200 and row.compressed_requests == 200
    assert row.skips == {"deadline": 1}
    assert abs(row.compression_ms - 201 * 0.25) < 1e-6
    [hourly] = await reopened.totals("research", since=datetime.now(UTC) - timedelta(hours=1))
    assert hourly == row
    await reopened.close()


async def test_tenant_isolation_and_key_names(redis_url: str) -> None:
    ledger = RedisLedger.from_url(redis_url, FAST)
    await ledger.record(rec("team-a", original_tokens=10, forwarded_tokens=5))
    await ledger.record(rec("team-b", model="gpt-4o-mini"))
    await ledger.record(rec("team-b", model="gpt-4o-mini"))
    rows_a = await ledger.totals("team-a")
    assert [(r.tenant, r.model, r.requests) for r in rows_a] == [("team-a", "gpt-4o", 1)]
    rows_b = await ledger.totals("team-b")
    assert [(r.tenant, r.model, r.requests) for r in rows_b] == [("team-b", "gpt-4o-mini", 2)]
    assert [r.tenant for r in await ledger.totals()] == ["team-a", "team-b"]
    assert await ledger.totals("team-c") == []

    raw = aioredis.Redis.from_url(redis_url, decode_responses=True)
    keys = {str(k) for k in await raw.keys("*")}
    await raw.aclose()
    assert "lg:v1:ledger:tenants" in keys
    for key in keys - {"lg:v1:ledger:tenants"}:
        assert re.fullmatch(
            r"lg:v1:\{[0-9a-f]{16}\}:ledger:(models|w:[0-9a-f]{16}|m:[0-9a-f]{16}:(total|h:\d{10}))",
            key,
        ), key
    await ledger.close()


async def test_rows_stored_for_another_tenant_are_never_returned(redis_url: str) -> None:
    ledger = RedisLedger.from_url(redis_url, FAST)
    await ledger.record(rec("team-a"))
    await ledger.flush()
    raw = aioredis.Redis.from_url(redis_url, decode_responses=True)
    [total] = [str(k) for k in await raw.keys("*:total")]
    # Simulate a digest-prefix collision: team-a's hash claims to belong to team-b.
    await raw.hset(total, "_tenant", "team-b")
    await raw.aclose()
    assert await ledger.totals("team-a") == []
    await ledger.close()


async def test_hourly_buckets_expire(redis_url: str) -> None:
    ledger = RedisLedger.from_url(redis_url, FAST)
    await ledger.record(rec(at=datetime.now(UTC) - timedelta(hours=3)))
    assert await ledger.flush()
    raw = aioredis.Redis.from_url(redis_url, decode_responses=True)
    [hour_key] = [str(k) for k in await raw.keys("*:h:*")]
    assert 29 * 86400 < await raw.ttl(hour_key) <= 31 * 86400
    assert await raw.ttl(hour_key.rsplit(":h:", 1)[0] + ":total") == -1
    await raw.aclose()
    assert await ledger.totals(since=datetime.now(UTC) - timedelta(hours=1)) == []
    [row] = await ledger.totals(since=datetime.now(UTC) - timedelta(hours=4))
    assert row.requests == 1
    await ledger.close()


async def test_redis_outage_never_fails_recording(redis_server: RedisServer) -> None:
    ledger = RedisLedger.from_url(redis_server.url, FAST, flush_interval_s=0.05)
    await ledger.record(rec())
    assert await ledger.flush()
    redis_server.stop()
    for _ in range(20):
        await ledger.record(rec())  # no I/O on the request path, never raises
    assert not await ledger.flush()  # kept for later
    assert not ledger.status().ok and ledger.status().errors >= 1
    assert ledger.pending == 1
    with pytest.raises(LedgerUnavailable):
        await ledger.totals()

    redis_server.start()  # empty server (no persistence), same port
    await asyncio.sleep(FAST.backoff_s + 0.05)
    # Flushes the 20 kept increments, after the recent batch the empty server lost (as a
    # replica promoted before it received it would have): every request counted once.
    [row] = await ledger.totals("research")
    assert row.requests == 21 and ledger.pending == 0 and ledger.status().ok
    await ledger.close()


async def test_pending_is_bounded_during_an_outage(redis_server: RedisServer) -> None:
    ledger = RedisLedger.from_url(redis_server.url, FAST, max_pending=2)
    redis_server.stop()
    for model in ("a", "b", "c", "a"):
        await ledger.record(rec(model=model))
    assert ledger.pending == 2 and ledger.dropped == 1
    await ledger.close()


async def test_black_hole_record_returns(black_hole: BlackHole) -> None:
    ledger = RedisLedger.from_url(
        black_hole.url, RedisSettings(socket_timeout_s=0.1, connect_timeout_s=0.1)
    )
    await asyncio.wait_for(ledger.record(rec()), 5)
    assert not await asyncio.wait_for(ledger.flush(), 5)
    assert not ledger.status().ok
    with pytest.raises(LedgerUnavailable):
        await asyncio.wait_for(ledger.totals("research"), 5)
    await asyncio.wait_for(ledger.close(), 5)


async def test_a_batch_resent_after_a_lost_reply_counts_once(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server applied the flush but its reply was lost (a timeout, a killed primary):
    the same numbered batch goes again, and is counted once; records made meanwhile are
    written by the next batch."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    ledger = RedisLedger.from_url(redis_url, FAST)
    real = ledger._writer.write
    calls: list[int] = []

    async def applied_then_lost(client: Any, number: int, batch: Any) -> bool:
        calls.append(number)
        await real(client, number, batch)
        if len(calls) == 1:
            raise RedisConnectionError("reply lost")
        return True

    monkeypatch.setattr(ledger._writer, "write", applied_then_lost)
    await ledger.record(rec())
    assert not await ledger.flush()
    await ledger.record(rec(original_tokens=10, forwarded_tokens=10))
    await asyncio.sleep(FAST.backoff_s + 0.05)
    assert await ledger.flush() and ledger.pending == 0
    assert calls == [1, 1, 2]  # batch 1 again (applied once), then the records made meanwhile
    [row] = await ledger.totals("research")
    assert (row.requests, row.original_tokens) == (2, 110)
    await ledger.close()


async def test_two_writers_never_skip_each_other(redis_url: str) -> None:
    """Batch numbers are per writer (proxy process): equal numbers from two replicas both count."""
    first, second = RedisLedger.from_url(redis_url, FAST), RedisLedger.from_url(redis_url, FAST)
    for ledger in (first, second):
        await ledger.record(rec())
        assert await ledger.flush()
    [row] = await first.totals("research")
    assert row.requests == 2
    await first.close()
    await second.close()


async def test_a_batch_the_old_primary_took_with_it_is_written_again(
    redis_server: RedisServer,
) -> None:
    """A primary acknowledged batch 3 and died before its replica got it. After the failed
    write that follows, the writer sends its recent batches again, oldest first: the new
    primary skips 1 and 2 (their markers replicated with them) and applies 3, then 4."""
    ledger = RedisLedger.from_url(redis_server.url, FAST)
    for _ in range(3):
        await ledger.record(rec())
        assert await ledger.flush()
    raw = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    keys = {k.rsplit(":", 1)[-1] if ":w:" not in k else "marker": k
            for k in map(str, await raw.keys("*{*}*")) if ":h:" not in k}
    await raw.aclose()
    redis_server.stop()  # the primary dies
    await ledger.record(rec())
    assert not await ledger.flush()
    redis_server.start()  # the promoted replica: it has batches 1 and 2 only
    raw = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    await raw.sadd("lg:v1:ledger:tenants", "research")
    await raw.sadd(keys["models"], "gpt-4o")
    await raw.set(keys["marker"], 2)
    await raw.hset(keys["total"], mapping={
        "_tenant": "research", "_model": "gpt-4o", "requests": 2, "original_tokens": 200})
    await raw.aclose()
    await asyncio.sleep(FAST.backoff_s + 0.05)
    assert await ledger.flush()
    [row] = await ledger.totals("research")
    assert (row.requests, row.original_tokens) == (4, 400)
    await ledger.close()
