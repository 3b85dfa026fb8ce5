"""redis-py's own clients for each topology, and what `/readyz` says about the one in use.

Every client fails fast (no command retries: the caller's circuit breaker decides when to
try again) and finds a new primary by itself after a failover:

* Sentinel: ``SentinelConnectionPool`` asks the sentinels for the primary's address on
  every new connection, and drops connections to a primary that became a replica.
* Cluster: a connection error makes ``RedisCluster`` refresh its slot map on the next
  command, so the replica promoted in the failed primary's place serves its slots.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool, Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from proxy.store.topology import RedisTarget

__all__ = [
    "ClientLimits",
    "SentinelRedis",
    "SharedRedis",
    "SpreadCluster",
    "build_client",
    "describe_topology",
]

SharedRedis: TypeAlias = "aioredis.Redis | RedisCluster"


@dataclass(frozen=True)
class ClientLimits:
    """Timeouts and pool bounds (see ``proxy.store.redis.RedisSettings``)."""

    socket_timeout_s: float
    connect_timeout_s: float
    health_check_interval_s: int
    max_connections: int
    pool_timeout_s: float


class SpreadCluster(RedisCluster):
    """``RedisCluster`` whose MGET may span slots (redis-py's ``mget_nonatomic``: one MGET
    per slot, pipelined per node). Cache entries are spread across slots on purpose, and a
    request reads all of its entries in one call."""

    async def mget(self, keys: Any, *args: Any) -> Any:
        return await self.mget_nonatomic(keys, *args)


class SentinelRedis(aioredis.Redis):
    """The client of a Sentinel-managed primary; closing it closes the sentinel clients too."""

    manager: Sentinel | None = None
    service: str = ""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        for client in self.manager.sentinels if self.manager is not None else ():
            await client.aclose()


def _no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


def build_client(target: RedisTarget, limits: ClientLimits) -> SharedRedis:
    """A client for ``target``: nothing connects until the first command."""
    common: dict[str, Any] = {
        "socket_timeout": limits.socket_timeout_s,
        "socket_connect_timeout": limits.connect_timeout_s,
        "health_check_interval": limits.health_check_interval_s,
        "retry": _no_retry(),
        **target.connection_kwargs(),
    }
    if target.mode == "cluster":
        return SpreadCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            ssl=target.tls,
            max_connections=limits.max_connections,
            # Slots of a failed primary are uncovered until its replica takes over:
            # the client must still start and serve the other slots meanwhile.
            require_full_coverage=False,
            **common,
        )
    if target.mode == "sentinel":
        return _sentinel_client(target, limits, common)
    (host, port), = target.nodes
    pool = BlockingConnectionPool(
        connection_class=SSLConnection if target.tls else Connection,
        host=host,
        port=port,
        db=target.db,
        max_connections=limits.max_connections,
        timeout=limits.pool_timeout_s,
        **common,
    )
    return aioredis.Redis.from_pool(pool)


def _sentinel_client(target: RedisTarget, limits: ClientLimits,
                     common: dict[str, Any]) -> SentinelRedis:
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": limits.socket_timeout_s,
        "socket_connect_timeout": limits.connect_timeout_s,
        **dict(target.sentinel_auth),
    }
    if target.tls:
        sentinel_kwargs.update(ssl=True, **target.tls_options)
    sentinel = Sentinel(target.nodes, sentinel_kwargs=sentinel_kwargs)
    assert target.service is not None  # parse_redis_url requires it for this form
    client = sentinel.master_for(
        target.service,
        redis_class=SentinelRedis,
        db=target.db,
        ssl=target.tls,
        max_connections=limits.max_connections,
        **common,
    )
    assert isinstance(client, SentinelRedis)
    client.manager = sentinel
    client.service = target.service
    return client


def _address(node: Any) -> str:
    return f"{node.host}:{node.port}"


def _addresses(nodes: Iterable[Any]) -> list[str]:
    return sorted(_address(n) for n in nodes)


async def describe_topology(client: SharedRedis) -> dict[str, Any]:
    """What the client sees now (one round-trip per primary at most): ``mode``, the
    primary or primaries, the replicas. Raises a Redis error when it cannot tell."""
    if isinstance(client, RedisCluster):
        await client.ping(target_nodes=RedisCluster.PRIMARIES)
        return {
            "mode": "cluster",
            "primaries": _addresses(client.get_primaries()),
            "replicas": len(client.get_replicas()),
        }
    if isinstance(client, SentinelRedis) and client.manager is not None:
        host, port = await client.manager.discover_master(client.service)
        replicas = await client.manager.discover_slaves(client.service)
        await client.ping()
        return {"mode": "sentinel", "service": client.service, "primary": f"{host}:{port}",
                "replicas": len(replicas)}
    role: Any = await client.role()
    kind = role[0].decode() if isinstance(role[0], bytes) else str(role[0])
    kwargs = client.connection_pool.connection_kwargs
    info: dict[str, Any] = {"mode": "standalone", "address": f"{kwargs.get('host')}:"
                            f"{kwargs.get('port')}", "role": kind}
    if kind == "master":
        info["replicas"] = len(role[2])
    return info
