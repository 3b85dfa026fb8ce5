"""``linguagate ledger-migrate``: move the Redis ledger from its untagged key names to today's.

Until the ledger moved to the tenant's cluster hash tag (commit 464f56c), its keys were
``lg:v1:<t16>:ledger:models`` (SET), ``lg:v1:<t16>:ledger:m:<m16>:total`` and
``lg:v1:<t16>:ledger:m:<m16>:h:<YYYYMMDDHH>`` (HASH); they are now the same names with
braces, ``lg:v1:{<t16>}:ledger:...``, and the old ones are never read. The digests did not
change, so each old key has exactly one new name. The tenant set, ``lg:v1:ledger:tenants``,
kept its name; every migrated hash's ``_tenant`` is added to it all the same.

Each old key is merged into its new name (hash fields added as the ledger's writer adds them,
set members added, the larger TTL kept), then deleted. Exactly once, also when interrupted
and run again, and on a Redis Cluster where the old and the new name live in different slots:
the merge is one script on the *new* key's slot that also sets a marker there
(``lg:v1:{<t16>}:ledger:migrated:<sha256(old name)[:16]>``, kept ``MARKER_TTL_S``) and does
nothing when the marker exists; the old key is deleted only after that, and only once every
replica of every primary has acknowledged the merges (replication is asynchronous: a primary
that died holding an unreplicated merge would lose it with its marker, while the DEL on another
node went through). When replicas do not confirm in time, the old keys stay and the run says
to run again. A run interrupted between merge and DEL must be run again within the marker's
lifetime.

Run it once every proxy runs a version with the new names: a proxy still writing an old name
after its key was migrated and deleted would recreate it, and the marker would skip it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from proxy.accounting.ledger_keys import TENANTS_KEY
from proxy.store.clients import SharedRedis
from proxy.store.redis import KEY_PREFIX, RedisSettings, connect_redis
from proxy.store.topology import parse_redis_url

__all__ = [
    "MARKER_TTL_S",
    "LedgerMigration",
    "MigrationCounts",
    "Outcome",
    "add_subcommand",
    "new_names",
]

MARKER_TTL_S = 7 * 86400
REPLICATION_TIMEOUT_S = 15.0  # replicas acknowledge their offset about once a second
Outcome = Literal["migrated", "already", "left", "gone", "kept"]
_OLD_NAME = re.compile(
    re.escape(KEY_PREFIX) + r":([0-9a-f]{16}):ledger:(models|m:[0-9a-f]{16}:(?:total|h:\d{10}))"
)
# SCAN's glob: the 16 hex digits keep braced (new) names and lg:v1:ledger:tenants out.
_SCAN_MATCH = f"{KEY_PREFIX}:{'[0-9a-f]' * 16}:ledger:*"
_SETTINGS = RedisSettings(socket_timeout_s=5.0, connect_timeout_s=2.0, pool_timeout_s=5.0,
                          max_connections=32)
_CONCURRENT_KEYS = 16
_CHUNK = 1000

# On the OLD key's slot: its type, remaining TTL in ms (-1: none) and contents, in one read.
_READ_LUA = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'hash' then
  return {kind, redis.call('PTTL', KEYS[1]), redis.call('HGETALL', KEYS[1])}
elseif kind == 'set' then
  return {kind, redis.call('PTTL', KEYS[1]), redis.call('SMEMBERS', KEYS[1])}
end
return {kind, -2, {}}
"""

# On the NEW key's slot. KEYS[1] new key, KEYS[2] marker. ARGV: kind, the old key's PTTL,
# marker TTL, then a hash's field/value pairs or a set's members. Returns 1 merged, 0 merged
# before (marker), -1 not mergeable (checked before any write: a failing HINCRBY would leave
# the merge half-applied). Fields are added as _WRITE_LUA in proxy.accounting.ledger_keys
# adds them: names with HSET, compression_ms with HINCRBYFLOAT, counters with HINCRBY.
_MERGE_LUA = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local kind, old_ttl = ARGV[1], tonumber(ARGV[2])
local have = redis.call('TYPE', KEYS[1])['ok']
if have ~= 'none' and have ~= kind then return -1 end
-- Only what HINCRBYFLOAT / HINCRBY accept: an error half-way would keep the fields already
-- added and set no marker, and a rerun would add them again. (Lua's tonumber also takes
-- spaces and hex, Redis does not; Redis rejects leading zeros in integers.)
local function number(v)
  if string.find(v, '^[%d%.eE%+%-]+$') == nil then return false end
  local n = tonumber(v)
  return n ~= nil and n == n and n ~= math.huge and n ~= -math.huge
end
local function integer(v)
  return (v == '0' or string.match(v, '^%-?[1-9]%d*$') ~= nil) and #v <= 18
end
if kind == 'hash' then
  for i = 4, #ARGV, 2 do
    local f, v = ARGV[i], ARGV[i + 1]
    if f ~= '_tenant' and f ~= '_model' then
      local ok = f == 'compression_ms' and number or integer
      local cur = redis.call('HGET', KEYS[1], f)
      if not ok(v) or (cur and not ok(cur)) then return -1 end
    end
  end
end
local new_ttl = redis.call('PTTL', KEYS[1])
if kind == 'hash' then
  for i = 4, #ARGV, 2 do
    local f, v = ARGV[i], ARGV[i + 1]
    if f == '_tenant' or f == '_model' then
      redis.call('HSET', KEYS[1], f, v)
    elseif f == 'compression_ms' then
      redis.call('HINCRBYFLOAT', KEYS[1], f, v)
    else
      redis.call('HINCRBY', KEYS[1], f, v)
    end
  end
else
  for i = 4, #ARGV do redis.call('SADD', KEYS[1], ARGV[i]) end
end
if old_ttl > 0 and (new_ttl == -2 or (new_ttl > 0 and new_ttl < old_ttl)) then
  redis.call('PEXPIRE', KEYS[1], old_ttl)
end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[3])
return 1
"""


def new_names(old: str) -> tuple[str, str, str] | None:
    """``(<t16>, new name, marker name)`` of an old-form ledger key; None for any other key."""
    match = _OLD_NAME.fullmatch(old)
    if match is None:
        return None
    t16, rest = match.groups()
    slot = f"{KEY_PREFIX}:{{{t16}}}:ledger"  # proxy.store.redis.tenant_slot_namespace
    marker = hashlib.sha256(old.encode()).hexdigest()[:16]
    return t16, f"{slot}:{rest}", f"{slot}:migrated:{marker}"


@dataclass
class MigrationCounts:
    """Old keys of one tenant: found, and what became of them (``Outcome``)."""

    found: int = 0
    migrated: int = 0
    already: int = 0
    left: int = 0
    gone: int = 0
    kept: int = 0  # merged, but the old key kept: replicas did not confirm the merge in time


class LedgerMigration:
    """Finds the old-form ledger keys and moves each into its new name (module docstring).

    ``merge(old)`` is the script step alone (the old key stays): a run interrupted before
    its DEL looks like that, and ``migrate(old)`` after it counts nothing twice.
    """

    def __init__(self, client: SharedRedis, *, marker_ttl_s: int = MARKER_TTL_S,
                 replication_timeout_s: float = REPLICATION_TIMEOUT_S) -> None:
        self.client = client
        self.marker_ttl_s = marker_ttl_s
        self.replication_timeout_s = replication_timeout_s
        self._read = client.register_script(_READ_LUA)
        self._merge = client.register_script(_MERGE_LUA)
        self._tenants_added: set[bytes] = set()

    async def old_keys(self) -> list[str]:
        """Every old-form ledger key (SCAN; on a cluster redis-py scans every primary)."""
        found: set[str] = set()
        async for raw in self.client.scan_iter(match=_SCAN_MATCH, count=1000):
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            if new_names(name) is not None:
                found.add(name)
        return sorted(found)

    async def merge(self, old: str) -> Outcome:
        """Merge ``old`` into its new name once (the marker decides) and make sure its tenant
        is in the tenant set; ``old`` itself is left in place."""
        names = new_names(old)
        if names is None:
            raise ValueError("not an old-form ledger key")
        _, new, marker = names
        kind, ttl_ms, items = await self._read(keys=[old], client=self.client)
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        if kind == "none":
            return "gone"  # an hourly key that expired since the SCAN
        if kind != ("set" if new.endswith(":ledger:models") else "hash"):
            return "left"
        args: list[Any] = [kind, int(ttl_ms), self.marker_ttl_s, *items]
        done = int(await self._merge(keys=[new, marker], args=args, client=self.client))
        if done < 0:
            return "left"
        if kind == "hash":
            tenant = dict(zip(items[::2], items[1::2], strict=True)).get(b"_tenant")
            if tenant is not None and tenant not in self._tenants_added:
                await self.client.sadd(TENANTS_KEY, tenant)  # idempotent: before the DEL
                self._tenants_added.add(tenant)
        return "migrated" if done else "already"

    async def migrate(self, old: str) -> Outcome:
        """``merge(old)``, then delete ``old`` once the replicas hold the merge (else "kept")."""
        outcome = await self.merge(old)
        if outcome not in ("migrated", "already"):
            return outcome
        if not await self.replicated():
            return "kept"
        await self.client.delete(old)
        return outcome

    async def replicated(self) -> bool:
        """Whether every replica of every primary acknowledges the writes made so far (waits up
        to ``replication_timeout_s``). A primary that cannot be asked counts as not confirmed;
        one without replicas as confirmed."""
        try:
            targets = {node: int(info.get("master_repl_offset", 0))
                       for node, info in (await self._replication()).items()}
        except (RedisError, RedisClusterException, OSError):
            return False
        deadline = time.monotonic() + self.replication_timeout_s
        while True:
            try:
                infos = await self._replication()
            except (RedisError, RedisClusterException, OSError):
                infos = {}
            if all(node in infos and _caught_up(infos[node], offset)
                   for node, offset in targets.items()):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.1)

    async def _replication(self) -> dict[str, dict[str, Any]]:
        if isinstance(self.client, RedisCluster):
            raw = await self.client.info("replication", target_nodes=RedisCluster.PRIMARIES)
            return {str(node): dict(info) for node, info in raw.items()}
        return {"primary": dict(await self.client.info("replication"))}

    async def run(self, *, dry_run: bool = False) -> dict[str, MigrationCounts]:
        """Counts per tenant digest. ``dry_run``: find and count only (``already`` then
        counts old keys whose marker exists: merged by a run that stopped before the DEL).
        Otherwise: merge every old key, wait for the replicas, then delete the merged ones."""
        keys = await self.old_keys()
        counts: dict[str, MigrationCounts] = {}
        for old in keys:
            counts.setdefault(_tenant_of(old), MigrationCounts()).found += 1
        if dry_run:
            for old, marked in zip(keys, await self._marked(keys), strict=True):
                counts[_tenant_of(old)].already += marked
            return counts
        gate = asyncio.Semaphore(_CONCURRENT_KEYS)
        outcomes: dict[str, Outcome] = {}

        async def merge(old: str) -> None:
            async with gate:
                outcomes[old] = await self.merge(old)

        async def delete(old: str) -> None:
            async with gate:
                await self.client.delete(old)

        await _in_chunks(merge, keys)
        merged = [old for old in keys if outcomes[old] in ("migrated", "already")]
        if merged and not await self.replicated():
            outcomes.update(dict.fromkeys(merged, "kept"))
            merged = []
        await _in_chunks(delete, merged)
        for old, outcome in outcomes.items():
            tally = counts[_tenant_of(old)]
            setattr(tally, outcome, getattr(tally, outcome) + 1)
        return counts

    async def _marked(self, keys: Sequence[str]) -> list[bool]:
        out: list[bool] = []
        for start in range(0, len(keys), _CHUNK):
            async with self.client.pipeline(transaction=False) as pipe:
                for old in keys[start : start + _CHUNK]:
                    pipe.exists(_marker_of(old))
                out += [bool(n) for n in await pipe.execute()]
        return out


async def _in_chunks(step: Callable[[str], Awaitable[None]], keys: Sequence[str]) -> None:
    """``step`` on every key, a bounded number of tasks at a time."""
    for start in range(0, len(keys), _CHUNK):
        await asyncio.gather(*(step(old) for old in keys[start : start + _CHUNK]))


def _tenant_of(old: str) -> str:
    names = new_names(old)
    assert names is not None  # old_keys() keeps old-form names only
    return names[0]


def _caught_up(info: dict[str, Any], offset: int) -> bool:
    """Whether every replica in a primary's INFO replication has acknowledged ``offset``."""
    replicas = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
    return all(int(r.get("offset", -1)) >= offset for r in replicas)


def _marker_of(old: str) -> str:
    names = new_names(old)
    assert names is not None
    return names[2]


def _summary(counts: dict[str, MigrationCounts], *, dry_run: bool) -> str:
    """One row per tenant digest and a total: counts only, never a tenant or model name."""
    columns = (["found", "already"] if dry_run
               else [f.name for f in fields(MigrationCounts) if f.name != "kept"])
    total = MigrationCounts()
    for tally in counts.values():
        for f in fields(MigrationCounts):
            setattr(total, f.name, getattr(total, f.name) + getattr(tally, f.name))
    rows = [["tenant", *columns]]
    rows += [[t16, *(f"{getattr(c, n):,}" for n in columns)] for t16, c in sorted(counts.items())]
    rows.append(["TOTAL", *(f"{getattr(total, n):,}" for n in columns)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in
                                                    zip(r[1:], widths[1:], strict=True)])
             for r in rows]
    if dry_run:
        lines.append(f"dry run: {total.found:,} old-form ledger keys in {len(counts):,} "
                     f"tenants would be migrated ({total.already:,} already merged by an "
                     "interrupted run: deleted only); nothing changed")
    else:
        lines.append(f"{total.migrated:,} migrated, {total.already:,} already migrated (old key "
                     f"deleted), {total.left:,} left in place, {total.gone:,} expired meanwhile")
        if total.kept:
            lines.append(f"{total.kept:,} merged but kept: the replicas did not confirm the "
                         "merges in time; run it again (nothing is counted twice)")
    return "\n".join(lines)


async def _run(url: str, dry_run: bool) -> dict[str, MigrationCounts]:
    client = connect_redis(url, _SETTINGS)
    try:
        return await LedgerMigration(client).run(dry_run=dry_run)
    finally:
        await client.aclose()


def run_ledger_migrate(args: argparse.Namespace) -> int:
    """Entry point of ``linguagate ledger-migrate`` (exit status: 1 when a key was left in
    place or Redis failed, 2 for a missing or malformed URL)."""
    url = args.redis_url or os.environ.get("LINGUAGATE_REDIS_URL")
    if not url:
        print("linguagate ledger-migrate: pass --redis-url (or set LINGUAGATE_REDIS_URL)",
              file=sys.stderr)
        return 2
    try:
        parse_redis_url(url)
    except ValueError as exc:
        print(f"linguagate ledger-migrate: {exc}", file=sys.stderr)
        return 2
    try:
        counts = asyncio.run(_run(url, args.dry_run))
    except (RedisError, RedisClusterException, OSError) as exc:
        print(f"linguagate ledger-migrate: redis failed ({type(exc).__name__}: {exc}); "
              "nothing is counted twice: run it again", file=sys.stderr)
        return 1
    print(_summary(counts, dry_run=args.dry_run))
    return 1 if any(c.left or c.kept for c in counts.values()) else 0


def add_subcommand(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``ledger-migrate`` on the ``linguagate`` subparsers."""
    migrate = sub.add_parser(
        "ledger-migrate",
        help="move Redis ledger keys written before the tenant hash tag to their new names",
        description="Merge every old-form ledger key (lg:v1:<t16>:ledger:..., written before "
        "the keys took the tenant's cluster hash tag) into its new name "
        "lg:v1:{<t16>}:ledger:... and delete it: exactly once, also when interrupted and run "
        "again (within 7 days). Run it after every proxy runs this version. Prints counts "
        "per tenant digest; exit 1 when a key could not be merged (left in place).",
    )
    migrate.add_argument(
        "--redis-url",
        metavar="URL",
        help="Redis holding the ledger, in any form serve takes: redis://, rediss://, "
        "redis+sentinel://h:26379,h:26380/service, redis+cluster://h:7000,h:7001 "
        "(default: LINGUAGATE_REDIS_URL)",
    )
    migrate.add_argument("--dry-run", action="store_true",
                         help="only find and count the old keys; change nothing")
    migrate.set_defaults(func=run_ledger_migrate)
