"""Redis memory per 1M cached units, and per ledger month, measured on real servers.

    .venv/bin/python -m bench.redis_memory [--entries 50000]

Writes ``--entries`` compression-cache entries (real ``cache_key`` names, real
``UnitResult`` values, through ``RedisCache.set_many`` with the default 7-day TTL) of three
sizes into an empty ``redis-server``, and into an empty 3-primary Redis Cluster, and reads
``used_memory`` (summed over the primaries) before and after: bytes per entry, scaled to 1M.
Then one tenant's ledger for one model over a 30-day retention (720 hourly hashes + the
total) through ``RedisLedger``. Prints a Markdown table. No model is loaded.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_SIZES = {"short (~100 tokens)": 400, "medium (~400 tokens)": 1600, "long (~1,600 tokens)": 6400}
_BATCH = 500


def _text(chars: int, seed: int) -> str:
    from tests.support.tiny_lm import sample_text

    text = sample_text(chars // 5 + 8, seed)
    return text[:chars]


def _used(nodes: list[Any]) -> int:
    total = 0
    for node in nodes:
        with node.client() as c:
            total += int(c.info("memory")["used_memory"])
    return total


async def _fill(url: str, entries: int, chars: int, tag: str) -> None:
    from proxy.compression.cache import RedisCache, cache_key
    from proxy.compression.step import UnitResult
    from proxy.store.redis import RedisSettings

    cache = RedisCache.from_url(url, RedisSettings(socket_timeout_s=5, connect_timeout_s=5))
    base = _text(chars, 7)
    for start in range(0, entries, _BATCH):
        items = {}
        for i in range(start, min(entries, start + _BATCH)):
            key = cache_key(f"tenant-{i % 50}", "v1", "context", f"{tag}{i}", {"rate": 0.5},
                            "SmolLM2-135M-Instruct@bench", "itpc-1")
            # Distinct values (a shared string would be one allocation in Python, not Redis).
            items[key] = UnitResult((f"{i} {base}"[:chars],)).dumps()
        await cache.set_many(items)
    assert cache.status().ok, cache.status()
    await cache.close()


async def _ledger(url: str, hours: int) -> None:
    from proxy.accounting.ledger import RedisLedger, UsageRecord
    from proxy.store.redis import RedisSettings

    ledger = RedisLedger.from_url(url, RedisSettings(socket_timeout_s=5, connect_timeout_s=5))
    now = datetime.now(UTC)
    for h in range(hours):
        await ledger.record(UsageRecord(
            "tenant-ledger", "gpt-4o-mini", "applied", 1200, 600, compression_ms=40.0,
            cache_hits=1, upstream_prompt_tokens=610, upstream_completion_tokens=90,
            at=now - timedelta(hours=h)))
    assert await ledger.flush()
    await ledger.close()


def _measure(name: str, url: str, nodes: list[Any], entries: int) -> list[str]:
    rows = []
    for label, chars in _SIZES.items():
        before = _used(nodes)
        asyncio.run(_fill(url, entries, chars, label))
        per_entry = (_used(nodes) - before) / entries
        rows.append(f"| {name} | cache unit, {label} | {chars} | {per_entry:,.0f} "
                    f"| {per_entry * 1e6 / 2**30:,.2f} GiB |")
    before = _used(nodes)
    asyncio.run(_ledger(url, 720))
    month = _used(nodes) - before
    rows.append(f"| {name} | ledger: 1 tenant x 1 model, 30 days of hours | - | {month:,} "
                f"| (per tenant-model) |")
    return rows


def main() -> int:
    from tests.support.redis import RedisServer
    from tests.support.redis_topologies import Node, start_cluster

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=50_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lg-redis-memory-"))
    single = RedisServer(work)
    single.start()
    cluster = start_cluster(work / "cluster")
    try:
        single_node = Node(single.port, work, [])
        primaries = [n for n in cluster.nodes
                     if cluster.roles().get(n.address) == "master"]
        rows = _measure("single", single.url, [single_node], args.entries)
        rows += _measure("cluster (3 primaries)", cluster.url, primaries, args.entries)
    finally:
        cluster.stop()
        single.stop()
    print(f"Redis memory, {args.entries:,} entries per size (used_memory delta; key + value + "
          "TTL + allocator overhead; replicas hold a second copy)\n")
    print("| Redis | what | value chars | bytes per entry | per 1M entries |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
