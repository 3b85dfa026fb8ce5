from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from proxy.compression.cache import MemoryCache, cache_key
from proxy.store.redis import CircuitBreaker, canonical_json, tenant_namespace


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


KNOBS = {"rate": 0.5, "segment_tokens": 128, "protect": {"number": True}}


def key(tenant: str = "research", text: str = "You are a helpful assistant.", **kw: object) -> str:
    args: dict[str, object] = {
        "policy_version": "p1",
        "component_kind": "instruction",
        "knobs": KNOBS,
        "model_id": "smollm2@abc",
        "algo_version": "1",
    }
    args.update(kw)
    return cache_key(tenant, text=text, **args)  # type: ignore[arg-type]


def test_key_shape_carries_digests_only() -> None:
    text = "secret prompt sk-live-123"
    k = key("research", text)
    assert re.fullmatch(r"lg:v1:[0-9a-f]{16}:cmp:[0-9a-f]{64}", k)
    assert "secret" not in k and "research" not in k
    assert k.startswith(tenant_namespace("research") + ":")


def test_key_is_deterministic_and_knob_order_free() -> None:
    reordered = {"segment_tokens": 128, "protect": {"number": True}, "rate": 0.5}
    assert key() == key() == key(knobs=reordered)


@pytest.mark.parametrize(
    "change",
    [
        {"tenant": "other"},
        {"text": "You are a helpful assistant!"},
        {"policy_version": "p2"},
        {"component_kind": "demonstration"},
        {"knobs": {**KNOBS, "rate": 0.4}},
        {"model_id": "smollm2@abd"},
        {"algo_version": "2"},
    ],
)
def test_every_input_changes_the_key(change: dict[str, object]) -> None:
    assert key(**change) != key()  # type: ignore[arg-type]


def test_tenants_get_different_namespaces() -> None:
    assert key("a").split(":cmp:")[0] != key("b").split(":cmp:")[0]
    assert key("a").split(":cmp:")[1] != key("b").split(":cmp:")[1]


def test_canonical_json_handles_dataclasses_and_rejects_nan() -> None:
    @dataclass(frozen=True)
    class Rules:
        number: bool
        regexes: tuple[str, ...]

    assert (
        canonical_json({"b": Rules(True, ("x",)), "a": 1})
        == '{"a":1,"b":{"number":true,"regexes":["x"]}}'
    )
    with pytest.raises(ValueError):
        canonical_json({"rate": float("nan")})


async def test_memory_cache_get_set_and_ttl() -> None:
    clock = Clock()
    cache = MemoryCache(ttl_s=10, clock=clock)
    assert await cache.get("k") is None
    await cache.set("k", "compressed ✓")
    assert await cache.get("k") == "compressed ✓"
    clock.now += 9.9
    assert await cache.get("k") == "compressed ✓"
    clock.now += 0.2
    assert await cache.get("k") is None
    assert len(cache) == 0 and cache.bytes == 0


async def test_memory_cache_evicts_least_recently_used_by_entries() -> None:
    cache = MemoryCache(max_entries=2)
    await cache.set("a", "1")
    await cache.set("b", "2")
    assert await cache.get("a") == "1"  # a is now most recent
    await cache.set("c", "3")
    assert await cache.get("b") is None
    assert await cache.get("a") == "1" and await cache.get("c") == "3"


async def test_memory_cache_bounds_bytes() -> None:
    cache = MemoryCache(max_bytes=30)
    await cache.set("k1", "x" * 10)  # 12 bytes
    await cache.set("k2", "é" * 5)  # 2 + 10 bytes
    assert cache.bytes == 24
    await cache.set("k3", "y" * 10)  # 36 > 30: k1 goes
    assert await cache.get("k1") is None
    assert cache.bytes == 24
    await cache.set("huge", "z" * 100)  # larger than the whole cache: not stored
    assert await cache.get("huge") is None and cache.bytes == 24
    await cache.set("k2", "short")  # overwrite adjusts the byte count
    assert cache.bytes == 12 + 7
    assert cache.status().ok and cache.status().backend == "memory"


async def test_memory_cache_many() -> None:
    cache = MemoryCache()
    await cache.set_many({"a": "1", "b": "2"})
    assert await cache.get_many(["a", "x", "b"]) == ["1", None, "2"]
    assert await cache.get_many([]) == []


def test_breaker_opens_backs_off_and_probes_once() -> None:
    clock = Clock()
    breaker = CircuitBreaker(backoff_s=5, clock=clock)
    assert breaker.allow()
    breaker.failure()
    assert breaker.is_open and not breaker.allow()
    clock.now += 5
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one probe at a time
    breaker.failure()
    assert not breaker.allow()
    clock.now += 5
    assert breaker.allow()
    breaker.success()
    assert not breaker.is_open and breaker.allow() and breaker.allow()
    assert breaker.failures == 2 and breaker.skipped == 3


def test_abandoned_probe_lets_the_next_caller_probe() -> None:
    clock = Clock()
    breaker = CircuitBreaker(backoff_s=1, clock=clock)
    breaker.failure()
    clock.now += 1
    assert breaker.allow()
    breaker.abandon()
    assert breaker.is_open and breaker.allow()
