"""The savings dashboard: HTML pages and JSON endpoints under ``/dashboard``.

Modules, one concept each: ``sessions`` (signed, expiring session tokens), ``auth`` (who is
looking: cookie or Bearer key, CSRF origin check), ``stats`` (histogram percentiles),
``data`` (ledger buckets summed into per-period figures), ``fmt`` (numbers for people),
``charts`` (server-rendered SVG), ``pages`` (HTML), ``routes`` (the Starlette endpoints).
"""

from __future__ import annotations

from proxy.dashboard.routes import dashboard_routes

__all__ = ["dashboard_routes"]
