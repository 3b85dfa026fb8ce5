"""Net money (issue 18): the ledger, `linguagate report`, the dashboard and `/metrics` agree.

A conversation is replayed through the real SDK against the cache-emulating fake upstream;
every view of the tenant's money must show the same billed input (cached tokens at the
cached price), the same estimate of sending the originals directly, and their difference.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import httpx
import pytest

from proxy.accounting.ledger import LedgerRow
from proxy.accounting.report import add_subcommand, load_prices
from tests.support.compression import CompressionStack, key_of
from tests.support.prometheus import sample
from tests.support.tiny_lm import sample_text
from tests.support.upstream import FakeUpstream

pytestmark = pytest.mark.integration
MODEL = "gpt-4o-mini"  # cached input at 50% of the input price


def _conversation(turns: int) -> list[list[dict[str, Any]]]:
    history: list[dict[str, Any]] = [{"role": "system", "content": sample_text(1000, 1)}]
    requests = []
    for turn in range(turns):
        history.append({"role": "user", "content": f"And {turn}?"})
        requests.append([dict(m) for m in history])
        history.append({"role": "assistant", "content": sample_text(200, 10 + turn)})
    return requests


def _row(stack: CompressionStack, tenant: str, requests: int) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while True:
        response = httpx.get(stack.server.base_url + "/linguagate/usage",
                             headers={"authorization": f"Bearer {key_of(tenant)}"})
        rows = response.json()["data"]
        if (rows and rows[0]["requests"] >= requests) or time.monotonic() > deadline:
            assert rows[0]["requests"] == requests
            return dict(rows[0])
        time.sleep(0.02)


def test_ledger_report_dashboard_and_metrics_agree_on_net_money(
    compression_stack: CompressionStack, upstream: FakeUpstream,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stack = compression_stack
    cached = 0
    with stack.client("team-a") as sdk:
        for request in _conversation(5):
            answer = sdk.chat.completions.create(model=MODEL, messages=request)  # type: ignore[arg-type]
            assert answer.usage is not None and answer.usage.prompt_tokens_details is not None
            cached += answer.usage.prompt_tokens_details.cached_tokens or 0
    row = _row(stack, "team-a", 5)
    # The ledger holds the upstream's own cached tokens, and billed = what the upstream said.
    assert row["upstream_cached_tokens"] == row["billed_cached_tokens"] == cached > 0
    assert row["billed_prompt_tokens"] == row["upstream_prompt_tokens"]
    assert row["direct_prompt_tokens"] > row["billed_prompt_tokens"]
    money = load_prices(None).net(LedgerRow(**row))
    assert money is not None and 0 < money.billed < money.direct

    # linguagate report --proxy: the same row, the same money.
    parser = argparse.ArgumentParser(prog="linguagate")
    add_subcommand(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", "--proxy", stack.server.url, "--key", key_of("team-a")])
    assert args.func(args) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("team-a"))
    assert line.split()[-3:] == [f"${money.billed:,.2f}", f"${money.direct:,.2f}",
                                 f"${money.saved:,.2f}"]

    # The dashboard's summary.
    summary = httpx.get(stack.server.url + "/dashboard/api/summary",
                        headers={"authorization": f"Bearer {key_of('team-a')}"}).json()
    assert summary["billed_dollars"] == pytest.approx(money.billed, abs=2e-6)
    assert summary["direct_dollars"] == pytest.approx(money.direct, abs=2e-6)
    assert summary["dollars_saved"] == pytest.approx(money.saved, abs=2e-6)
    assert summary["provider_cached_fraction"] == pytest.approx(
        row["billed_cached_tokens"] / row["billed_prompt_tokens"])

    # /metrics (an admin key): the same tokens and dollars per side.
    text = httpx.get(stack.server.url + "/metrics",
                     headers={"authorization": f"Bearer {key_of('ops')}"}).text
    for side, dollars in (("billed", money.billed), ("direct", money.direct)):
        assert sample(text, "linguagate_input_usd_total", tenant="team-a", model=MODEL,
                      side=side) == pytest.approx(dollars)
