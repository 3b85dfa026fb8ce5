"""``linguagate report``: the savings ledger as a table, with estimated money saved.

Reads the Redis ledger (``--redis-url`` or ``LINGUAGATE_REDIS_URL``, in any form the proxy
takes: a server, ``rediss://`` TLS, a Sentinel service, a cluster); the in-memory ledger lives
inside a running proxy and is served there by ``GET /v1/linguagate/usage``.

Money is net of the provider's prompt cache (``proxy.accounting.cost``): the input cost as
billed (cached tokens at the cached price) against the estimated cost of sending the
original prompts directly. The built-in table holds public list prices (USD per 1M input
tokens, and per 1M cached input tokens) at the time of writing; pass ``--prices FILE``
(TOML or JSON: ``{"gpt-4o*": 2.5, ...}`` or ``{"gpt-4o*": {"input": 2.5, "cached_input":
1.25}}``, optionally under a ``prices`` table) to override or extend it. Patterns are
``fnmatch`` globs; the longest matching pattern wins, so ``gpt-4o-mini*`` beats ``gpt-4o*``.
A pattern given without a cached price keeps the built-in cached share of its family.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import json
import os
import re
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType

from proxy.accounting.cost import PromptBill, input_cost
from proxy.accounting.ledger import LedgerRow, LedgerUnavailable, RedisLedger
from proxy.store.redis import RedisSettings
from proxy.store.topology import parse_redis_url

__all__ = [
    "DEFAULT_PRICES",
    "PriceTable",
    "add_subcommand",
    "format_table",
    "load_prices",
    "parse_since",
    "run_report",
]

# USD per 1M input tokens (list prices, estimates; override with --prices).
DEFAULT_PRICES: Mapping[str, float] = MappingProxyType(
    {
        "gpt-5*": 1.25,
        "gpt-5-mini*": 0.25,
        "gpt-5-nano*": 0.05,
        "gpt-4.1*": 2.00,
        "gpt-4.1-mini*": 0.40,
        "gpt-4.1-nano*": 0.10,
        "gpt-4o*": 2.50,
        "gpt-4o-mini*": 0.15,
        "gpt-4*": 30.00,
        "gpt-4-turbo*": 10.00,
        "gpt-3.5-turbo*": 0.50,
        "o1*": 15.00,
        "o1-mini*": 1.10,
        "o3*": 2.00,
        "o3-mini*": 1.10,
        "o4-mini*": 1.10,
    }
)
# USD per 1M cached input tokens: GPT-5 family 10% of input, GPT-4.1 and o3/o4-mini 25%,
# GPT-4o and o1/o3-mini 50%. Models without prompt caching (gpt-4, gpt-3.5) bill it in full.
DEFAULT_CACHED_PRICES: Mapping[str, float] = MappingProxyType(
    {
        "gpt-5*": 0.125,
        "gpt-5-mini*": 0.025,
        "gpt-5-nano*": 0.005,
        "gpt-4.1*": 0.50,
        "gpt-4.1-mini*": 0.10,
        "gpt-4.1-nano*": 0.025,
        "gpt-4o*": 1.25,
        "gpt-4o-mini*": 0.075,
        "gpt-4*": 30.00,
        "gpt-4-turbo*": 10.00,
        "gpt-3.5-turbo*": 0.50,
        "o1*": 7.50,
        "o1-mini*": 0.55,
        "o3*": 0.50,
        "o3-mini*": 0.55,
        "o4-mini*": 0.275,
    }
)
_RELATIVE = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$", re.IGNORECASE)
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_REPORT_SETTINGS = RedisSettings(socket_timeout_s=5.0, connect_timeout_s=2.0, backoff_s=0.0)


def _default_shares() -> dict[str, float]:
    return {glob: DEFAULT_CACHED_PRICES[glob] / price for glob, price in DEFAULT_PRICES.items()
            if glob in DEFAULT_CACHED_PRICES and price > 0}


def _lookup(table: Mapping[str, float], model: str) -> tuple[str, float] | None:
    if model in table:
        return model, table[model]
    matches = [p for p in table if fnmatch.fnmatchcase(model.lower(), p.lower())]
    if not matches:
        return None
    best = max(matches, key=len)
    return best, table[best]


@dataclass(frozen=True)
class NetMoney:
    """Input money of a ledger row, net of the provider's prompt cache (USD)."""

    billed: float  # what the forwarded prompts cost, cached tokens at the cached price
    direct: float  # what sending the originals would have cost (estimated)

    @property
    def saved(self) -> float:
        return self.direct - self.billed


@dataclass(frozen=True)
class PriceTable:
    """Glob -> USD per 1M input tokens (and per 1M cached input tokens); longest glob wins."""

    prices: Mapping[str, float]
    # Glob -> cached-input price / input price (a pattern given an input price alone keeps
    # its family's share).
    cached_shares: Mapping[str, float] = field(default_factory=lambda: _default_shares())

    def price_for(self, model: str) -> float | None:
        found = _lookup(self.prices, model)
        return None if found is None else found[1]

    def cached_fraction(self, model: str) -> float:
        """The cached-input price as a share of the input price (1.0: no discount known)."""
        found = _lookup(self.cached_shares, model)
        return 1.0 if found is None else found[1]

    def dollars(self, model: str, tokens: int) -> float | None:
        price = self.price_for(model)
        return None if price is None else tokens * price / 1_000_000

    def bill(self, model: str, bill: PromptBill) -> float | None:
        price = self.price_for(model)
        return None if price is None else input_cost(bill, price, self.cached_fraction(model))

    def net(self, row: LedgerRow) -> NetMoney | None:
        """Billed against direct input money for ``row`` (None: unpriced or not recorded)."""
        price = self.price_for(row.model)
        if price is None or not row.billed_prompt_tokens:
            return None
        fraction = self.cached_fraction(row.model)
        return NetMoney(input_cost(row.billed, price, fraction),
                        input_cost(row.direct, price, fraction))


def load_prices(path: Path | None) -> PriceTable:
    """The default table, overridden by ``path`` (TOML or JSON) when given."""
    prices = dict(DEFAULT_PRICES)
    shares = _default_shares()
    if path is not None:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
        if isinstance(data, dict) and isinstance(data.get("prices"), dict):
            data = data["prices"]
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a table of model pattern = price")
        for model, value in data.items():
            entry: dict[str, object] = value if isinstance(value, dict) else {"input": value}
            full = _price(path, model, entry.get("input"))
            prices[str(model)] = full
            if entry.get("cached_input") is not None:
                cached = _price(path, model, entry["cached_input"])
                shares[str(model)] = min(1.0, cached / full) if full else 1.0
    return PriceTable(prices, shares)


def _price(path: Path, model: object, price: object) -> float:
    if isinstance(price, bool) or not isinstance(price, (int, float)) or price < 0:
        raise ValueError(f"{path}: price for {model!r} must be a number >= 0")
    return float(price)


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """``24h``, ``30m``, ``7d``, ``2w``, or an ISO date/datetime (naive means UTC)."""
    now = now or datetime.now(UTC)
    try:
        if m := _RELATIVE.match(value):
            return now - timedelta(**{_UNITS[m.group(2).lower()]: int(m.group(1))})
        at = datetime.fromisoformat(value.strip())
        # In UTC now: converting later (hour buckets) could overflow near year 1 or 9999.
        return at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)
    except OverflowError:  # 999999d, or an offset that leaves the datetime range
        raise ValueError(f"--since: {value[:64]!r} is out of range") from None
    except ValueError:
        raise ValueError(
            f"--since: {value[:64]!r} is neither an ISO date nor like 24h, 7d"
        ) from None


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value:,.2f}"


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def format_table(rows: Sequence[LedgerRow], prices: PriceTable) -> str:
    """Aligned text table, one line per (tenant, model), plus a total line.

    Money is input money net of the provider's prompt cache: ``billed $`` is what the
    forwarded prompts cost (cached tokens at the cached price), ``direct $`` what sending the
    originals would have cost, ``net $ saved`` the difference (negative: compression cost
    more than it saved). ``cached %`` is the share of billed prompt tokens the provider
    served from its cache.
    """
    header = ["tenant", "model", "requests", "original", "forwarded", "saved", "saved %",
              "cached %", "billed $", "direct $", "net $ saved"]
    lines: list[list[str]] = [header]
    totals: list[float | None] = [None, None]
    for r in rows:
        money = prices.net(r)
        if money is not None:
            totals = [(totals[0] or 0.0) + money.billed, (totals[1] or 0.0) + money.direct]
        lines.append([
            r.tenant, r.model, f"{r.requests:,}", f"{r.original_tokens:,}",
            f"{r.forwarded_tokens:,}", f"{r.saved_tokens:,}", f"{100 * r.saved_fraction:.1f}%",
            _share(r.billed_cached_tokens, r.billed_prompt_tokens),
            _money(money.billed if money else None), _money(money.direct if money else None),
            _money(money.saved if money else None),
        ])
    if len(rows) > 1:
        orig = sum(r.original_tokens for r in rows)
        saved = sum(r.saved_tokens for r in rows)
        billed, direct = totals
        lines.append([
            "TOTAL", "", f"{sum(r.requests for r in rows):,}", f"{orig:,}",
            f"{sum(r.forwarded_tokens for r in rows):,}", f"{saved:,}",
            f"{100 * saved / orig if orig else 0.0:.1f}%",
            _share(sum(r.billed_cached_tokens for r in rows),
                   sum(r.billed_prompt_tokens for r in rows)),
            _money(billed), _money(direct),
            _money(None if billed is None or direct is None else direct - billed),
        ])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        cells = [
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    for r in (r for r in rows if r.shadow_requests):
        would = prices.bill(r.model, r.would) if r.would_prompt_tokens else None
        actual = prices.bill(r.model, r.billed) if r.billed_prompt_tokens else None
        net = None if would is None or actual is None else actual - would
        out.append(
            f"shadow: {r.tenant}/{r.model} would have saved {r.would_save_tokens:,} "
            f"tokens in {r.shadow_requests:,} requests ({_money(net)} net of provider caching)"
        )
    return "\n".join(out)


async def _read(url: str, tenant: str | None, since: datetime | None) -> list[LedgerRow]:
    ledger = RedisLedger.from_url(url, _REPORT_SETTINGS)
    try:
        return await ledger.totals(tenant, since)
    finally:
        await ledger.close()


def _read_proxy(base: str, key: str | None, tenant: str | None, since: str | None
                ) -> list[LedgerRow]:
    """The ledger as a running proxy serves it (``GET /v1/linguagate/usage``): the way to
    read an in-memory ledger, and a tenant key's own view."""
    import httpx

    params = {k: v for k, v in (("tenant", tenant), ("since", since)) if v}
    headers = {"authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.get(base.rstrip("/") + "/v1/linguagate/usage", params=params,
                             headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        raise LedgerUnavailable(f"cannot reach the proxy at {base}: {exc}") from exc
    if response.status_code != 200:
        raise LedgerUnavailable(f"the proxy answered {response.status_code}: {response.text[:200]}")
    return [LedgerRow(**row) for row in response.json()["data"]]


def run_report(args: argparse.Namespace) -> int:
    """Entry point of ``linguagate report`` (exit status)."""
    url = args.redis_url or os.environ.get("LINGUAGATE_REDIS_URL")
    if args.proxy:
        try:
            prices = load_prices(args.prices)
            rows = _read_proxy(args.proxy, args.key or os.environ.get("LINGUAGATE_KEY"),
                               args.tenant, args.since)
        except (OSError, ValueError, LedgerUnavailable) as exc:
            print(f"linguagate report: {exc}", file=sys.stderr)
            return 1
        return _print(rows, prices, args.json, None)
    if not url:
        print(
            "linguagate report: no ledger to read: pass --redis-url (or set "
            "LINGUAGATE_REDIS_URL); without Redis the ledger lives in the serving process "
            "(GET /v1/linguagate/usage)",
            file=sys.stderr,
        )
        return 2
    try:
        parse_redis_url(url)
        since = parse_since(args.since) if args.since else None
        prices = load_prices(args.prices)
    except (OSError, ValueError) as exc:
        print(f"linguagate report: {exc}", file=sys.stderr)
        return 2
    try:
        rows = asyncio.run(_read(url, args.tenant, since))
    except LedgerUnavailable as exc:
        print(f"linguagate report: {exc}", file=sys.stderr)
        return 1
    return _print(rows, prices, args.json, since)


def _print(rows: list[LedgerRow], prices: PriceTable, as_json: bool,
           since: datetime | None) -> int:
    if as_json:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
    elif not rows:
        print("no usage recorded" + (f" since {since:%Y-%m-%d %H:00} UTC" if since else ""))
    else:
        print(format_table(rows, prices))
    return 0


def add_subcommand(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``report`` on the ``linguagate`` subparsers."""
    report = sub.add_parser(
        "report",
        help="print the savings ledger per tenant and model",
        description="Print requests, original/forwarded/saved prompt tokens and estimated money "
        "saved per tenant and model, from the Redis ledger. --since uses hourly buckets "
        "(kept 30 days); without it, all-time totals.",
    )
    report.add_argument(
        "--redis-url",
        metavar="URL",
        help="Redis holding the ledger, in any form serve takes: redis://, rediss://, "
        "redis+sentinel://h:26379,h:26380/service, redis+cluster://h:7000,h:7001 "
        "(default: LINGUAGATE_REDIS_URL)",
    )
    report.add_argument(
        "--proxy",
        metavar="URL",
        help="read from a running proxy instead (e.g. http://127.0.0.1:8080): the way to see an "
        "in-memory ledger; needs --key (or LINGUAGATE_KEY): an admin key sees every tenant",
    )
    report.add_argument("--key", metavar="KEY", help="proxy API key for --proxy")
    report.add_argument("--tenant", metavar="T", help="only this tenant")
    report.add_argument(
        "--since",
        metavar="D",
        help="ISO date/datetime (UTC when naive) or relative: 30m, 24h, 7d, 2w",
    )
    report.add_argument(
        "--prices",
        type=Path,
        metavar="FILE",
        help="TOML/JSON table of model glob = USD per 1M input tokens",
    )
    report.add_argument("--json", action="store_true", help="print rows as JSON")
    report.set_defaults(func=run_report)
