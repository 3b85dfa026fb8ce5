"""Compression with a real redis-server as cache and ledger: hits, tenant isolation, outages."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest
import redis

from proxy.store.redis import tenant_namespace
from tests.support.compression import (
    CompressionStack,
    ScriptedEngine,
    few_shot,
    key_of,
    open_compression_stack,
)
from tests.support.redis import BlackHole, RedisServer
from tests.support.upstream import FakeUpstream

pytestmark = pytest.mark.integration

MODEL = "gpt-4o-mini"
StartProxy = Callable[..., AbstractContextManager[CompressionStack]]


def chat(stack: CompressionStack, tenant: str, messages: list[dict[str, Any]]) -> dict[str, str]:
    with stack.client(tenant) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
        raw.parse()
    return dict(raw.headers)


def redis_keys(server: RedisServer, pattern: str) -> list[str]:
    raw = redis.Redis.from_url(server.url)
    try:
        return [k.decode() if isinstance(k, bytes) else str(k) for k in raw.keys(pattern)]
    finally:
        raw.close()


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def redis_stack(
    module_redis: RedisServer,
    fake_upstream: FakeUpstream,
    tiny_compressor: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[CompressionStack]:

    with open_compression_stack(
        fake_upstream,
        tmp_path_factory.mktemp("rpolicies"),
        ScriptedEngine(tiny_compressor),
        redis_url=module_redis.url,
    ) as stack:
        yield stack


def test_cache_hit_through_redis(
    redis_stack: CompressionStack, module_redis: RedisServer, upstream: FakeUpstream
) -> None:
    messages = few_shot(20)
    first = chat(redis_stack, "team-a", messages)
    body1 = upstream.last().body
    second = chat(redis_stack, "team-a", messages)
    assert (first["x-linguagate-cache"], second["x-linguagate-cache"]) == ("miss", "hit")
    assert second["x-linguagate-compression"] == "applied"
    assert upstream.last().body == body1
    keys = redis_keys(module_redis, tenant_namespace("team-a") + ":cmp:*")
    assert len(keys) == 1
    raw = redis.Redis.from_url(module_redis.url)
    try:
        assert int(raw.ttl(keys[0])) > 0
    finally:
        raw.close()


def test_tenants_get_separate_namespaces(
    redis_stack: CompressionStack, module_redis: RedisServer, upstream: FakeUpstream
) -> None:
    marker = "Zanzibarquux"
    messages = few_shot(21)
    messages[1]["content"] = f"{marker} " + messages[1]["content"]
    a = chat(redis_stack, "team-a", messages)
    b = chat(redis_stack, "team-b", messages)
    assert (a["x-linguagate-cache"], b["x-linguagate-cache"]) == ("miss", "miss")
    keys = redis_keys(module_redis, "*")
    ns_a, ns_b = tenant_namespace("team-a"), tenant_namespace("team-b")
    assert ns_a != ns_b
    cmp_a = {k for k in keys if k.startswith(ns_a + ":cmp:")}
    cmp_b = {k for k in keys if k.startswith(ns_b + ":cmp:")}
    assert cmp_a and cmp_b
    assert not {k.split(":")[-1] for k in cmp_a} & {k.split(":")[-1] for k in cmp_b}
    for key in keys:  # digests only: no prompt text, tenant name or API key in a key name
        assert re.fullmatch(
            r"lg:v1:([0-9a-f]{16}:cmp:[0-9a-f]{64}|[0-9a-f]{16}:pfx:\{[0-9a-f]{16}\}:[0-9a-f]{64}"
            r"|[0-9a-f]{16}:pc:\w+:\{[0-9a-f]{16}\}:[0-9a-f]{32}"
            r"|\{[0-9a-f]{16}\}:ledger:.*)|lg:v1:ledger:\w+",
            key,
        ), key
        for secret in (marker, "team-a", "team-b", key_of("team-a")):
            assert secret not in key


def test_redis_killed_mid_test(
    start_compression_proxy: StartProxy, redis_server: RedisServer, upstream: FakeUpstream
) -> None:
    with start_compression_proxy(redis_url=redis_server.url) as stack:
        messages = few_shot(22)
        assert chat(stack, "team-a", messages)["x-linguagate-cache"] == "miss"
        assert chat(stack, "team-a", messages)["x-linguagate-cache"] == "hit"
        redis_server.stop()
        for seed in (22, 23, 23):
            headers = chat(stack, "team-a", few_shot(seed))
            assert headers["x-linguagate-compression"] == "applied"
            assert headers["x-linguagate-cache"] == "miss"  # no cache, no failure
        ready = httpx.get(stack.server.url + "/readyz").json()
        assert ready["redis"]["status"] == "down"
        metrics = httpx.get(
            stack.server.url + "/metrics", headers={"authorization": f"Bearer {key_of('ops')}"}
        ).text
        assert 'linguagate_redis_up{component="cache"} 0.0' in metrics
        # Usage needs the ledger: an honest 503, not zeros.
        usage = httpx.get(
            stack.server.base_url + "/linguagate/usage",
            headers={"authorization": f"Bearer {key_of('team-a')}"},
        )
        assert usage.status_code == 503
        assert usage.json()["error"]["code"] == "ledger_unavailable"

        # Back up (same port, empty): after the breaker's back-off the cache works again.
        redis_server.start()
        deadline = time.monotonic() + 15
        while True:
            headers = chat(stack, "team-a", few_shot(23))
            if headers["x-linguagate-cache"] == "hit" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert headers["x-linguagate-cache"] == "hit"


def test_black_hole_redis(
    start_compression_proxy: StartProxy, black_hole: BlackHole, upstream: FakeUpstream
) -> None:
    with start_compression_proxy(redis_url=black_hole.url) as stack:
        for seed in (24, 24):
            headers = chat(stack, "team-a", few_shot(seed))  # client timeout: 20 s
            assert headers["x-linguagate-compression"] == "applied"
            assert headers["x-linguagate-cache"] == "miss"
        assert json.loads(upstream.last().body)["messages"][-1] == few_shot(24)[-1]


def test_ledger_survives_a_proxy_restart(
    start_compression_proxy: StartProxy, redis_server: RedisServer, upstream: FakeUpstream
) -> None:
    saved = 0
    for _run in range(2):  # two proxy processes' lifetimes, one Redis
        with start_compression_proxy(redis_url=redis_server.url) as stack:
            headers = chat(stack, "ledger", few_shot(25))
            saved += int(headers["x-linguagate-original-tokens"])
            saved -= int(headers["x-linguagate-forwarded-tokens"])
    with start_compression_proxy(redis_url=redis_server.url) as stack:
        response = httpx.get(
            stack.server.base_url + "/linguagate/usage",
            headers={"authorization": f"Bearer {key_of('ledger')}"},
        )
    payload = response.json()
    assert payload["scope"] == "shared"
    [row] = payload["data"]
    assert (row["requests"], row["saved_tokens"]) == (2, saved)
    assert (row["cache_misses"], row["cache_hits"]) == (1, 1)  # the cache survived too
