"""The long-lived objects a running proxy shares between requests, built and closed together.

`open_services(settings)` is the one place that creates them (the app's lifespan calls it,
once per worker process); handlers receive the resulting `Services` and never build their
own. Tests and the integration step pass their own pieces (a mock transport, a compressing
`ChatTransform`, extra readiness probes) through its keyword arguments.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from types import MappingProxyType
from typing import TYPE_CHECKING

import httpx

from proxy.accounting.accountant import Accountant
from proxy.accounting.metrics import Metrics
from proxy.accounting.report import PriceTable, load_prices
from proxy.compression.cache import CompressionCache, MemoryCache, RedisCache
from proxy.compression.engine_metrics import CompressorCollector
from proxy.compression.pool import CompressorPool
from proxy.compression.service import CompressorService, batching_for, load_local_engine
from proxy.compression.transform import ChatTransform
from proxy.core.settings import Settings
from proxy.gateway.state import ComponentStatus, Probe, Services
from proxy.gateway.upstream import UpstreamClient
from proxy.policy.store import PolicyStore
from proxy.store.redis import RedisSettings, connect_redis

if TYPE_CHECKING:
    from proxy.accounting.ledger import Ledger
    from proxy.alignment.capture import CaptureWriter
    from proxy.compression.service import CompressionEngine

__all__ = ["open_services"]

_log = logging.getLogger("linguagate.services")


def _price_table(settings: Settings) -> PriceTable:
    """The configured prices (defaults when the file is unreadable: metrics must not fail)."""
    try:
        return load_prices(settings.prices_path)
    except (OSError, ValueError) as exc:
        _log.warning("prices file not used (%s): built-in prices", type(exc).__name__)
        return load_prices(None)


def needs_compressor(policies: PolicyStore) -> bool:
    """Whether any tenant (or per-model override) compresses: only then load the small LM."""
    for tenant in policies.current.tenants:
        modes = [tenant.compression.mode, *(p.mode for _, p in tenant.model_policies)]
        if any(mode != "off" for mode in modes):
            return True
    return False


def policy_models(policies: PolicyStore) -> list[str]:
    """The small LMs named by compressing policies (`[compression] model = ...`)."""
    names: list[str] = []
    for tenant in policies.current.tenants:
        for policy in (tenant.compression, *(p for _, p in tenant.model_policies)):
            if policy.mode != "off" and policy.model is not None:
                names.append(policy.model)
    return list(dict.fromkeys(names))


def _default_engine(settings: Settings, model: str | None = None) -> CompressionEngine:
    """The engine for `model` (None: the default): the `compressor-worker`s' (--compressor-url)
    or a model loaded in this process. Workers serve a policy-named model only when started
    with `--extra-model` naming it; otherwise its service is down (requests fail open)."""
    if settings.compressor_url:
        from proxy.compression.remote import RemoteEngine

        return RemoteEngine.connect(settings.compressor_url, model=model)
    return load_local_engine(settings if model is None
                        else settings.with_overrides(compressor_model=model))


@asynccontextmanager
async def open_services(
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    chat_transform: ChatTransform | None = None,
    probes: Mapping[str, Probe] | None = None,
    ledger: Ledger | None = None,
    compressor: CompressorService | None = None,
    cache: CompressionCache | None = None,
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
        metrics = Metrics(prices=_price_table(settings))
        redis_settings = RedisSettings(ttl_s=settings.cache_ttl_s)
        client = connect_redis(settings.redis_url, redis_settings) if settings.redis_url else None
        if client is not None:
            stack.push_async_callback(client.aclose)
        if cache is None:
            cache = (RedisCache(client, redis_settings, owns_client=False) if client is not None
                     else MemoryCache(ttl_s=settings.cache_ttl_s))
            stack.push_async_callback(cache.close)
        if ledger is None:
            from proxy.accounting.ledger import MemoryLedger, RedisLedger

            ledger = (RedisLedger(client, redis_settings, owns_client=False)
                      if client is not None else MemoryLedger())
            stack.push_async_callback(ledger.close)
        accountant = Accountant(ledger, metrics)
        for component, backend in (("cache", cache), ("ledger", ledger)):
            status = getattr(backend, "status", None)  # test doubles may not report one
            if status is not None:
                metrics.add_backend(component, status)
        if compressor is None:
            compressor = CompressorService(
                lambda: _default_engine(settings),
                max_workers=settings.compress_workers,
                max_pending=settings.compress_queue,
                description=settings.compressor_url or settings.compressor_model
                or "SmolLM2-135M-Instruct (packaged)",
                batching=batching_for(settings),
            )
        stack.callback(compressor.close)
        if needs_compressor(policies):
            compressor.start()
        all_probes.setdefault("model", _model_probe(compressor, policies))
        pool = _pool(settings, compressor)
        stack.callback(pool.close)
        metrics.add_collector(CompressorCollector(pool.services))
        pool.ensure(policy_models(policies))
        all_probes.setdefault("models", _pool_probe(pool, policies))
        from proxy.alignment.capture import CaptureWriter

        capture = CaptureWriter(settings.capture_dir)
        stack.push_async_callback(asyncio.to_thread, capture.close)
        all_probes.setdefault("capture", _capture_probe(capture, policies))
        if chat_transform is None:
            from proxy.compression.step import CompressionStep

            chat_transform = CompressionStep(compressor, cache, pool)
        yield Services(
            settings=settings,
            upstream=upstream,
            policies=policies,
            chat_transform=chat_transform,
            ledger=accountant,
            probes=MappingProxyType(all_probes),
            compressor=compressor,
            cache=cache,
            metrics=metrics,
            capture=capture,
        )


def _model_probe(compressor: CompressorService, policies: PolicyStore) -> Probe:
    """The small LM is required for readiness only while some policy compresses."""

    async def probe() -> ComponentStatus:
        state, detail = compressor.status
        required = needs_compressor(policies)
        if required and state == "idle":
            compressor.start()  # a policy reload turned compression on
            state, detail = compressor.status
        return ComponentStatus(state, required=required, detail=detail)

    return probe


def _pool(settings: Settings, default: CompressorService) -> CompressorPool:
    remote = settings.compressor_url is not None
    # Local loads one at a time, after the default's: transformers' from_pretrained is not
    # thread-safe (concurrent loads fail "Cannot copy out of meta tensor").
    loading = threading.Lock()

    def load(model: str) -> CompressionEngine:
        if remote:
            return _default_engine(settings, model)
        if default.status[0] == "loading":
            default.wait_ready()
        with loading:
            return _default_engine(settings, model)

    def make(model: str) -> CompressorService:
        return CompressorService(lambda: load(model),
                                 max_workers=settings.compress_workers,
                                 max_pending=settings.compress_queue,
                                 description=f"{model} at {settings.compressor_url}" if remote
                                 else model, batching=batching_for(settings))

    # With workers every name goes to them (they know their default's name; this process's
    # --compressor-model is not what they run), and a remote engine costs only connections.
    return CompressorPool(default, make, default_name=None if remote else settings.compressor_model,
                          max_engines=16 if remote else 2, retry_down_s=15.0 if remote else None)


def _pool_probe(pool: CompressorPool, policies: PolicyStore) -> Probe:
    """Engines named by policies: reported (a down one fails open), never required."""

    async def probe() -> ComponentStatus:
        pool.ensure(policy_models(policies))  # a policy reload named a new model
        states = pool.statuses()
        if not states:
            return ComponentStatus("not_configured")
        worst = next((s for s in ("down", "loading", "idle") if any(
            state == s for state, _ in states.values())), "ok")
        detail = "; ".join(f"{name}: {state}" + (f" ({why})" if why and state != "ok" else "")
                           for name, (state, why) in states.items())
        return ComponentStatus(worst, detail=detail)

    return probe


def _capture_probe(capture: CaptureWriter, policies: PolicyStore) -> Probe:
    """Pairs written / dropped (queue full, over the file cap) / failed writes, when on."""

    async def probe() -> ComponentStatus:
        if not any(t.alignment.capture for t in policies.current.tenants):
            return ComponentStatus("not_configured")
        detail = (f"{capture.directory}: written {capture.written}, dropped {capture.dropped}, "
                  f"write errors {capture.errors}")
        return ComponentStatus("ok" if not capture.errors else "degraded", detail=detail)

    return probe


@asynccontextmanager
async def _redis_probe(url: str) -> AsyncIterator[Probe]:
    """The topology Redis has now (a server, a Sentinel primary, a cluster's primaries),
    with short timeouts: a Redis that accepts connections but never answers must not hang
    `/readyz` (a lesson from other gateways' trackers). Its own client, so that a probe
    never waits behind requests for a pooled connection."""
    from redis.exceptions import RedisError

    from proxy.store.clients import describe_topology
    from proxy.store.topology import parse_redis_url

    client = connect_redis(url, RedisSettings(socket_timeout_s=0.5, connect_timeout_s=0.5,
                                              max_connections=4, pool_timeout_s=0.5))
    mode = parse_redis_url(url).mode

    async def probe() -> ComponentStatus:
        try:
            info = await asyncio.wait_for(describe_topology(client), 2.0)
        except (RedisError, OSError, TimeoutError) as exc:
            return ComponentStatus("down", detail=type(exc).__name__, info={"mode": mode})
        return ComponentStatus("ok", info=info)

    try:
        yield probe
    finally:
        await client.aclose()
