"""Per-period figures from hourly buckets: windows, sums, money, isolation by tenant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from proxy.accounting.ledger import HourBucket, UsageRecord
from proxy.accounting.report import PriceTable
from proxy.dashboard.data import summarize, summarize_all, window

NOW = datetime(2026, 11, 27, 18, 30, tzinfo=UTC)
PRICES = PriceTable({"gpt-4o*": 2.5, "gpt-4o-mini*": 0.15})


def bucket(tenant: str, model: str, hours_ago: int, **kw: object) -> HourBucket:
    args: dict[str, object] = {
        "outcome": "applied",
        "original_tokens": 1_000_000,
        "forwarded_tokens": 400_000,
        "compression_ms": 80.0,
    }
    args.update(kw)
    rec = UsageRecord(tenant, model, at=NOW - timedelta(hours=hours_ago), **args)  # type: ignore[arg-type]
    return HourBucket(tenant, model, rec.hour(), rec.counters())


def test_windows() -> None:
    day = window("24h", NOW)
    assert len(day.starts) == 24 and day.step == timedelta(hours=1)
    assert day.starts[-1] == datetime(2026, 11, 27, 18, tzinfo=UTC)
    assert day.since == datetime(2026, 11, 26, 19, tzinfo=UTC)
    week = window("7d", NOW)
    assert week.starts[0] == datetime(2026, 11, 21, tzinfo=UTC) and len(week.starts) == 7
    assert len(window("30d", NOW).starts) == 30
    assert week.index(datetime(2026, 11, 27, 23, tzinfo=UTC)) == 6
    assert week.index(datetime(2026, 11, 20, 23, tzinfo=UTC)) is None
    with pytest.raises(ValueError):
        window("1y", NOW)


def test_summary_sums_money_histograms_and_points() -> None:
    buckets = [
        bucket("team-a", "gpt-4o", 0, cache_hits=1, cache_misses=1),
        bucket("team-a", "gpt-4o-mini", 2, compression_ms=400.0),
        bucket("team-a", "local-llama", 3),
        bucket(
            "team-a",
            "gpt-4o",
            0,
            outcome="skipped",
            forwarded_tokens=1_000_000,
            skip_reason="below_min_tokens",
            compression_ms=0.0,
        ),
        bucket("team-a", "gpt-4o", 30),  # outside 24h
        bucket("team-b", "gpt-4o", 0),  # another tenant
    ]
    s = summarize("team-a", buckets, window("24h", NOW), PRICES)
    assert s.requests == 4 and s.compressed_requests == 3
    assert s.original_tokens == 4_000_000 and s.saved_tokens == 1_800_000
    assert s.dollars_saved == pytest.approx(0.6 * 2.5 + 0.6 * 0.15)
    assert s.unpriced_models == ("local-llama",)
    assert s.cache_hit_rate == 0.5
    assert dict(s.skips) == {"below_min_tokens": 1}
    assert s.rates.total == 3 and s.latency_ms.total == 3
    assert s.latency_ms.quantile(0.5) is not None
    assert [p.requests for p in s.points if p.requests] == [1, 1, 2]
    assert s.points[-1].original_tokens == 2_000_000
    body = s.to_dict()
    assert body["saved_tokens"] == 1_800_000 and body["percentiles_approximate"] is True
    assert len(body["series"]) == 24
    assert "team-b" not in str(body)


def test_summarize_all_lists_idle_tenants_too() -> None:
    rows = summarize_all(
        ["idle", "team-a"],
        [bucket("team-a", "gpt-4o", 1), bucket("gone", "gpt-4o", 1)],
        window("7d", NOW),
        PRICES,
    )
    assert [r.tenant for r in rows] == ["gone", "idle", "team-a"]
    assert rows[1].requests == 0 and rows[1].saved_fraction is None
