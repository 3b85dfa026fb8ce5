from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from proxy.ledger import LedgerRow, MemoryLedger, UsageRecord

NOW = datetime(2026, 11, 27, 18, 30, tzinfo=UTC)


def rec(tenant: str = "research", model: str = "gpt-4o", **kw: object) -> UsageRecord:
    args: dict[str, object] = {"outcome": "applied", "original_tokens": 1000,
                               "forwarded_tokens": 400, "at": NOW}
    args.update(kw)
    return UsageRecord(tenant, model, **args)  # type: ignore[arg-type]


def test_increments_of_an_applied_request() -> None:
    inc = rec(compression_ms=12.5, cache_hits=2, cache_misses=1,
              upstream_prompt_tokens=410, upstream_completion_tokens=0).increments()
    assert inc == {"requests": 1, "original_tokens": 1000, "forwarded_tokens": 400,
                   "saved_tokens": 600, "compressed_requests": 1, "cache_hits": 2,
                   "cache_misses": 1, "compression_ms": 12.5, "upstream_usage_requests": 1,
                   "upstream_prompt_tokens": 410}


def test_increments_of_shadow_and_skipped_requests() -> None:
    shadow = rec(outcome="shadow", forwarded_tokens=1000, would_forward_tokens=300).increments()
    assert "saved_tokens" not in shadow
    assert shadow["shadow_requests"] == 1 and shadow["would_save_tokens"] == 700
    skipped = rec(outcome="skipped", forwarded_tokens=1000, skip_reason="below_min_tokens")
    assert skipped.increments() == {"requests": 1, "original_tokens": 1000,
                                    "forwarded_tokens": 1000, "skip:below_min_tokens": 1}


def test_hour_bucket_is_utc_floor() -> None:
    local = datetime(2026, 11, 27, 20, 59, tzinfo=UTC).astimezone(timezone(timedelta(hours=2)))
    assert rec(at=local).hour() == datetime(2026, 11, 27, 20, tzinfo=UTC)
    assert rec(at=datetime(2026, 11, 27, 5, 1)).hour() == datetime(2026, 11, 27, 5, tzinfo=UTC)


async def test_memory_ledger_totals_per_tenant_and_model() -> None:
    ledger = MemoryLedger(now=lambda: NOW)
    await ledger.record(rec())
    await ledger.record(rec(compression_ms=5.0, skip_reason=None))
    await ledger.record(rec(outcome="skipped", forwarded_tokens=1000, skip_reason="deadline"))
    await ledger.record(rec(model="gpt-4o-mini", original_tokens=10, forwarded_tokens=10,
                            outcome="off"))
    await ledger.record(rec(tenant="sales"))
    rows = await ledger.totals()
    assert [(r.tenant, r.model) for r in rows] == [
        ("research", "gpt-4o"), ("research", "gpt-4o-mini"), ("sales", "gpt-4o")]
    top = rows[0]
    assert (top.requests, top.original_tokens, top.forwarded_tokens, top.saved_tokens) == \
        (3, 3000, 1800, 1200)
    assert top.compressed_requests == 2 and top.skips == {"deadline": 1}
    assert top.compression_ms == 5.0 and abs(top.saved_fraction - 0.4) < 1e-9
    assert [r.tenant for r in await ledger.totals("sales")] == ["sales"]
    assert await ledger.totals("nobody") == []


async def test_memory_ledger_since_uses_hourly_buckets_and_expires_them() -> None:
    now = [NOW]
    ledger = MemoryLedger(retention=timedelta(days=30), now=lambda: now[0])
    await ledger.record(rec(at=NOW - timedelta(days=40)))     # beyond retention
    await ledger.record(rec(at=NOW - timedelta(hours=30)))
    await ledger.record(rec(at=NOW - timedelta(minutes=10)))  # same hour as NOW
    assert (await ledger.totals())[0].requests == 3          # all-time keeps everything
    assert (await ledger.totals(since=NOW - timedelta(hours=1)))[0].requests == 1
    assert (await ledger.totals(since=NOW - timedelta(days=2)))[0].requests == 2
    # the 40-day-old bucket was dropped when a newer bucket was created
    assert (await ledger.totals(since=NOW - timedelta(days=60)))[0].requests == 2
    assert await ledger.totals(since=NOW + timedelta(hours=2)) == []


def test_row_from_counters_and_to_dict() -> None:
    row = LedgerRow.from_counters("t", "m", {"requests": 2.0, "skip:deadline": 1.0,
                                             "compression_ms": 1.5})
    assert row.requests == 2 and row.skips == {"deadline": 1} and row.compression_ms == 1.5
    data = row.to_dict()
    assert data["tenant"] == "t" and data["skips"] == {"deadline": 1} and data["saved_tokens"] == 0
