"""Ledger histograms: which bucket a request lands in, series reads, approximate quantiles."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from proxy.accounting.ledger import (
    LATENCY_EDGES_MS,
    RATE_EDGES,
    MemoryLedger,
    UsageRecord,
    histogram_field,
)
from proxy.dashboard.stats import Histogram, histogram

NOW = datetime(2026, 11, 27, 18, 30, tzinfo=UTC)


def rec(tenant: str = "team-a", **kw: object) -> UsageRecord:
    args: dict[str, object] = {
        "outcome": "applied",
        "original_tokens": 1000,
        "forwarded_tokens": 400,
        "at": NOW,
    }
    args.update(kw)
    return UsageRecord(tenant, "gpt-4o-mini", **args)  # type: ignore[arg-type]


def test_histogram_field_edges_are_inclusive_upper_bounds() -> None:
    assert histogram_field("rate:", RATE_EDGES, 0.05) == "rate:0.1"
    assert histogram_field("rate:", RATE_EDGES, 0.1) == "rate:0.1"
    assert histogram_field("rate:", RATE_EDGES, 0.1000001) == "rate:0.2"
    assert histogram_field("rate:", RATE_EDGES, 1.0) == "rate:1"
    assert histogram_field("rate:", RATE_EDGES, 1.2) == "rate:inf"
    assert histogram_field("ms:", LATENCY_EDGES_MS, 7.0) == "ms:10"
    assert histogram_field("ms:", LATENCY_EDGES_MS, 61_000.0) == "ms:inf"


def test_record_histogram_increments() -> None:
    assert rec(compression_ms=30.0).histogram_increments() == {"rate:0.4": 1, "ms:50": 1}
    # Shadow and skipped requests: no achieved rate, but compression time when it ran.
    shadow = rec(
        outcome="shadow", forwarded_tokens=1000, would_forward_tokens=300, compression_ms=12.0
    )
    assert shadow.histogram_increments() == {"ms:25": 1}
    assert rec(outcome="skipped", skip_reason="deadline").histogram_increments() == {}
    assert rec(original_tokens=0, forwarded_tokens=0).histogram_increments() == {}
    counters = rec(compression_ms=30.0).counters()
    assert counters["rate:0.4"] == 1 and counters["saved_tokens"] == 600


async def test_memory_series_filters_by_tenant_and_hours() -> None:
    ledger = MemoryLedger(now=lambda: NOW)
    for hours_ago in (0, 1, 5, 30):
        await ledger.record(rec(at=NOW - timedelta(hours=hours_ago), compression_ms=3.0))
    await ledger.record(rec("team-b"))
    buckets = await ledger.series("team-a", NOW - timedelta(hours=5))
    assert [b.hour for b in buckets] == [
        datetime(2026, 11, 27, h, tzinfo=UTC) for h in (13, 17, 18)
    ]
    assert all(b.tenant == "team-a" for b in buckets)
    assert buckets[-1].counters["rate:0.4"] == 1 and buckets[-1].counters["ms:5"] == 1
    until = await ledger.series(None, NOW - timedelta(hours=5), NOW - timedelta(hours=1))
    assert [(b.tenant, b.hour.hour) for b in until] == [("team-a", 13), ("team-a", 17)]
    everyone = await ledger.series(None, NOW - timedelta(hours=1))
    assert {b.tenant for b in everyone} == {"team-a", "team-b"}
    # Totals stay what they were: histogram counters are not rows' fields.
    rows = await ledger.totals("team-a")
    assert rows[0].requests == 4 and rows[0].compressed_requests == 4


def test_quantiles_interpolate_within_the_bucket() -> None:
    h = Histogram((10.0, 20.0, 40.0, math.inf), (0, 10, 10, 0))
    assert h.total == 20
    assert h.quantile(0.5) == pytest.approx(20.0)
    assert h.quantile(0.25) == pytest.approx(15.0)
    assert h.quantile(0.99) == pytest.approx(39.6)
    assert Histogram((1.0, math.inf), (0, 0)).quantile(0.5) is None
    # A rank in the open top bucket: the highest finite bound (a lower bound of the truth).
    assert Histogram((10.0, math.inf), (1, 9)).quantile(0.99) == 10.0
    # The first bucket starts at zero.
    assert Histogram((10.0, math.inf), (4, 0)).quantile(0.5) == pytest.approx(5.0)


def test_histogram_from_counters_and_json() -> None:
    h = histogram("ms:", (5.0, 10.0), {"ms:5": 2, "ms:inf": 1, "requests": 9})
    assert h.counts == (2, 0, 1)
    assert h.labels(" ms") == ["≤ 5 ms", "≤ 10 ms", "> 10 ms"]
    assert h.to_dict() == [
        {"le": 5.0, "count": 2},
        {"le": 10.0, "count": 0},
        {"le": None, "count": 1},
    ]
