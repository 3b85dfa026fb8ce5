"""Cache round trips per request: every one is latency, and on a Redis Cluster one command per
slot it touches. A request reads forms and the original prompt's provider-cache marks together,
then the forwarded prompt's marks, and writes everything in one pipeline."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import pytest
from starlette.datastructures import Headers

from proxy.compression.cache import MemoryCache, TtlGroup
from proxy.compression.service import CompressorService
from proxy.compression.step import CompressionStep
from proxy.policy.model import CompressionPolicy
from tests.support.compression import few_shot, step_tenant

# Nothing reaches the small LM: the forms are still frozen (as sent) and both prompts
# marked, so this counts the prefix machinery alone.
TENANT = step_tenant(CompressionPolicy(mode="enforce", rate=0.5, min_tokens=10**9))


class CountingCache(MemoryCache):
    def __init__(self) -> None:
        super().__init__(ttl_s=60)
        self.calls: list[str] = []

    async def get_many(self, keys: Sequence[str]) -> list[str | None]:
        self.calls.append(f"get {len(keys)}")
        return await super().get_many(keys)

    async def set_many(self, items: Mapping[str, str], ttl_s: float | None = None) -> None:
        self.calls.append(f"set {len(items)}")
        await super().set_many(items, ttl_s)

    async def set_groups(self, groups: Sequence[TtlGroup]) -> None:
        self.calls.append("set_groups " + ",".join(str(len(items)) for items, _ in groups))
        for items, ttl_s in groups:
            await MemoryCache.set_many(self, items, ttl_s)


async def test_a_request_makes_two_reads_and_one_write() -> None:
    cache = CountingCache()
    step = CompressionStep(CompressorService(lambda: None), cache)  # type: ignore[arg-type]
    messages = few_shot(3)
    body = {"model": "gpt-4o-mini", "messages": messages}
    n = len(messages)

    async def send() -> str:
        cache.calls.clear()
        outcome = await step(json.dumps(body).encode(), body, TENANT, Headers())
        return outcome.headers["x-linguagate-prefix"]

    assert await send() == f"0/{n}"
    # Short prompts are never marked (a provider caches 1,024+ tokens): forms only.
    assert cache.calls == [f"get {2 * n}", f"get {n}", f"set_groups {n},0,0"]
    assert await send() == f"{n}/{n}"  # warm: every message frozen, nothing written anew
    assert cache.calls == [f"get {2 * n}", f"get {n}", "set_groups 0,0,0"]


async def test_a_long_prompt_marks_both_sides_in_the_same_write() -> None:
    cache = CountingCache()
    step = CompressionStep(CompressorService(lambda: None), cache)  # type: ignore[arg-type]
    long_system = " ".join(f"Rule {i}: answer in plain words." for i in range(200))
    body = {"model": "gpt-4o-mini",
            "messages": [{"role": "system", "content": long_system},
                         {"role": "user", "content": "What is rule 7?"}]}
    outcome = await step(json.dumps(body).encode(), body, TENANT, Headers())
    assert outcome.headers["x-linguagate-prefix"] == "0/2"
    assert cache.calls == ["get 4", "get 2", "set_groups 2,2,2"]
    cache.calls.clear()
    await step(json.dumps(body).encode(), body, TENANT, Headers())
    # The provider would now serve the prefix from its cache; the marks' TTL is refreshed.
    assert cache.calls == ["get 4", "get 2", "set_groups 0,2,2"]


async def test_each_distinct_text_is_tokenized_once_per_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Counting is linear in the body; the original, per-message, fresh and forwarded counts
    # of one request share a memo.
    from proxy.compression import conversation, messages
    from proxy.core.tokens import count_tokens

    counted: list[str] = []

    def counting(text: str, model: str | None = None) -> int:
        counted.append(text)
        return count_tokens(text, model)

    monkeypatch.setattr(messages, "count_tokens", counting)
    monkeypatch.setattr(conversation, "count_tokens", counting)
    step = CompressionStep(CompressorService(lambda: None), CountingCache())  # type: ignore[arg-type]
    body = {"model": "gpt-4o-mini", "messages": few_shot(3)}
    await step(json.dumps(body).encode(), body, TENANT, Headers())
    assert counted and len(counted) == len(set(counted))
