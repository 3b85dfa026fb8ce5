from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from proxy.compression.cache import RedisCache, cache_key
from proxy.store.redis import RedisSettings
from tests.support.redis import BlackHole, RedisServer

pytestmark = pytest.mark.integration

FAST = RedisSettings(socket_timeout_s=0.1, connect_timeout_s=0.1, backoff_s=0.2, ttl_s=60)


def key_for(tenant: str, text: str) -> str:
    return cache_key(tenant, "p1", "instruction", text, {"rate": 0.5}, "m@1", "1")


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_set_get_and_ttl(redis_url: str, raw: aioredis.Redis) -> None:
    cache = RedisCache.from_url(redis_url, FAST)
    k = key_for("research", "You are terse.")
    assert await cache.get(k) is None
    await cache.set(k, "terse ✓")
    assert await cache.get(k) == "terse ✓"
    assert 0 < await raw.ttl(k) <= 60
    assert cache.status().ok and cache.status().errors == 0
    assert await cache.ping()
    await cache.close()


async def test_get_many_set_many(redis_url: str, raw: aioredis.Redis) -> None:
    cache = RedisCache.from_url(redis_url, FAST)
    keys = [key_for("t", f"component {i}") for i in range(3)]
    await cache.set_many({keys[0]: "zero", keys[2]: "two ✓"})
    assert await cache.get_many(keys) == ["zero", None, "two ✓"]
    assert await cache.get_many([]) == []
    assert 0 < await raw.ttl(keys[2]) <= 60
    await raw.set(keys[1], b"\xff\xfe")  # not UTF-8: a miss, not an exception
    assert await cache.get(keys[1]) is None
    await cache.close()


async def test_set_groups_writes_each_group_with_its_ttl(
    redis_url: str, raw: aioredis.Redis
) -> None:
    cache = RedisCache.from_url(redis_url, FAST)
    assert await cache.ping()  # the connection's hand-shake out of the count below

    async def commands() -> int:
        return int((await raw.info("stats"))["total_commands_processed"])

    before = await commands()
    await cache.set_groups([({"g:a": "1", "g:b": "2"}, None), ({}, 5.0), ({"g:c": "3"}, 3600.0)])
    await cache.set_groups([({}, None)])  # nothing to write: nothing sent
    assert await commands() - before == 3 + 1  # the three SETs, and the first INFO
    assert await cache.get_many(["g:a", "g:b", "g:c"]) == ["1", "2", "3"]
    assert 0 < await raw.ttl("g:a") <= 60 and 60 < await raw.ttl("g:c") <= 3600
    await cache.close()


async def test_saturated_pool_is_a_miss_not_an_outage(redis_url: str) -> None:
    settings = RedisSettings(
        socket_timeout_s=2.0, connect_timeout_s=1.0, pool_timeout_s=0.05, max_connections=1
    )
    cache = RedisCache.from_url(redis_url, settings)
    await cache.set("k", "v")
    client = cache._redis.client
    # Hold the only connection for a while (BLPOP on an empty list waits 0.5 s).
    holder = asyncio.ensure_future(client.blpop(["empty-list"], timeout=0.5))
    await asyncio.sleep(0.05)
    assert await cache.get("k") is None
    assert cache._redis.busy == 1 and cache.status().ok and cache.status().errors == 0
    await holder
    assert await cache.get("k") == "v"
    await cache.close()


async def test_tenants_never_share_entries(redis_url: str, raw: aioredis.Redis) -> None:
    cache = RedisCache.from_url(redis_url, FAST)
    text = "Shared few-shot block with a secret: sk-abc"
    await cache.set(key_for("team-a", text), "compressed for A")
    assert await cache.get(key_for("team-b", text)) is None
    await cache.set(key_for("team-b", text), "compressed for B")
    assert await cache.get(key_for("team-a", text)) == "compressed for A"
    keys = sorted(k.decode() if isinstance(k, bytes) else k for k in await raw.keys("*"))
    assert len(keys) == 2
    for k in keys:
        assert re.fullmatch(r"lg:v1:[0-9a-f]{16}:cmp:[0-9a-f]{64}", k)
    await cache.close()


async def test_redis_killed_mid_test_degrades_to_misses(redis_server: RedisServer) -> None:
    cache = RedisCache.from_url(redis_server.url, FAST)
    k = key_for("research", "text")
    await cache.set(k, "v")
    assert await cache.get(k) == "v"

    redis_server.stop()
    assert await cache.get(k) is None  # fails once, opens the breaker
    assert not cache.status().ok
    errors = cache.status().errors
    assert errors >= 1
    for _ in range(50):  # breaker open: no I/O, no errors, no raise
        assert await cache.get(k) is None
        await cache.set(k, "dropped")
    assert cache.status().errors == errors
    assert cache.breaker.skipped >= 100

    redis_server.start()  # same port, empty (no persistence)
    await asyncio.sleep(FAST.backoff_s + 0.05)
    assert await cache.get(k) is None  # the probe succeeds: a real miss
    assert cache.status().ok
    await cache.set(k, "again")
    assert await cache.get(k) == "again"
    await cache.close()


async def test_black_hole_returns_within_timeout(black_hole: BlackHole) -> None:
    cache = RedisCache.from_url(black_hole.url, FAST)
    # wait_for is the hang detector only; the cache's own deadline is far shorter.
    assert await asyncio.wait_for(cache.get("lg:v1:x:cmp:y"), 5) is None
    assert not cache.status().ok
    await asyncio.wait_for(cache.set("lg:v1:x:cmp:y", "v"), 5)
    assert not await asyncio.wait_for(cache.ping(), 5)
    await asyncio.wait_for(cache.close(), 5)


async def test_unreachable_port_never_raises() -> None:
    from tests.support.redis import free_port

    cache = RedisCache.from_url(f"redis://127.0.0.1:{free_port()}/0", FAST)
    assert await cache.get("k") is None
    await cache.set("k", "v")
    assert cache.status().errors == 1 and "degraded" in cache.status().detail
    await cache.close()
