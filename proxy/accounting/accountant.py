"""Accounting: one ``UsageRecord`` per request goes to the ledger and the metrics together.

The relay calls ``record`` once an answer is complete (or the client left), with the
upstream's own usage filled in; neither sink may fail a request.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime

from proxy.accounting.ledger import HourBucket, Ledger, LedgerRow, LedgerUnavailable, UsageRecord
from proxy.accounting.metrics import Metrics
from proxy.core.safetext import safe_text
from proxy.store.redis import BackendStatus

__all__ = ["Accountant"]

_log = logging.getLogger("linguagate.accounting")


class Accountant:
    """A ``Ledger`` that also feeds ``Metrics``; reads go to the ledger."""

    def __init__(self, ledger: Ledger, metrics: Metrics) -> None:
        self.ledger = ledger
        self.metrics = metrics

    async def record(self, rec: UsageRecord) -> None:
        rec = _safe(rec)
        try:
            self.metrics.observe(rec)
        except Exception as exc:  # metrics must never cost a request or its ledger entry
            _log.error("metrics observe failed: %s", type(exc).__name__)
        await self.ledger.record(rec)

    async def totals(self, tenant: str | None = None,
                     since: datetime | None = None) -> list[LedgerRow]:
        return await self.ledger.totals(tenant, since)

    async def series(self, tenant: str | None, since: datetime,
                     until: datetime | None = None) -> list[HourBucket]:
        """The ledger's hourly buckets (``MemoryLedger.series``/``RedisLedger.series``)."""
        read = getattr(self.ledger, "series", None)
        if read is None:  # a ledger without hourly buckets (a test double)
            raise LedgerUnavailable("this ledger keeps no hourly series")
        buckets: list[HourBucket] = await read(tenant, since, until)
        return buckets

    def status(self) -> BackendStatus:
        return self.ledger.status()

    async def close(self) -> None:
        await self.ledger.close()


def _safe(rec: UsageRecord) -> UsageRecord:
    """`rec` with every string that becomes a label, key or ledger field made encodable and
    bounded (the model name is the client's): one bad record must never break the sinks."""
    reason = safe_text(rec.skip_reason) if rec.skip_reason is not None else None
    safe = (safe_text(rec.tenant), safe_text(rec.model), safe_text(rec.outcome), reason)
    if safe == (rec.tenant, rec.model, rec.outcome, rec.skip_reason):
        return rec
    tenant, model, outcome, reason = safe
    return dataclasses.replace(
        rec, tenant=tenant, model=model, outcome=outcome, skip_reason=reason
    )
