"""Prometheus metrics: every name in one place, one registry per app.

Each ``Metrics`` owns its ``CollectorRegistry`` (never the global default one), so
several apps can live in one process (tests) without sharing counters.

Exported series (counters carry the ``_total`` suffix on the wire)::

    linguagate_requests_total{tenant,model,outcome}        outcome: applied|shadow|off|skipped
    linguagate_original_tokens_total{tenant,model}         tiktoken count of client message text
    linguagate_forwarded_tokens_total{tenant,model}        ... of what was sent upstream
    linguagate_saved_tokens_total{tenant,model}            original - forwarded
    linguagate_shadow_would_save_tokens_total{tenant,model}
    linguagate_skips_total{tenant,model,reason}
    linguagate_cache_lookups_total{tenant,result}          result: hit|miss (per component)
    linguagate_upstream_tokens_total{tenant,model,kind}    kind: prompt|completion|cached (upstream)
    linguagate_prompt_tokens_total{tenant,model,side,cache} side: billed|direct|would, cache:
                                                           cached|uncached (proxy.accounting.cost)
    linguagate_input_usd_total{tenant,model,side}          the same at the price table's rates
                                                           (net saved = direct - billed)
    linguagate_compression_rate{tenant,model}              histogram of forwarded/original
    linguagate_compression_seconds{tenant,model}           histogram of compression latency
    linguagate_redis_up{component}                         1/0 per Redis-backed component
    linguagate_backend_errors_total{component,backend}     failed cache/ledger operations
    linguagate_compressor_*{model}                         see proxy.compression.engine_metrics
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.accounting.cost import PromptBill
from proxy.accounting.ledger import UsageRecord
from proxy.accounting.report import PriceTable, load_prices
from proxy.core.safetext import safe_text
from proxy.store.redis import BackendStatus

__all__ = ["OTHER_MODEL", "Metrics"]

OTHER_MODEL = "other"
_RATE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _BackendCollector(Collector):
    """Reads cache/ledger ``status()`` at scrape time: no state to keep in sync."""

    def __init__(self) -> None:
        self.sources: dict[str, Callable[[], BackendStatus]] = {}

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "linguagate_redis_up",
            "1 when the Redis-backed component answers, 0 while degraded",
            labels=["component"],
        )
        errors = CounterMetricFamily(
            "linguagate_backend_errors",
            "Failed cache/ledger backend operations",
            labels=["component", "backend"],
        )
        for component, source in sorted(self.sources.items()):
            status = source()
            if status.backend == "redis":
                up.add_metric([component], 1.0 if status.ok else 0.0)
            errors.add_metric([component, status.backend], float(status.errors))
        yield up
        yield errors


class Metrics:
    """The proxy's metrics. ``observe()`` one ``UsageRecord`` per request; ``render()`` to serve.

    ``model`` label values come from clients, so at most ``max_models`` distinct
    ones are kept; later ones are reported as ``other`` (bounded memory).
    """

    def __init__(self, *, max_models: int = 100, prices: PriceTable | None = None) -> None:
        self.prices = prices if prices is not None else load_prices(None)
        self.registry = CollectorRegistry(auto_describe=True)
        self.max_models = max_models
        self._models: set[str] = set()
        self._backends = _BackendCollector()
        r = self.registry
        tm = ["tenant", "model"]
        self.requests = Counter(
            "linguagate_requests", "Chat/completions requests seen", [*tm, "outcome"], registry=r
        )
        self.original_tokens = Counter(
            "linguagate_original_tokens",
            "Target-model tokens of the client's message text",
            tm,
            registry=r,
        )
        self.forwarded_tokens = Counter(
            "linguagate_forwarded_tokens",
            "Target-model tokens of the message text sent upstream",
            tm,
            registry=r,
        )
        self.saved_tokens = Counter(
            "linguagate_saved_tokens", "Original minus forwarded tokens", tm, registry=r
        )
        self.shadow_would_save = Counter(
            "linguagate_shadow_would_save_tokens",
            "Tokens shadow mode would have saved",
            tm,
            registry=r,
        )
        self.skips = Counter(
            "linguagate_skips", "Requests not compressed, by reason", [*tm, "reason"], registry=r
        )
        self.cache = Counter(
            "linguagate_cache_lookups",
            "Compression cache lookups per component",
            ["tenant", "result"],
            registry=r,
        )
        self.upstream_tokens = Counter(
            "linguagate_upstream_tokens",
            "Tokens from the upstream's own usage report",
            [*tm, "kind"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "linguagate_prompt_tokens",
            "Prompt tokens as billed, as sent directly (est.) and as shadow mode would send",
            [*tm, "side", "cache"],
            registry=r,
        )
        self.input_usd = Counter(
            "linguagate_input_usd",
            "Input money net of the provider's prompt cache, per side (priced models only)",
            [*tm, "side"],
            registry=r,
        )
        self.compression_rate = Histogram(
            "linguagate_compression_rate",
            "Forwarded/original tokens of compressed requests",
            tm,
            buckets=_RATE_BUCKETS,
            registry=r,
        )
        self.compression_seconds = Histogram(
            "linguagate_compression_seconds",
            "Time spent compressing a request",
            tm,
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        r.register(self._backends)

    def add_collector(self, collector: Collector) -> None:
        """Serve another collector's series too (e.g. ``proxy.compression.engine_metrics``)."""
        self.registry.register(collector)

    def add_backend(self, component: str, status: Callable[[], BackendStatus]) -> None:
        """Expose a cache/ledger ``status`` as ``linguagate_redis_up`` and error counts."""
        self._backends.sources[component] = status

    def _model(self, model: str) -> str:
        model = safe_text(model)  # a label must encode, or every later scrape fails
        if model in self._models:
            return model
        if len(self._models) >= self.max_models:
            return OTHER_MODEL
        self._models.add(model)
        return model

    def observe(self, rec: UsageRecord) -> None:
        """Count one request (the same record the ledger gets)."""
        tenant, model = rec.tenant, self._model(rec.model)
        self.requests.labels(tenant, model, rec.outcome).inc()
        self.original_tokens.labels(tenant, model).inc(rec.original_tokens)
        self.forwarded_tokens.labels(tenant, model).inc(rec.forwarded_tokens)
        self.saved_tokens.labels(tenant, model).inc(
            max(rec.original_tokens - rec.forwarded_tokens, 0)
        )
        if rec.skip_reason:
            self.skips.labels(tenant, model, rec.skip_reason).inc()
        if rec.cache_hits:
            self.cache.labels(tenant, "hit").inc(rec.cache_hits)
        if rec.cache_misses:
            self.cache.labels(tenant, "miss").inc(rec.cache_misses)
        if rec.upstream_prompt_tokens is not None:
            self.upstream_tokens.labels(tenant, model, "prompt").inc(rec.upstream_prompt_tokens)
        if rec.upstream_completion_tokens is not None:
            self.upstream_tokens.labels(tenant, model, "completion").inc(
                rec.upstream_completion_tokens
            )
        if rec.upstream_cached_tokens is not None:
            self.upstream_tokens.labels(tenant, model, "cached").inc(rec.upstream_cached_tokens)
        self._observe_bills(rec, tenant, model)
        if rec.compression_ms > 0:
            self.compression_seconds.labels(tenant, model).observe(rec.compression_ms / 1000)
        sent = rec.would_forward_tokens if rec.outcome == "shadow" else rec.forwarded_tokens
        if rec.outcome == "shadow" and sent is not None:
            self.shadow_would_save.labels(tenant, model).inc(max(rec.original_tokens - sent, 0))
        if rec.outcome in ("applied", "shadow") and sent is not None and rec.original_tokens:
            self.compression_rate.labels(tenant, model).observe(sent / rec.original_tokens)

    def _observe_bills(self, rec: UsageRecord, tenant: str, model: str) -> None:
        inc = rec.increments()
        for side in ("billed", "direct", "would"):
            prompt = int(inc.get(f"{side}_prompt_tokens", 0))
            if not prompt:
                continue
            bill = PromptBill(prompt, int(inc.get(f"{side}_cached_tokens", 0)))
            self.prompt_tokens.labels(tenant, model, side, "cached").inc(bill.cached)
            self.prompt_tokens.labels(tenant, model, side, "uncached").inc(bill.uncached)
            usd = self.prices.bill(rec.model, bill)
            if usd is not None:
                self.input_usd.labels(tenant, model, side).inc(usd)

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its content type, for ``GET /metrics``."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
