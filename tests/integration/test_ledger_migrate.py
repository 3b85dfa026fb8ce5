"""``linguagate ledger-migrate`` against real redis-servers: ledger keys written under the names
used before the tenant hash tag (spelled out here as the old ``RedisLedger._write`` wrote them)
are merged into today's names, once, whatever is already stored there (issue 15)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from proxy.accounting.cost import CacheEstimate
from proxy.accounting.ledger import LedgerRow, MemoryLedger, RedisLedger, UsageRecord
from proxy.cli.commands import main
from proxy.cli.ledger_migrate import LedgerMigration, new_names
from proxy.store.redis import connect_redis
from tests.support.redis_topologies import start_cluster, start_sentinel

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(minute=30, second=0, microsecond=0)
DAY_S = 86400
OLD_TTL_S = 30 * DAY_S + 3600  # what the old writer set on hourly keys
OLD_FORM = "lg:v1:" + "[0-9a-f]" * 16 + ":ledger:*"


def old_t16(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:16]


def write_old(client: Any, records: Iterable[UsageRecord], *, ttl_s: int = OLD_TTL_S) -> None:
    """What ``RedisLedger._write`` did before commit 464f56c, key names and all."""
    totals: dict[tuple[str, str], dict[str, float]] = {}
    hourly: dict[tuple[str, str, datetime], dict[str, float]] = {}
    for rec in records:
        for bucket in (totals.setdefault((rec.tenant, rec.model), {}),
                       hourly.setdefault((rec.tenant, rec.model, rec.hour()), {})):
            for name, value in rec.counters().items():
                bucket[name] = bucket.get(name, 0) + value
    pipe = client.pipeline(transaction=False)
    for tenant, model in totals:
        pipe.sadd("lg:v1:ledger:tenants", tenant)
        pipe.sadd(f"lg:v1:{old_t16(tenant)}:ledger:models", model)
    writes = [(f"lg:v1:{old_t16(t)}:ledger:m:{old_t16(m)}:total", t, m, inc)
              for (t, m), inc in totals.items()]
    writes += [(f"lg:v1:{old_t16(t)}:ledger:m:{old_t16(m)}:h:{hour:%Y%m%d%H}", t, m, inc)
               for (t, m, hour), inc in hourly.items()]
    for key, tenant, model, inc in writes:
        pipe.hset(key, "_tenant", tenant)
        pipe.hset(key, "_model", model)
        for name, value in inc.items():
            if name == "compression_ms":
                pipe.hincrbyfloat(key, name, float(value))
            else:
                pipe.hincrby(key, name, int(value))
        if ":h:" in key:
            pipe.expire(key, ttl_s)
    pipe.execute()


def usage(tenant: str, model: str, n: int, at: datetime, **extra: Any) -> UsageRecord:
    estimate = CacheEstimate(direct_prompt=1000 + n, direct_cached=0, sent_prompt=400,
                             sent_cached=0)
    return UsageRecord(tenant, model, "applied", 1000 + n, 400, compression_ms=12.5 + n,
                       upstream_prompt_tokens=400, upstream_cached_tokens=0,
                       cache_estimate=estimate, at=at, **extra)


async def expected(records: Sequence[UsageRecord], since: datetime | None) -> list[LedgerRow]:
    memory = MemoryLedger()
    for rec in records:
        await memory.record(rec)
    return await memory.totals(since=since)


async def record_new(url: str, records: Sequence[UsageRecord]) -> None:
    ledger = RedisLedger.from_url(url)
    for rec in records:
        await ledger.record(rec)
    await ledger.close()


async def read(url: str, since: datetime | None = None) -> list[LedgerRow]:
    ledger = RedisLedger.from_url(url)
    try:
        return await ledger.totals(since=since)
    finally:
        await ledger.close()


def migrate(url: str, capsys: pytest.CaptureFixture[str], *extra: str
            ) -> tuple[int, dict[str, int]]:
    """Run the command in-process: its exit status and its TOTAL row."""
    status = main(["ledger-migrate", "--redis-url", url, *extra])
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    total = next(line.split() for line in lines if line.startswith("TOTAL"))
    return status, {name: int(v.replace(",", "")) for name, v in zip(header[1:], total[1:],
                                                                       strict=True)}


def new_name(old: str) -> str:
    names = new_names(old)
    assert names is not None
    return names[1]


def old_keys(client: Any) -> set[str]:
    return {k.decode() for k in client.scan_iter(match=OLD_FORM, count=1000)}


def report_json(url: str, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    assert main(["report", "--redis-url", url, "--json"]) == 0
    return list(json.loads(capsys.readouterr().out))


def test_migrate_merges_old_keys_into_new_ones_once(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client = redis.Redis.from_url(redis_url)
    old_now = [usage("research", "gpt-4o", i, NOW) for i in range(3)]
    old_3h = [usage("research", "gpt-4o", 7, NOW - timedelta(hours=3))]
    old_3d = [usage("research", "gpt-4o-mini", 2, NOW - timedelta(days=3)),
              usage("sales", "gpt-4o-mini", 5, NOW - timedelta(days=3),
                    skip_reason="below_min_tokens")]
    write_old(client, old_now, ttl_s=40 * DAY_S)  # longer than the new writer's TTL
    write_old(client, old_3h, ttl_s=5 * DAY_S)  # shorter
    write_old(client, old_3d, ttl_s=10 * DAY_S)  # no new key in that hour
    # Written after the upgrade, under the new names: merged with, never overwritten.
    new = [usage("research", "gpt-4o", 11, NOW), usage("research", "gpt-4o", 13,
                                                       NOW - timedelta(hours=3))]
    asyncio.run(record_new(redis_url, new))
    every = [*old_now, *old_3h, *old_3d, *new]
    before = old_keys(client)
    assert len(before) == 2 + 3 + 4  # models sets, totals, hourly hashes

    status, total = migrate(redis_url, capsys, "--dry-run")
    assert (status, total) == (0, {"found": 9, "already": 0})
    assert old_keys(client) == before and not list(client.scan_iter(match="*:migrated:*"))

    status, total = migrate(redis_url, capsys)
    assert (status, total) == (0, {"found": 9, "migrated": 9, "already": 0, "left": 0, "gone": 0})
    assert old_keys(client) == set()
    since = NOW - timedelta(hours=24)
    assert asyncio.run(read(redis_url)) == asyncio.run(expected(every, None))
    assert asyncio.run(read(redis_url, since)) == asyncio.run(expected(every, since))
    research = [r for r in report_json(redis_url, capsys) if r["tenant"] == "research"]
    assert [(r["model"], r["requests"], r["original_tokens"]) for r in research] == [
        ("gpt-4o", 6, 6000 + 0 + 1 + 2 + 7 + 11 + 13), ("gpt-4o-mini", 1, 1002)]

    def ttl_days(tenant: str, model: str, at: datetime) -> float:
        key = f"lg:v1:{{{old_t16(tenant)}}}:ledger:m:{old_t16(model)}:h:{at:%Y%m%d%H}"
        return float(client.pttl(key)) / 1000 / DAY_S

    assert 39.9 < ttl_days("research", "gpt-4o", NOW) <= 40  # the old key's, the larger
    assert 30 < ttl_days("research", "gpt-4o", NOW - timedelta(hours=3)) <= 30.05  # the new's
    assert 9.9 < ttl_days("sales", "gpt-4o-mini", NOW - timedelta(days=3)) <= 10
    assert client.ttl(f"lg:v1:{{{old_t16('sales')}}}:ledger:models") == -1
    for old in before:
        names = new_names(old)
        assert names is not None and 6 * DAY_S < client.ttl(names[2]) <= 7 * DAY_S

    status, total = migrate(redis_url, capsys)  # twice: nothing left to do
    assert (status, total["found"], total["migrated"]) == (0, 0, 0)
    assert asyncio.run(read(redis_url)) == asyncio.run(expected(every, None))


def test_the_summary_names_digests_only(redis_url: str, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    write_old(redis.Redis.from_url(redis_url), [usage("acme-secret-team", "gpt-4o", 1, NOW)])
    assert main(["ledger-migrate", "--redis-url", redis_url]) == 0
    out = capsys.readouterr().out
    assert "acme" not in out and "gpt" not in out
    assert out.splitlines()[1].split() == [old_t16("acme-secret-team"), "3", "3", "0", "0", "0"]


async def merge_only(url: str, keys: Iterable[str]) -> None:
    """The script step without the DEL: what a run killed between the two leaves behind."""
    client = connect_redis(url)
    try:
        migration = LedgerMigration(client)
        for old in keys:
            assert await migration.merge(old) == "migrated"
    finally:
        await client.aclose()


def test_a_run_interrupted_before_the_del_counts_nothing_twice(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client = redis.Redis.from_url(redis_url)
    old = [usage(t, m, i, NOW - timedelta(hours=i)) for i, (t, m) in enumerate(
        [("research", "gpt-4o"), ("research", "gpt-4o-mini"), ("sales", "gpt-4o")] * 2)]
    write_old(client, old)
    client.delete("lg:v1:ledger:tenants")  # the tenant names come back from the hashes
    keys = sorted(old_keys(client))
    asyncio.run(merge_only(redis_url, keys[:5]))
    assert old_keys(client) == set(keys)  # merged, not deleted: each counts once from here

    status, total = migrate(redis_url, capsys, "--dry-run")
    assert (status, total) == (0, {"found": len(keys), "already": 5})
    status, total = migrate(redis_url, capsys)
    assert (status, total["migrated"], total["already"]) == (0, len(keys) - 5, 5)
    assert asyncio.run(read(redis_url)) == asyncio.run(expected(old, None))
    since = NOW - timedelta(hours=24)
    assert asyncio.run(read(redis_url, since)) == asyncio.run(expected(old, since))


@pytest.mark.parametrize("value", ["not a number", "007", " 5", "0x10"])
def test_a_key_that_cannot_be_merged_is_left_in_place(
    redis_url: str, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    # Values Lua's tonumber takes but HINCRBY refuses too: a script error half-way would
    # keep the fields already added without the marker, and a rerun would add them again.
    client = redis.Redis.from_url(redis_url)
    write_old(client, [usage("research", "gpt-4o", 1, NOW)])
    bad = f"lg:v1:{old_t16('research')}:ledger:m:{old_t16('gpt-4o')}:total"
    client.hset(bad, "requests", value)
    status, total = migrate(redis_url, capsys)
    assert (status, total["migrated"], total["left"]) == (1, 2, 1)
    names = new_names(bad)
    assert names is not None
    assert old_keys(client) == {bad}
    assert not client.exists(names[1]) and not client.exists(names[2])  # nothing half-written


def test_cluster_several_tenants(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A replica per primary: the old keys are deleted only once every replica holds the merges.
    cluster = start_cluster(tmp_path / "cluster", primaries=3, replicas=1)
    try:
        client = RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
        tenants = [f"tenant-{i}" for i in range(6)]
        old = [usage(t, m, i, NOW - timedelta(hours=i % 5))
               for i, (t, m) in enumerate((t, m) for t in tenants
                                          for m in ("gpt-4o", "gpt-4o-mini"))]
        write_old(client, old)
        keys = sorted(old_keys(client))
        assert len(keys) == 6 + 12 + 12
        owners = {cluster.owner_of(k).port for k in keys}
        assert len(owners) == 3  # old keys on every primary
        moved = [k for k in keys if cluster.owner_of(k) != cluster.owner_of(new_name(k))]
        assert moved  # old and new name on different primaries: the cross-slot case
        new = [usage(t, "gpt-4o", 20, NOW) for t in tenants[:3]]
        asyncio.run(record_new(cluster.url, new))
        asyncio.run(merge_only(cluster.url, moved[:4]))  # interrupted before the DEL

        status, total = migrate(cluster.url, capsys)
        assert (status, total) == (0, {"found": 30, "migrated": 26, "already": 4, "left": 0,
                                       "gone": 0})
        assert old_keys(client) == set()
        every = [*old, *new]
        assert asyncio.run(read(cluster.url)) == asyncio.run(expected(every, None))
        since = NOW - timedelta(hours=24)
        assert asyncio.run(read(cluster.url, since)) == asyncio.run(expected(every, since))
        status, total = migrate(cluster.url, capsys)
        assert (status, total["found"]) == (0, 0)
        client.close()
    finally:
        cluster.stop()


async def run_migration(url: str, timeout_s: float) -> dict[str, int]:
    client = connect_redis(url)
    try:
        counts = await LedgerMigration(client, replication_timeout_s=timeout_s).run()
    finally:
        await client.aclose()
    total: dict[str, int] = {}
    for tally in counts.values():
        for name, value in vars(tally).items():
            total[name] = total.get(name, 0) + value
    return total


def test_old_keys_stay_until_the_replica_holds_the_merge(tmp_path: Path) -> None:
    # Replication is asynchronous: deleting the old key before the replica has the merge (and
    # its marker) would lose the counters if the primary died and the replica took over.
    topology = start_sentinel(tmp_path / "sentinel")
    url = f"redis://{topology.primary.address}"
    replica = topology.replica.proc
    assert replica is not None
    client = redis.Redis.from_url(url)
    try:
        old = [usage("research", m, i, NOW - timedelta(hours=i))
               for i, m in enumerate(["gpt-4o", "gpt-4o-mini"])]
        write_old(client, old)
        found = len(old_keys(client))
        os.kill(replica.pid, signal.SIGSTOP)  # acknowledges nothing any more
        try:
            total = asyncio.run(run_migration(url, timeout_s=1.5))
        finally:
            os.kill(replica.pid, signal.SIGCONT)
        assert (total["found"], total["kept"], total["migrated"]) == (found, found, 0)
        assert len(old_keys(client)) == found  # merged, not deleted
        total = asyncio.run(run_migration(url, timeout_s=15))
        assert (total["already"], total["kept"]) == (found, 0)  # the markers: not twice
        assert old_keys(client) == set()
        assert asyncio.run(read(url)) == asyncio.run(expected(old, None))
    finally:
        client.close()
        topology.stop()
