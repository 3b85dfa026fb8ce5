"""Histogram arithmetic for the ledger's non-cumulative bucket counters.

A quantile from bucket counts is approximate: within the bucket holding the wanted rank
values are assumed spread evenly between its bounds (the estimate Prometheus'
``histogram_quantile`` makes). The pages say so next to every percentile.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Histogram", "histogram"]


@dataclass(frozen=True)
class Histogram:
    """Counts per bucket; ``edges[i]`` is bucket i's inclusive upper bound, the last is +inf."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.counts)

    def quantile(self, q: float) -> float | None:
        """Approximate ``q``-quantile (0 < q <= 1); None when empty. A rank in the open top
        bucket answers with the highest finite bound (the true value is above it)."""
        total = self.total
        if total == 0:
            return None
        rank = q * total
        seen = 0
        for i, n in enumerate(self.counts):
            if n and seen + n >= rank:
                lower = self.edges[i - 1] if i > 0 else 0.0
                upper = self.edges[i]
                if math.isinf(upper):
                    return lower
                return lower + (upper - lower) * max(rank - seen, 0.0) / n
            seen += n
        return self.edges[-2] if len(self.edges) > 1 else None

    def labels(self, unit: str = "") -> list[str]:
        """``≤ 0.1``, ..., ``> 60000`` bucket labels (with ``unit`` appended)."""
        out = []
        for i, edge in enumerate(self.edges):
            if math.isinf(edge):
                out.append(f"> {self.edges[i - 1]:g}{unit}" if i else "all")
            else:
                out.append(f"≤ {edge:g}{unit}")
        return out

    def to_dict(self) -> list[dict[str, float | int | None]]:
        """JSON form: ``[{"le": 0.1, "count": 3}, ..., {"le": null, "count": 0}]``."""
        return [
            {"le": None if math.isinf(e) else e, "count": c}
            for e, c in zip(self.edges, self.counts, strict=True)
        ]


def histogram(prefix: str, edges: Sequence[float], counters: Mapping[str, float]) -> Histogram:
    """Read the ``prefix<le>`` counters (named by ``proxy.accounting.ledger.histogram_field``)."""
    bounds = (*edges, math.inf)
    counts = tuple(
        int(counters.get(f"{prefix}{'inf' if math.isinf(e) else f'{e:g}'}", 0)) for e in bounds
    )
    return Histogram(tuple(bounds), counts)
