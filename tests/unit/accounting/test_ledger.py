from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from proxy.accounting.ledger import OTHER_MODEL, LedgerRow, MemoryLedger, UsageRecord
from proxy.accounting.report import format_table, load_prices, parse_since

NOW = datetime(2026, 11, 27, 18, 30, tzinfo=UTC)


def rec(tenant: str = "research", model: str = "gpt-4o", **kw: object) -> UsageRecord:
    args: dict[str, object] = {
        "outcome": "applied",
        "original_tokens": 1000,
        "forwarded_tokens": 400,
        "at": NOW,
    }
    args.update(kw)
    return UsageRecord(tenant, model, **args)  # type: ignore[arg-type]


def test_increments_of_an_applied_request() -> None:
    inc = rec(
        compression_ms=12.5,
        cache_hits=2,
        cache_misses=1,
        upstream_prompt_tokens=410,
        upstream_completion_tokens=0,
    ).increments()
    assert inc == {
        "requests": 1,
        "original_tokens": 1000,
        "forwarded_tokens": 400,
        "saved_tokens": 600,
        "compressed_requests": 1,
        "cache_hits": 2,
        "cache_misses": 1,
        "compression_ms": 12.5,
        "upstream_usage_requests": 1,
        "upstream_prompt_tokens": 410,
    }


def test_increments_of_shadow_and_skipped_requests() -> None:
    shadow = rec(outcome="shadow", forwarded_tokens=1000, would_forward_tokens=300).increments()
    assert "saved_tokens" not in shadow
    assert shadow["shadow_requests"] == 1 and shadow["would_save_tokens"] == 700
    skipped = rec(outcome="skipped", forwarded_tokens=1000, skip_reason="below_min_tokens")
    assert skipped.increments() == {
        "requests": 1,
        "original_tokens": 1000,
        "forwarded_tokens": 1000,
        "skip:below_min_tokens": 1,
    }


def test_hour_bucket_is_utc_floor() -> None:
    local = datetime(2026, 11, 27, 20, 59, tzinfo=UTC).astimezone(timezone(timedelta(hours=2)))
    assert rec(at=local).hour() == datetime(2026, 11, 27, 20, tzinfo=UTC)
    assert rec(at=datetime(2026, 11, 27, 5, 1)).hour() == datetime(2026, 11, 27, 5, tzinfo=UTC)


async def test_memory_ledger_totals_per_tenant_and_model() -> None:
    ledger = MemoryLedger(now=lambda: NOW)
    await ledger.record(rec())
    await ledger.record(rec(compression_ms=5.0, skip_reason=None))
    await ledger.record(rec(outcome="skipped", forwarded_tokens=1000, skip_reason="deadline"))
    await ledger.record(
        rec(model="gpt-4o-mini", original_tokens=10, forwarded_tokens=10, outcome="off")
    )
    await ledger.record(rec(tenant="sales"))
    rows = await ledger.totals()
    assert [(r.tenant, r.model) for r in rows] == [
        ("research", "gpt-4o"),
        ("research", "gpt-4o-mini"),
        ("sales", "gpt-4o"),
    ]
    top = rows[0]
    assert (top.requests, top.original_tokens, top.forwarded_tokens, top.saved_tokens) == (
        3,
        3000,
        1800,
        1200,
    )
    assert top.compressed_requests == 2 and top.skips == {"deadline": 1}
    assert top.compression_ms == 5.0 and abs(top.saved_fraction - 0.4) < 1e-9
    assert [r.tenant for r in await ledger.totals("sales")] == ["sales"]
    assert await ledger.totals("nobody") == []


async def test_memory_ledger_since_uses_hourly_buckets_and_expires_them() -> None:
    now = [NOW]
    ledger = MemoryLedger(retention=timedelta(days=30), now=lambda: now[0])
    await ledger.record(rec(at=NOW - timedelta(days=40)))  # beyond retention
    await ledger.record(rec(at=NOW - timedelta(hours=30)))
    await ledger.record(rec(at=NOW - timedelta(minutes=10)))  # same hour as NOW
    assert (await ledger.totals())[0].requests == 3  # all-time keeps everything
    assert (await ledger.totals(since=NOW - timedelta(hours=1)))[0].requests == 1
    assert (await ledger.totals(since=NOW - timedelta(days=2)))[0].requests == 2
    # the 40-day-old bucket was dropped when a newer bucket was created
    assert (await ledger.totals(since=NOW - timedelta(days=60)))[0].requests == 2
    assert await ledger.totals(since=NOW + timedelta(hours=2)) == []


async def test_model_names_per_tenant_are_bounded() -> None:
    ledger = MemoryLedger(max_models=2, now=lambda: NOW)
    for model in ("a", "b", "c", "d", "a"):
        await ledger.record(rec(model=model))
    await ledger.record(rec(tenant="other-team", model="z"))
    rows = {(r.tenant, r.model): r.requests for r in await ledger.totals()}
    assert rows == {
        ("research", "a"): 2,
        ("research", "b"): 1,
        ("research", OTHER_MODEL): 2,
        ("other-team", "z"): 1,
    }


def test_row_from_counters_and_to_dict() -> None:
    row = LedgerRow.from_counters(
        "t", "m", {"requests": 2.0, "skip:deadline": 1.0, "compression_ms": 1.5}
    )
    assert row.requests == 2 and row.skips == {"deadline": 1} and row.compression_ms == 1.5
    data = row.to_dict()
    assert data["tenant"] == "t" and data["skips"] == {"deadline": 1} and data["saved_tokens"] == 0


# --- report formatting (proxy.accounting.report), the ledger's reading surface ---


def test_parse_since_relative_and_iso() -> None:
    assert parse_since("24h", NOW) == NOW - timedelta(hours=24)
    assert parse_since("7d", NOW) == NOW - timedelta(days=7)
    assert parse_since(" 30m ", NOW) == NOW - timedelta(minutes=30)
    assert parse_since("2w", NOW) == NOW - timedelta(weeks=2)
    assert parse_since("2026-11-01", NOW) == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_since("2026-11-01T05:00:00+02:00", NOW) == datetime(2026, 11, 1, 3, tzinfo=UTC)
    with pytest.raises(ValueError, match="ISO date"):
        parse_since("yesterday", NOW)


def test_price_table_longest_glob_wins_and_file_overrides(tmp_path: Path) -> None:
    table = load_prices(None)
    assert table.price_for("gpt-4o-2024-08-06") == 2.50
    assert table.price_for("gpt-4o-mini") == 0.15
    assert table.price_for("gpt-4-0613") == 30.0
    assert table.price_for("SmolLM2-135M-Instruct") is None
    assert table.dollars("gpt-4o", 2_000_000) == 5.0
    toml = tmp_path / "prices.toml"
    toml.write_text('[prices]\n"gpt-4o*" = 5.0\n"smol*" = 0\n')
    custom = load_prices(toml)
    assert custom.price_for("gpt-4o") == 5.0 and custom.price_for("SmolLM2") == 0.0
    assert custom.price_for("gpt-4o-mini") == 0.15
    js = tmp_path / "prices.json"
    js.write_text('{"my-model": 1.5}')
    assert load_prices(js).price_for("my-model") == 1.5
    js.write_text('{"my-model": "cheap"}')
    with pytest.raises(ValueError, match="must be a number"):
        load_prices(js)


def test_format_table_aligns_and_totals_net_of_provider_caching() -> None:
    rows = [
        LedgerRow(
            "research",
            "gpt-4o",
            requests=10,
            original_tokens=1_000_000,
            forwarded_tokens=400_000,
            saved_tokens=600_000,
            # billed: 400k prompt tokens, 100k of them cached (gpt-4o: cached at 50%)
            billed_prompt_tokens=400_000,
            billed_cached_tokens=100_000,
            # direct: 1M prompt tokens, 600k of them cached
            direct_prompt_tokens=1_000_000,
            direct_cached_tokens=600_000,
        ),
        LedgerRow(
            "sales",
            "local-model",
            requests=2,
            original_tokens=100,
            forwarded_tokens=100,
            shadow_requests=2,
            would_save_tokens=70,
        ),
    ]
    text = format_table(rows, load_prices(None))
    lines = text.splitlines()
    assert lines[0].split() == [
        "tenant", "model", "requests", "original", "forwarded", "saved", "saved", "%",
        "cached", "%", "billed", "$", "direct", "$", "net", "$", "saved",
    ]
    assert set(lines[1]) <= {"-", " "}
    # billed = (300k + 0.5 * 100k) * 2.5 / 1M = 0.875; direct = (400k + 0.5 * 600k) * 2.5 / 1M
    assert lines[2].split() == [
        "research", "gpt-4o", "10", "1,000,000", "400,000", "600,000", "60.0%", "25.0%",
        "$0.88", "$1.75", "$0.88",
    ]
    assert lines[3].split() == ["sales", "local-model", "2", "100", "100", "0", "0.0%", "-",
                                "-", "-", "-"]
    assert lines[4].split() == ["TOTAL", "12", "1,000,100", "400,100", "600,000", "60.0%",
                                "25.0%", "$0.88", "$1.75", "$0.88"]
    assert len({len(line) for line in lines[:2]}) == 1  # header and rule align
    assert lines[2].endswith("$0.88") and len(lines[2]) == len(lines[0])  # right-aligned
    assert lines[5] == ("shadow: sales/local-model would have saved 70 tokens in 2 requests "
                        "(- net of provider caching)")


def test_net_money_counts_cached_tokens_at_the_cached_price(tmp_path: Path) -> None:
    table = load_prices(None)
    assert table.cached_fraction("gpt-5") == 0.1
    assert table.cached_fraction("gpt-4.1-mini") == 0.25
    assert table.cached_fraction("gpt-4o-mini") == 0.5
    assert table.cached_fraction("gpt-4-0613") == 1.0  # no prompt caching
    row = LedgerRow("t", "gpt-5", billed_prompt_tokens=1_000_000, billed_cached_tokens=1_000_000,
                    direct_prompt_tokens=2_000_000, direct_cached_tokens=0)
    money = table.net(row)
    assert money is not None
    # compression halved the prompt but lost the whole cache discount: net loss
    assert money.billed == pytest.approx(0.125) and money.direct == pytest.approx(2.5)
    lost = LedgerRow("t", "gpt-5", billed_prompt_tokens=1_000_000, billed_cached_tokens=0,
                     direct_prompt_tokens=2_000_000, direct_cached_tokens=2_000_000)
    assert table.net(lost) is not None and table.net(lost).saved < 0  # type: ignore[union-attr]
    custom = tmp_path / "prices.toml"
    custom.write_text('[prices]\n"gpt-5*" = 2.0\n"mine*" = { input = 4.0, cached_input = 1.0 }\n')
    table = load_prices(custom)
    assert table.cached_fraction("gpt-5") == 0.1  # keeps its family's share
    assert table.cached_fraction("mine-1") == 0.25
