"""The long-lived objects a running proxy shares between requests, built and closed together.

`open_services(settings)` is the one place that creates them (the app's lifespan calls it,
once per worker process); handlers receive the resulting `Services` and never build their
own. Tests and the integration step pass their own pieces (a mock transport, a compressing
`ChatTransform`, extra readiness probes) through its keyword arguments.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

import httpx

from proxy.pipeline import ChatTransform, identity_transform
from proxy.policy import PolicyStore
from proxy.settings import Settings
from proxy.upstream import UpstreamClient

if TYPE_CHECKING:
    from proxy.ledger import Ledger

__all__ = ["ComponentStatus", "Probe", "Services", "open_services"]


@dataclass(frozen=True)
class ComponentStatus:
    """One line of `/readyz`: `status` is "ok", "down", "not_configured", "loading", ...

    `required` components make `/readyz` answer 503 while they are not ok; the upstream and
    Redis are reported but not required (requests fail open without Redis, and every replica
    shares the same upstream, so pulling replicas out of rotation would not help).
    """

    status: str
    required: bool = False
    detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "not_configured")


Probe = Callable[[], Awaitable[ComponentStatus]]


@dataclass(frozen=True)
class Services:
    """Everything a handler may use. Frozen: swapping a service means building a new app."""

    settings: Settings
    upstream: UpstreamClient
    policies: PolicyStore
    chat_transform: ChatTransform = identity_transform
    # Where `PipelineOutcome.usage` records go once an answer is complete (None: nowhere).
    ledger: Ledger | None = None
    # `/readyz` components beside policies and upstream: "redis" (when configured), "model", ...
    probes: Mapping[str, Probe] = field(default_factory=lambda: MappingProxyType({}))


@asynccontextmanager
async def open_services(
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    chat_transform: ChatTransform | None = None,
    probes: Mapping[str, Probe] | None = None,
    ledger: Ledger | None = None,
) -> AsyncIterator[Services]:
    """Build the services for `settings`, and close them on exit.

    Policies are loaded (and validated) here: an invalid policies folder fails startup with
    `PolicyError` listing every problem, rather than serving with no tenants.
    """
    policies = PolicyStore(settings.policies_dir)
    policies.load()
    async with AsyncExitStack() as stack:
        upstream = UpstreamClient.from_settings(settings, transport=transport)
        stack.push_async_callback(upstream.aclose)
        all_probes = dict(probes or {})
        if settings.redis_url and "redis" not in all_probes:
            all_probes["redis"] = await stack.enter_async_context(_redis_probe(settings.redis_url))
        yield Services(
            settings=settings,
            upstream=upstream,
            policies=policies,
            chat_transform=chat_transform or identity_transform,
            ledger=ledger,
            probes=MappingProxyType(all_probes),
        )


@asynccontextmanager
async def _redis_probe(url: str) -> AsyncIterator[Probe]:
    """PING with short timeouts: a Redis that accepts connections but never answers must
    not hang `/readyz` (a lesson from other gateways' trackers)."""
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    client = Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)

    async def probe() -> ComponentStatus:
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            return ComponentStatus("down", detail=type(exc).__name__)
        return ComponentStatus("ok")

    try:
        yield probe
    finally:
        await client.aclose()
