from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest

from proxy.accounting.cost import CacheEstimate
from proxy.accounting.ledger import RedisLedger, UsageRecord
from proxy.accounting.report import add_subcommand
from tests.support.redis import free_port

pytestmark = pytest.mark.integration


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="linguagate")
    add_subcommand(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


async def _fill(url: str) -> None:
    ledger = RedisLedger.from_url(url)
    old = datetime.now(UTC) - timedelta(days=3)
    # Estimated prompts: 1,000 tokens direct, 400 forwarded, none of either cached.
    estimate = CacheEstimate(direct_prompt=1000, direct_cached=0, sent_prompt=400, sent_cached=0)
    for _ in range(3):
        await ledger.record(UsageRecord("research", "gpt-4o", "applied", 1000, 400,
                                        upstream_prompt_tokens=400, upstream_cached_tokens=0,
                                        cache_estimate=estimate))
    await ledger.record(UsageRecord("research", "gpt-4o", "applied", 1000, 400, at=old))
    await ledger.record(
        UsageRecord("sales", "gpt-4o-mini", "skipped", 100, 100, skip_reason="below_min_tokens")
    )
    await ledger.close()


async def test_report_prints_the_ledger(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    await _fill(redis_url)
    # run() drives its own event loop, as the CLI does: give it a thread.
    assert await asyncio.to_thread(run, ["report", "--redis-url", redis_url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:6] == ["tenant", "model", "requests", "original", "forwarded", "saved"]
    # Net money: 3 requests billed 400 uncached tokens each, against 1,000 sent directly
    # (the fourth was recorded without estimates: it counts tokens, not money).
    assert lines[2].split() == [
        "research", "gpt-4o", "4", "4,000", "1,600", "2,400", "60.0%", "0.0%",
        "$0.00", "$0.01", "$0.00",
    ]
    assert lines[3].split() == ["sales", "gpt-4o-mini", "1", "100", "100", "0", "0.0%", "-",
                                "-", "-", "-"]
    assert lines[4].split()[:2] == ["TOTAL", "5"]

    assert (
        await asyncio.to_thread(
            run,
            [
                "report",
                "--redis-url",
                redis_url,
                "--since",
                "24h",
                "--tenant",
                "research",
                "--json",
            ],
        )
        == 0
    )
    [row] = json.loads(capsys.readouterr().out)
    assert (row["tenant"], row["requests"], row["saved_tokens"]) == ("research", 3, 1800)

    assert (
        await asyncio.to_thread(run, ["report", "--redis-url", redis_url, "--tenant", "nobody"])
        == 0
    )
    assert capsys.readouterr().out.strip() == "no usage recorded"


def test_report_errors(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("LINGUAGATE_REDIS_URL", raising=False)
    assert run(["report"]) == 2
    assert "--redis-url" in capsys.readouterr().err
    down = f"redis://127.0.0.1:{free_port()}/0"
    assert run(["report", "--redis-url", down]) == 1
    assert "unreachable" in capsys.readouterr().err
    assert run(["report", "--redis-url", down, "--since", "someday"]) == 2
    assert "--since" in capsys.readouterr().err
