"""The dashboard over the Redis ledger: hourly series read back, shared across proxies."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from proxy.accounting.ledger import (
    HourBucket,
    LedgerUnavailable,
    MemoryLedger,
    RedisLedger,
    UsageRecord,
)
from proxy.store.redis import RedisSettings
from tests.support.compression import CompressionStack, few_shot, key_of
from tests.support.redis import RedisServer
from tests.support.upstream import FakeUpstream

pytestmark = pytest.mark.integration

FAST = RedisSettings(socket_timeout_s=0.5, connect_timeout_s=0.5, backoff_s=0.2)
NOW = datetime(2026, 11, 27, 18, 30, tzinfo=UTC)
StartProxy = Callable[..., AbstractContextManager[CompressionStack]]


def records() -> list[UsageRecord]:
    out = []
    for hours_ago, tenant, model, ms in (
        (0, "team-a", "gpt-4o", 30.0),
        (0, "team-a", "gpt-4o", 900.0),
        (0, "team-a", "gpt-4o-mini", 0.0),
        (3, "team-a", "gpt-4o", 4.0),
        (50, "team-a", "gpt-4o", 12.0),
        (1, "team-b", "gpt-4o", 70.0),
    ):
        out.append(
            UsageRecord(
                tenant,
                model,
                "applied" if ms else "skipped",
                1000,
                300 if ms else 1000,
                compression_ms=ms,
                skip_reason=None if ms else "below_min_tokens",
                cache_hits=1,
                at=NOW - timedelta(hours=hours_ago),
            )
        )
    return out


def normal(buckets: list[HourBucket]) -> list[tuple[str, str, datetime, dict[str, float]]]:
    return [
        (b.tenant, b.model, b.hour, {k: float(v) for k, v in b.counters.items()}) for b in buckets
    ]


async def test_redis_series_equals_the_memory_series(redis_server: RedisServer) -> None:
    redis_ledger = RedisLedger.from_url(redis_server.url, FAST, now=lambda: NOW)
    memory = MemoryLedger(now=lambda: NOW)
    for rec in records():
        await redis_ledger.record(rec)
        await memory.record(rec)
    since = NOW - timedelta(hours=24)
    for tenant in ("team-a", "team-b", None, "nobody"):
        got = await redis_ledger.series(tenant, since)
        assert normal(got) == normal(await memory.series(tenant, since))
    team_a = await redis_ledger.series("team-a", since)
    assert [(b.model, b.hour.hour) for b in team_a] == [
        ("gpt-4o", 15),
        ("gpt-4o", 18),
        ("gpt-4o-mini", 18),
    ]
    now_bucket = team_a[1].counters
    assert now_bucket["rate:0.3"] == 2 and now_bucket["ms:50"] == 1 and now_bucket["ms:1000"] == 1
    until = await redis_ledger.series(None, since, NOW - timedelta(hours=2))
    assert [(b.tenant, b.hour.hour) for b in until] == [("team-a", 15)]
    # A later read from another client (a restarted proxy) sees the same buckets.
    await redis_ledger.close()
    reopened = RedisLedger.from_url(redis_server.url, FAST, now=lambda: NOW)
    assert normal(await reopened.series(None, since)) == normal(await memory.series(None, since))
    redis_server.stop()
    with pytest.raises(LedgerUnavailable):
        await reopened.series(None, since)
    await reopened.close()


def _summary(stack: CompressionStack, tenant: str, requests: int) -> dict[str, object]:
    deadline = time.monotonic() + 5
    while True:
        response = httpx.get(
            stack.server.url + "/dashboard/api/summary",
            headers={"authorization": f"Bearer {key_of(tenant)}"},
        )
        assert response.status_code == 200
        body: dict[str, object] = response.json()
        if body["requests"] == requests or time.monotonic() > deadline:
            assert body["requests"] == requests
            return body
        time.sleep(0.05)


def test_dashboard_reads_the_shared_ledger(
    start_compression_proxy: StartProxy, redis_server: RedisServer, upstream: FakeUpstream
) -> None:
    saved = 0
    for run in range(2):  # two proxies' lifetimes (or two replicas), one Redis
        with start_compression_proxy(redis_url=redis_server.url) as stack:
            with stack.client("team-a") as sdk:
                raw = sdk.chat.completions.with_raw_response.create(
                    model="gpt-4o-mini",
                    messages=few_shot(60 + run),  # type: ignore[arg-type]
                )
            saved += int(raw.headers["x-linguagate-original-tokens"]) - int(
                raw.headers["x-linguagate-forwarded-tokens"]
            )
            body = _summary(stack, "team-a", run + 1)
            assert body["scope"] == "shared" and body["saved_tokens"] == saved
    with start_compression_proxy(redis_url=redis_server.url) as stack:
        with httpx.Client(base_url=stack.server.url) as client:
            client.post("/dashboard/login", data={"key": key_of("ops")})
            page = client.get("/dashboard").text
            assert "Shared ledger (Redis)" in page and "This process only" not in page
            assert ">team-a</a>" in page
            # Redis gone: an explicit "unavailable", never an empty dashboard of zeros.
            redis_server.stop()
            down = client.get("/dashboard")
            assert down.status_code == 503 and "Ledger unavailable" in down.text
            api = client.get("/dashboard/api/summary", params={"tenant": "team-a"})
            assert api.status_code == 503 and api.headers["retry-after"] == "5"
            assert api.json()["error"]["code"] == "ledger_unavailable"
