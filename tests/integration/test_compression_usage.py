"""The savings ledger and metrics as a tenant and an operator see them, after real requests."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.support.compression import CompressionStack, few_shot, key_of
from tests.support.prometheus import sample
from tests.support.upstream import FakeUpstream, chat_chunk, sse_reply

pytestmark = pytest.mark.integration

MODEL = "gpt-4o-mini"


def usage(stack: CompressionStack, tenant: str, query: str = "") -> httpx.Response:
    return httpx.get(
        stack.server.base_url + "/linguagate/usage" + query,
        headers={"authorization": f"Bearer {key_of(tenant)}"},
    )


def ledger_row(stack: CompressionStack, tenant: str, requests: int) -> dict[str, Any]:
    """The tenant's row once ``requests`` requests are recorded (the relay records after the
    answer is sent, so the last one may land a moment after the client has it)."""
    deadline = time.monotonic() + 5
    while True:
        response = usage(stack, tenant)
        assert response.status_code == 200
        rows = response.json()["data"]
        if (rows and rows[0]["requests"] >= requests) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert [r["tenant"] for r in rows] == [tenant]
    row: dict[str, Any] = rows[0]
    assert row["requests"] == requests
    return row


def test_ledger_matches_headers(
    compression_stack: CompressionStack, upstream: FakeUpstream
) -> None:
    stack = compression_stack
    usage_chunk = chat_chunk(
        {},
        with_usage=True,
        choices=False,
        usage={"prompt_tokens": 1234, "completion_tokens": 5, "total_tokens": 1239},
    )
    upstream.enqueue(
        "/v1/chat/completions",
        sse_reply(
            [
                chat_chunk({"content": "ok"}),
                chat_chunk({}, finish="stop"),
                usage_chunk,
                b"data: [DONE]\n\n",
            ]
        ),
    )
    sums = {"original": 0, "forwarded": 0}
    outcomes: list[str] = []
    upstream_prompt = 0
    with stack.client("ledger") as sdk:
        for messages in (
            few_shot(30),
            few_shot(30),
            few_shot(31),
            [{"role": "user", "content": "short"}],
        ):
            stream = not outcomes  # the first one streams
            raw = sdk.chat.completions.with_raw_response.create(  # type: ignore[call-overload]
                model=MODEL,
                messages=messages,
                stream=stream,
                **({"stream_options": {"include_usage": True}} if stream else {}),
            )
            parsed = raw.parse()
            if stream:
                assert [c.usage.prompt_tokens for c in parsed if c.usage] == [1234]
                upstream_prompt += 1234
            else:  # the fake upstream counts the forwarded prompt as the provider would
                upstream_prompt += parsed.usage.prompt_tokens
            sums["original"] += int(raw.headers["x-linguagate-original-tokens"])
            sums["forwarded"] += int(raw.headers["x-linguagate-forwarded-tokens"])
            outcomes.append(raw.headers["x-linguagate-compression"])
    assert outcomes == ["applied", "applied", "applied", "skipped: below_min_tokens"]
    row = ledger_row(stack, "ledger", 4)
    assert row["original_tokens"] == sums["original"]
    assert row["forwarded_tokens"] == sums["forwarded"]
    assert row["saved_tokens"] == sums["original"] - sums["forwarded"] > 0
    assert row["compressed_requests"] == 3
    assert row["skips"] == {"below_min_tokens": 1}
    assert (row["cache_hits"], row["cache_misses"]) == (1, 2)
    # The first request streamed (its usage from the include_usage chunk), the others did not.
    assert row["upstream_usage_requests"] == 4
    assert row["upstream_prompt_tokens"] == upstream_prompt

    # Metrics: the operator's view of the same figures.
    assert metrics(stack, "ledger").status_code == 403
    response = metrics(stack, "ops")
    assert response.status_code == 200
    saved = sample(response.text, "linguagate_saved_tokens_total", tenant="ledger", model=MODEL)
    assert saved == sums["original"] - sums["forwarded"]
    assert "linguagate_compression_rate_bucket" in response.text
    # The engine that compressed them: loaded, idle now, its queue bound visible.
    assert sample(response.text, "linguagate_compressor_up", model="default") == 1.0
    assert sample(response.text, "linguagate_compressor_pending", model="default") == 0.0
    assert sample(response.text, "linguagate_compressor_pending_limit", model="default") >= 1


def metrics(stack: CompressionStack, tenant: str) -> httpx.Response:
    return httpx.get(
        stack.server.url + "/metrics", headers={"authorization": f"Bearer {key_of(tenant)}"}
    )




def test_usage_is_per_tenant(compression_stack: CompressionStack, upstream: FakeUpstream) -> None:
    stack = compression_stack
    with stack.client("team-b") as sdk:
        sdk.chat.completions.create(model=MODEL, messages=few_shot(33))  # type: ignore[arg-type]
    ledger_row(stack, "team-b", 1)
    forbidden = usage(stack, "team-a", "?tenant=team-b")
    assert forbidden.status_code == 403
    assert forbidden.json()["error"]["type"]
    own = usage(stack, "team-a").json()
    assert own["tenant"] == "team-a" and all(r["tenant"] == "team-a" for r in own["data"])
    admin = usage(stack, "ops").json()
    assert "team-b" in {r["tenant"] for r in admin["data"]}
    scoped = usage(stack, "ops", "?tenant=team-b").json()
    assert [r["tenant"] for r in scoped["data"]] == ["team-b"]
    assert scoped["data"][0]["requests"] == 1
