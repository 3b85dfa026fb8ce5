"""The dashboard's figures: the ledger's hourly buckets summed per period and tenant.

A period is a run of chart buckets ending with the current one: 24 hours for ``24h``,
7 or 30 UTC days for ``7d``/``30d``. Money is input money net of the provider's prompt
cache (``proxy.accounting.cost``): what the forwarded prompts were billed, cached tokens at the
cached price, against what sending the originals would have cost; requests recorded without
those figures count saved tokens at the input price. Prices come from the
``proxy.accounting.report`` table; models without a price are listed apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from proxy.accounting.ledger import (
    LATENCY_EDGES_MS,
    LATENCY_PREFIX,
    RATE_EDGES,
    RATE_PREFIX,
    HourBucket,
    LedgerRow,
)
from proxy.accounting.report import PriceTable
from proxy.dashboard.stats import Histogram, histogram

__all__ = [
    "PERIODS",
    "ModelFigures",
    "Point",
    "Summary",
    "Window",
    "summarize",
    "summarize_all",
    "window",
]

PERIODS = ("24h", "7d", "30d")
_SKIP = "skip:"


@dataclass(frozen=True)
class Window:
    """A period's chart buckets: ``starts`` (UTC), each ``step`` long."""

    period: str
    starts: tuple[datetime, ...]
    step: timedelta

    @property
    def since(self) -> datetime:
        return self.starts[0]

    def index(self, hour: datetime) -> int | None:
        i = int((hour - self.since) // self.step)
        return i if 0 <= i < len(self.starts) else None


def window(period: str, now: datetime) -> Window:
    """The buckets of ``period`` (one of ``PERIODS``) ending with the one holding ``now``."""
    hour = now.replace(minute=0, second=0, microsecond=0)
    if period == "24h":
        step, last, n = timedelta(hours=1), hour, 24
    elif period in ("7d", "30d"):
        step, last, n = timedelta(days=1), hour.replace(hour=0), int(period[:-1])
    else:
        raise ValueError(f"period must be one of {', '.join(PERIODS)}")
    return Window(period, tuple(last - step * (n - 1 - i) for i in range(n)), step)


@dataclass(frozen=True)
class Point:
    """One chart bucket."""

    start: datetime
    requests: int = 0
    original_tokens: int = 0
    forwarded_tokens: int = 0


@dataclass(frozen=True)
class ModelFigures:
    model: str
    requests: int
    original_tokens: int
    forwarded_tokens: int
    saved_tokens: int
    dollars_saved: float | None  # net of the provider's prompt cache
    price_per_million: float | None
    billed_dollars: float | None = None
    direct_dollars: float | None = None
    billed_prompt_tokens: int = 0
    billed_cached_tokens: int = 0


@dataclass(frozen=True)
class Summary:
    """Everything the tenant page shows for one period."""

    tenant: str
    period: str
    since: datetime
    requests: int = 0
    original_tokens: int = 0
    forwarded_tokens: int = 0
    saved_tokens: int = 0
    compressed_requests: int = 0
    shadow_requests: int = 0
    would_save_tokens: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    dollars_saved: float = 0.0  # net of the provider's prompt cache
    billed_dollars: float = 0.0
    direct_dollars: float = 0.0
    billed_prompt_tokens: int = 0
    billed_cached_tokens: int = 0
    unpriced_models: tuple[str, ...] = ()
    skips: Mapping[str, int] = field(default_factory=dict)
    rates: Histogram = field(default_factory=lambda: histogram(RATE_PREFIX, RATE_EDGES, {}))
    latency_ms: Histogram = field(
        default_factory=lambda: histogram(LATENCY_PREFIX, LATENCY_EDGES_MS, {})
    )
    points: tuple[Point, ...] = ()
    models: tuple[ModelFigures, ...] = ()

    @property
    def saved_fraction(self) -> float | None:
        return self.saved_tokens / self.original_tokens if self.original_tokens else None

    @property
    def provider_cached_fraction(self) -> float | None:
        """Share of billed prompt tokens the provider served from its cache."""
        if not self.billed_prompt_tokens:
            return None
        return self.billed_cached_tokens / self.billed_prompt_tokens

    @property
    def cache_hit_rate(self) -> float | None:
        lookups = self.cache_hits + self.cache_misses
        return self.cache_hits / lookups if lookups else None

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of ``GET /dashboard/api/summary``."""
        return {
            "tenant": self.tenant,
            "period": self.period,
            "since": self.since.isoformat(),
            "requests": self.requests,
            "original_tokens": self.original_tokens,
            "forwarded_tokens": self.forwarded_tokens,
            "saved_tokens": self.saved_tokens,
            "saved_fraction": self.saved_fraction,
            "dollars_saved": round(self.dollars_saved, 6),
            "billed_dollars": round(self.billed_dollars, 6),
            "direct_dollars": round(self.direct_dollars, 6),
            "billed_prompt_tokens": self.billed_prompt_tokens,
            "billed_cached_tokens": self.billed_cached_tokens,
            "provider_cached_fraction": self.provider_cached_fraction,
            "unpriced_models": list(self.unpriced_models),
            "compressed_requests": self.compressed_requests,
            "shadow_requests": self.shadow_requests,
            "would_save_tokens": self.would_save_tokens,
            "cache_hits": self.cache_hits,
            "cache_misses": self.cache_misses,
            "cache_hit_rate": self.cache_hit_rate,
            "skips": dict(self.skips),
            "compression_rate_histogram": self.rates.to_dict(),
            "compression_ms_histogram": self.latency_ms.to_dict(),
            "compression_ms_p50": self.latency_ms.quantile(0.5),
            "compression_ms_p99": self.latency_ms.quantile(0.99),
            "percentiles_approximate": True,
            "series": [
                {
                    "start": p.start.isoformat(),
                    "requests": p.requests,
                    "original_tokens": p.original_tokens,
                    "forwarded_tokens": p.forwarded_tokens,
                }
                for p in self.points
            ],
            "models": [m.__dict__.copy() for m in self.models],
        }


def _add(into: dict[str, float], counters: Mapping[str, float]) -> None:
    for name, value in counters.items():
        into[name] = into.get(name, 0.0) + value


def summarize(
    tenant: str, buckets: Iterable[HourBucket], win: Window, prices: PriceTable
) -> Summary:
    """Sum ``tenant``'s buckets that fall in ``win`` (others are ignored)."""
    totals: dict[str, float] = {}
    per_model: dict[str, dict[str, float]] = {}
    per_point: list[dict[str, float]] = [{} for _ in win.starts]
    for b in buckets:
        i = win.index(b.hour)
        if b.tenant != tenant or i is None:
            continue
        _add(totals, b.counters)
        _add(per_model.setdefault(b.model, {}), b.counters)
        _add(per_point[i], b.counters)
    row = LedgerRow.from_counters(tenant, "*", totals)
    models = tuple(_model_figures(m, c, prices) for m, c in sorted(per_model.items()))
    return Summary(
        tenant=tenant,
        period=win.period,
        since=win.since,
        requests=row.requests,
        original_tokens=row.original_tokens,
        forwarded_tokens=row.forwarded_tokens,
        saved_tokens=row.saved_tokens,
        compressed_requests=row.compressed_requests,
        shadow_requests=row.shadow_requests,
        would_save_tokens=row.would_save_tokens,
        cache_hits=row.cache_hits,
        cache_misses=row.cache_misses,
        dollars_saved=sum(m.dollars_saved or 0.0 for m in models),
        billed_dollars=sum(m.billed_dollars or 0.0 for m in models),
        direct_dollars=sum(m.direct_dollars or 0.0 for m in models),
        billed_prompt_tokens=row.billed_prompt_tokens,
        billed_cached_tokens=row.billed_cached_tokens,
        unpriced_models=tuple(m.model for m in models if m.dollars_saved is None),
        skips=dict(
            sorted(
                ((k[len(_SKIP) :], int(v)) for k, v in totals.items() if k.startswith(_SKIP)),
                key=lambda kv: (-kv[1], kv[0]),
            )
        ),
        rates=histogram(RATE_PREFIX, RATE_EDGES, totals),
        latency_ms=histogram(LATENCY_PREFIX, LATENCY_EDGES_MS, totals),
        points=tuple(
            Point(
                start,
                int(c.get("requests", 0)),
                int(c.get("original_tokens", 0)),
                int(c.get("forwarded_tokens", 0)),
            )
            for start, c in zip(win.starts, per_point, strict=True)
        ),
        models=models,
    )


def _model_figures(model: str, counters: Mapping[str, float], prices: PriceTable) -> ModelFigures:
    row = LedgerRow.from_counters("", model, counters)
    price = prices.price_for(model)
    net = prices.net(row)
    return ModelFigures(
        model=model,
        requests=row.requests,
        original_tokens=row.original_tokens,
        forwarded_tokens=row.forwarded_tokens,
        saved_tokens=row.saved_tokens,
        dollars_saved=(None if price is None else net.saved if net is not None
                       else row.saved_tokens * price / 1_000_000),
        price_per_million=price,
        billed_dollars=None if net is None else net.billed,
        direct_dollars=None if net is None else net.direct,
        billed_prompt_tokens=row.billed_prompt_tokens,
        billed_cached_tokens=row.billed_cached_tokens,
    )


def summarize_all(
    tenants: Sequence[str], buckets: Sequence[HourBucket], win: Window, prices: PriceTable
) -> list[Summary]:
    """One summary per tenant in ``tenants`` plus any tenant the buckets name."""
    by_tenant: dict[str, list[HourBucket]] = {name: [] for name in tenants}
    for b in buckets:
        by_tenant.setdefault(b.tenant, []).append(b)
    return [summarize(name, rows, win, prices) for name, rows in sorted(by_tenant.items())]
