"""Read-only surfaces over the accounting: ``GET /metrics`` and ``GET /v1/linguagate/usage``.

``/metrics`` is an operator surface: only a key of a tenant marked ``admin = true``
reads it (the anonymous tenant never does). ``/v1/linguagate/usage`` shows a tenant
its own ledger rows and nothing else; an admin may pass ``?tenant=NAME`` or see all.
Each worker process has its own Prometheus registry; the ledger (in Redis) is the
cross-replica source of truth.
"""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.accounting.ledger import LedgerUnavailable
from proxy.accounting.report import parse_since
from proxy.core.errors import InvalidParameter, PermissionDenied, ProxyError, error_response
from proxy.gateway.intake import authenticate, request_id_for
from proxy.gateway.state import Services
from proxy.policy.model import Tenant

__all__ = ["metrics_endpoint", "usage_endpoint"]


def _admin(request: Request, services: Services) -> Tenant:
    tenant = authenticate(request, services.policies.current)
    if not tenant.admin or tenant.anonymous:
        raise PermissionDenied("This endpoint needs an admin key.")
    return tenant


async def metrics_endpoint(request: Request, services: Services) -> Response:
    request_id = request_id_for(request)
    try:
        _admin(request, services)
    except ProxyError as exc:
        return error_response(exc, request_id)
    if services.metrics is None:
        return Response(b"", media_type="text/plain")
    body, content_type = services.metrics.render()
    return Response(body, headers={"content-type": content_type})


async def usage_endpoint(request: Request, services: Services) -> Response:
    request_id = request_id_for(request)
    try:
        tenant = authenticate(request, services.policies.current)
        wanted = request.query_params.get("tenant")
        if wanted is not None and wanted != tenant.name and not tenant.admin:
            # Same answer as for a tenant that does not exist: no probing of names.
            raise PermissionDenied("A tenant key can only read its own usage.")
        scope = wanted if tenant.admin else tenant.name
        since = _since(request.query_params.get("since"))
    except ProxyError as exc:
        return error_response(exc, request_id)
    ledger = services.ledger  # the Accountant: ledger reads, metrics on the side
    if ledger is None:
        rows = []
    else:
        try:
            rows = await ledger.totals(scope, since)
        except LedgerUnavailable:
            body = {"error": {"message": "The usage ledger is unavailable; try again.",
                              "type": "server_error", "param": None, "code": "ledger_unavailable"}}
            return JSONResponse(body, status_code=503,
                                headers={"retry-after": "5", "x-request-id": request_id})
    backend = ledger.status().backend if ledger is not None else "none"
    payload = {
        "object": "linguagate.usage",
        "tenant": scope,
        "since": since.isoformat() if since else None,
        # Without Redis the figures are this process's only (other workers keep their own).
        "scope": "shared" if backend == "redis" else "this_process",
        "data": [row.to_dict() for row in rows],
    }
    return JSONResponse(payload, headers={"x-request-id": request_id})


def _since(raw: str | None) -> datetime | None:
    if raw is None:
        return None
    try:
        return parse_since(raw, now=datetime.now(UTC))
    except ValueError as exc:
        raise InvalidParameter(f"Invalid 'since': {exc}", param="since") from None
