"""The dashboard's HTML: plain semantic pages, every figure readable without JavaScript."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from html import escape
from types import MappingProxyType
from urllib.parse import urlencode

from proxy.dashboard import charts, fmt
from proxy.dashboard.auth import Viewer
from proxy.dashboard.data import PERIODS, Summary
from proxy.dashboard.stats import Histogram
from proxy.policy.model import CompressionPolicy, Tenant

__all__ = [
    "SORT_KEYS",
    "error_page",
    "overview_page",
    "sign_in_page",
    "sort_summaries",
    "tenant_page",
]

_PERIOD_NAMES: Mapping[str, str] = MappingProxyType(
    {"24h": "Last 24 hours", "7d": "Last 7 days", "30d": "Last 30 days"}
)
_APPROX = (
    "Percentiles are estimated from histogram buckets (approximate: accurate to "
    "within the bucket that holds them)."
)

# column key -> (header, value to sort by)
SORT_KEYS: Mapping[str, tuple[str, Callable[[Summary], float | str]]] = MappingProxyType(
    {
        "tenant": ("Tenant", lambda s: s.tenant),
        "requests": ("Requests", lambda s: s.requests),
        "original": ("Original tokens", lambda s: s.original_tokens),
        "forwarded": ("Forwarded tokens", lambda s: s.forwarded_tokens),
        "saved": ("Saved tokens", lambda s: s.saved_tokens),
        "saved_pct": ("Saved %", lambda s: s.saved_fraction or 0.0),
        "dollars": ("Net $ saved", lambda s: s.dollars_saved),
        "cache": ("Cache hit rate", lambda s: s.cache_hit_rate or 0.0),
    }
)


def _layout(title: str, main: str, viewer: Viewer | None) -> str:
    who = ""
    if viewer is not None:
        role = "admin" if viewer.admin else "tenant"
        who = (
            f'<span class="who">Signed in: <strong>{escape(viewer.tenant.name)}</strong> '
            f"({role})</span>"
            '<form method="post" action="/dashboard/logout">'
            '<button type="submit">Sign out</button></form>'
        )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)} · LinguaGate</title>"
        '<link rel="stylesheet" href="/dashboard/style.css"></head><body>'
        '<header class="top"><h1><a href="/dashboard">LinguaGate savings</a></h1>'
        f"{who}</header><main>{main}</main></body></html>"
    )


def sign_in_page(error: str | None = None) -> str:
    message = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    main = (
        '<section class="card signin" aria-labelledby="signin-h">'
        '<h2 id="signin-h">Sign in</h2>'
        "<p>Use a LinguaGate proxy key. An admin key shows every tenant; a tenant key shows "
        "that tenant only.</p>"
        f"{message}"
        '<form method="post" action="/dashboard/login">'
        '<label for="key">Proxy API key</label>'
        '<input id="key" name="key" type="password" autocomplete="current-password" required>'
        '<button type="submit">Sign in</button></form>'
        '<p class="note">The key is checked and forgotten: the session cookie names your '
        "tenant, never the key.</p></section>"
    )
    return _layout("Sign in", main, None)


def error_page(title: str, message: str, viewer: Viewer | None) -> str:
    main = (
        f'<section class="card"><h2>{escape(title)}</h2><p>{escape(message)}</p>'
        '<p><a href="/dashboard">Back to the dashboard</a></p></section>'
    )
    return _layout(title, main, viewer)


def _scope_badge(shared: bool) -> str:
    if shared:
        return (
            '<span class="scope shared">Shared ledger (Redis): every replica, kept 30 days</span>'
        )
    return (
        '<span class="scope local">This process only: in-memory ledger; other workers, '
        "other replicas and figures from before a restart are not included</span>"
    )


def _periods_nav(current: str, extra: dict[str, str]) -> str:
    links = []
    for p in PERIODS:
        href = "/dashboard?" + urlencode({**extra, "period": p})
        attr = ' aria-current="page"' if p == current else ""
        links.append(f'<a href="{escape(href)}"{attr}>{_PERIOD_NAMES[p]}</a>')
    return f'<nav class="periods" aria-label="Period">{"".join(links)}</nav>'


def sort_summaries(rows: Sequence[Summary], key: str, descending: bool) -> list[Summary]:
    value = SORT_KEYS.get(key, SORT_KEYS["saved"])[1]
    # Ties keep a stable, name-ordered table whatever the direction.
    by_name = sorted(rows, key=lambda s: s.tenant)
    return sorted(by_name, key=value, reverse=descending)


def overview_page(
    rows: Sequence[Summary],
    period: str,
    sort: str,
    descending: bool,
    shared: bool,
    viewer: Viewer,
) -> str:
    heads = []
    for key, (label, _) in SORT_KEYS.items():
        active = key == sort
        flip = not descending if active else key != "tenant"
        href = "/dashboard?" + urlencode(
            {"period": period, "sort": key, "dir": "desc" if flip else "asc"}
        )
        aria = f' aria-sort="{"descending" if descending else "ascending"}"' if active else ""
        arrow = (" ▼" if descending else " ▲") if active else ""
        heads.append(f'<th scope="col"{aria}><a href="{escape(href)}">{label}{arrow}</a></th>')
    body = []
    for s in rows:
        link = "/dashboard?" + urlencode({"tenant": s.tenant, "period": period})
        body.append(
            f'<tr><th scope="row"><a href="{escape(link)}">{escape(s.tenant)}</a></th>'
            f"<td>{fmt.count(s.requests)}</td><td>{fmt.tokens(s.original_tokens)}</td>"
            f"<td>{fmt.tokens(s.forwarded_tokens)}</td><td>{fmt.tokens(s.saved_tokens)}</td>"
            f"<td>{fmt.percent(s.saved_fraction)}</td>"
            f'<td title="${s.dollars_saved:.6f}">{fmt.money(s.dollars_saved)}</td>'
            f"<td>{fmt.percent(s.cache_hit_rate)}</td></tr>"
        )
    total_o = sum(s.original_tokens for s in rows)
    total_s = sum(s.saved_tokens for s in rows)
    total_d = sum(s.dollars_saved for s in rows)
    main = (
        f"<h2>All tenants · {_PERIOD_NAMES[period]}</h2>"
        f"<p>{_scope_badge(shared)}</p>{_periods_nav(period, {'sort': sort})}"
        '<dl class="kpis">'
        f"<div><dt>Tokens saved</dt><dd>{fmt.tokens(total_s)}</dd></div>"
        f"<div><dt>Saved share</dt><dd>{fmt.percent(total_s / total_o if total_o else None)}"
        "</dd></div>"
        f"<div><dt>Est. money saved</dt><dd>{fmt.money(total_d)}</dd></div>"
        f"<div><dt>Requests</dt><dd>{fmt.count(sum(s.requests for s in rows))}</dd></div></dl>"
        '<section class="card"><table id="tenants"><caption>Tenants (select a column to sort, '
        "a tenant for its details)</caption>"
        f"<thead><tr>{''.join(heads)}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        "</section>"
        '<p class="note">Money is an estimate: saved input tokens times list prices per model '
        "(override with a price file).</p>"
    )
    return _layout("All tenants", main, viewer)


def _histogram_section(
    title: str, hist: Histogram, labels: list[str], chart_id: str, note: str
) -> str:
    rows = "".join(
        f"<tr><td>{escape(label)}</td><td>{fmt.count(n)}</td></tr>"
        for label, n in zip(labels, hist.counts, strict=True)
    )
    return (
        f'<section class="card" aria-labelledby="{chart_id}-h"><h3 id="{chart_id}-h">{title}</h3>'
        f'<p class="note">{note}</p>'
        + (
            charts.bar_chart(labels, list(hist.counts), title, chart_id)
            if hist.total
            else "<p>No data in this period.</p>"
        )
        + f"<details><summary>As a table</summary><table><thead><tr><th scope='col'>Bucket</th>"
        f"<th scope='col'>Requests</th></tr></thead><tbody>{rows}</tbody></table></details>"
        "</section>"
    )


def _short_ms(edge: float) -> str:
    return f"{edge / 1000:g}s" if edge >= 1000 else f"{edge:g}"


def _compact_labels(hist: Histogram, show: Callable[[float], str]) -> list[str]:
    """``≤0.1`` ... ``>1``: short enough for a small chart's axis."""
    finite = hist.edges[:-1]
    return [f"≤{show(e)}" for e in finite] + [f">{show(finite[-1])}"]


def _policy_value(value: object) -> str:
    """A policy value the way the policy file spells it (``true``, ``["gpt-4*"]``), not Python's."""
    if value is None:
        return "(default)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_policy_value(v) for v in value) + "]"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return ", ".join(
            f"{g.name} = {_policy_value(getattr(value, g.name))}" for g in dataclasses.fields(value)
        )
    return str(value)


def _policy_rows(policy: CompressionPolicy) -> str:
    out = []
    for f in dataclasses.fields(policy):
        value = _policy_value(getattr(policy, f.name))
        out.append(f"<dt>{escape(f.name)}</dt><dd>{escape(value)}</dd>")
    return "".join(out)


def _policy_section(tenant: Tenant | None) -> str:
    if tenant is None:
        return (
            '<section class="card"><h3>Current policy</h3><p>This tenant is no longer in '
            "the policies folder; its recorded figures are shown.</p></section>"
        )
    parts = [f'<dl class="policy">{_policy_rows(tenant.compression)}</dl>']
    for glob, policy in tenant.model_policies:
        parts.append(
            f"<details><summary>Models matching <code>{escape(glob)}</code></summary>"
            f'<dl class="policy">{_policy_rows(policy)}</dl></details>'
        )
    return (
        '<section class="card" aria-labelledby="policy-h"><h3 id="policy-h">Current policy '
        "(read-only)</h3>" + "".join(parts) + "</section>"
    )


def tenant_page(
    s: Summary, tenant: Tenant | None, shared: bool, viewer: Viewer, price_note: str | None
) -> str:
    hourly = s.period == "24h"
    p50, p99 = s.latency_ms.quantile(0.5), s.latency_ms.quantile(0.99)
    series_rows = "".join(
        f"<tr><td>{p.start:%Y-%m-%d %H:00}</td><td>{fmt.count(p.requests)}</td>"
        f"<td>{fmt.count(p.original_tokens)}</td><td>{fmt.count(p.forwarded_tokens)}</td></tr>"
        for p in s.points
        if p.requests
    )
    model_rows = "".join(
        f"<tr><td>{escape(m.model)}</td><td>{fmt.count(m.requests)}</td>"
        f"<td>{fmt.tokens(m.original_tokens)}</td><td>{fmt.tokens(m.forwarded_tokens)}</td>"
        f"<td>{fmt.tokens(m.saved_tokens)}</td>"
        f"<td>{'n/a' if m.price_per_million is None else f'${m.price_per_million:g}'}</td>"
        f"<td>{fmt.money(m.dollars_saved)}</td></tr>"
        for m in s.models
    )
    skip_rows = "".join(
        f"<tr><td>{escape(reason)}</td><td>{fmt.count(n)}</td></tr>"
        for reason, n in s.skips.items()
    ) or ('<tr><td colspan="2">No skipped requests.</td></tr>')
    unpriced = (
        f'<p class="note">No price for: {escape(", ".join(s.unpriced_models))} '
        "(not counted in money saved).</p>"
        if s.unpriced_models
        else ""
    )
    shadow = (
        f"<div><dt>Shadow mode would save</dt><dd>{fmt.tokens(s.would_save_tokens)}</dd></div>"
        if s.shadow_requests
        else ""
    )
    back = (
        (
            '<p><a href="/dashboard?'
            + escape(urlencode({"period": s.period}))
            + '">← All tenants</a></p>'
        )
        if viewer.admin
        else ""
    )
    main = (
        f'{back}<h2>Tenant <span id="tenant-name">{escape(s.tenant)}</span> · '
        f"{_PERIOD_NAMES[s.period]}</h2>"
        f"<p>{_scope_badge(shared)}</p>"
        f"{_periods_nav(s.period, {'tenant': s.tenant} if viewer.admin else {})}"
        + (f'<p class="error">{escape(price_note)}</p>' if price_note else "")
        + '<dl class="kpis" id="kpis">'
        f'<div><dt>Tokens saved</dt><dd id="saved-tokens">{fmt.tokens(s.saved_tokens)}</dd></div>'
        f"<div><dt>Saved share</dt><dd>{fmt.percent(s.saved_fraction)}</dd></div>"
        f'<div><dt>Money saved, net of provider caching</dt><dd id="money-saved" '
        f'title="${s.dollars_saved:.6f}">{fmt.money(s.dollars_saved)}</dd></div>'
        f'<div><dt>Input billed / sent directly (est.)</dt><dd id="money-billed">'
        f"{fmt.money(s.billed_dollars)} / {fmt.money(s.direct_dollars)}</dd></div>"
        f'<div><dt>Provider-cached share</dt><dd id="provider-cached">'
        f"{fmt.percent(s.provider_cached_fraction)}</dd></div>"
        f'<div><dt>Requests</dt><dd id="requests">{fmt.count(s.requests)}</dd></div>'
        f"<div><dt>Compressed requests</dt><dd>{fmt.count(s.compressed_requests)}</dd></div>"
        f"<div><dt>Cache hit rate</dt><dd>{fmt.percent(s.cache_hit_rate)}</dd></div>"
        f"<div><dt>Compression p50 / p99 ≈</dt><dd>{fmt.duration_ms(p50)} / "
        f"{fmt.duration_ms(p99)}</dd></div>{shadow}</dl>"
        '<section class="card" aria-labelledby="tokens-h"><h3 id="tokens-h">Original vs '
        f"forwarded tokens ({'hourly' if hourly else 'daily'}, UTC)</h3>"
        '<p class="legend" aria-hidden="true"><span class="orig"></span>original'
        '<span class="fwd"></span>forwarded (the difference is saved)</p>'
        f"{charts.tokens_over_time(s.points, hourly)}"
        "<details><summary>As a table</summary><table><thead><tr><th scope='col'>Bucket (UTC)"
        "</th><th scope='col'>Requests</th><th scope='col'>Original</th>"
        f"<th scope='col'>Forwarded</th></tr></thead><tbody>{series_rows}</tbody></table>"
        "</details></section>"
        '<div class="grid2">'
        + _histogram_section(
            "Achieved compression rate",
            s.rates,
            _compact_labels(s.rates, lambda e: f"{e:g}"),
            "rates",
            "Forwarded / original tokens of each compressed request (lower saves more).",
        )
        + _histogram_section(
            "Compression latency (ms)",
            s.latency_ms,
            _compact_labels(s.latency_ms, _short_ms),
            "latency",
            _APPROX,
        )
        + "</div>"
        '<section class="card"><table id="models"><caption>Per model'
        "</caption><thead><tr><th scope='col'>Model</th><th scope='col'>Requests</th>"
        "<th scope='col'>Original</th><th scope='col'>Forwarded</th><th scope='col'>Saved</th>"
        "<th scope='col'>$ / 1M in</th><th scope='col'>Est. $ saved</th></tr></thead>"
        f"<tbody>{model_rows}</tbody></table>{unpriced}</section>"
        '<div class="grid2"><section class="card"><table id="skips">'
        "<caption>Skip reasons</caption><thead><tr>"
        "<th scope='col'>Reason</th><th scope='col'>Requests</th></tr></thead>"
        f"<tbody>{skip_rows}</tbody></table></section>"
        f"{_policy_section(tenant)}</div>"
    )
    return _layout(f"Tenant {s.tenant}", main, viewer)
