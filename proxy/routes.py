"""HTTP routes: thin handlers that pick the `Services` off the request and delegate.

`POST /v1/chat/completions` goes through the pipeline; every other `/v1/*` path and method is
relayed as it is; `/healthz` says the process is up; `/readyz` reports each component.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from proxy.core.errors import NotFound, ProxyError, error_response
from proxy.dashboard import dashboard_routes
from proxy.gateway.intake import admit, forward_request, request_id_for, started_at
from proxy.gateway.pipeline import chat_completions, parse_completion_body
from proxy.gateway.state import ComponentStatus, Services
from proxy.gateway.streaming import UpstreamRelay

__all__ = ["dispatch_v1", "routes"]

_log = logging.getLogger("linguagate.routes")

_USAGE_PATH = "/v1/linguagate/usage"
_ALL_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _services(request: Request) -> Services:
    services: Services = request.state.services
    return services


async def _chat(request: Request) -> Response | UpstreamRelay:
    return await chat_completions(request, _services(request))


async def _completions(request: Request) -> Response | UpstreamRelay:
    return await chat_completions(request, _services(request), parse_completion_body)


async def _passthrough(request: Request) -> Response | UpstreamRelay:
    """Any other `/v1/*` request: authenticated, then forwarded byte for byte."""
    services = _services(request)
    started = started_at(request)
    request_id = request_id_for(request)
    snapshot = services.policies.current
    try:
        tenant, raw = await admit(request, snapshot, services.settings.max_body_bytes)
    except ProxyError as exc:
        return error_response(exc, request_id)
    forward = forward_request(
        request,
        services.upstream,
        content=raw,
        request_id=request_id,
        response_headers=[(b"x-linguagate-tenant", tenant.name.encode())],
        # Cheap and safe: asking for identity only costs compression of a small body.
        streaming=b'"stream"' in raw,
        started=started,
        snapshot=snapshot,
    )
    return UpstreamRelay(services.upstream, forward)


async def _metrics(request: Request) -> Response:
    from proxy.dashboard.reporting import metrics_endpoint

    return await metrics_endpoint(request, _services(request))


async def _usage(request: Request) -> Response:
    from proxy.dashboard.reporting import usage_endpoint

    return await usage_endpoint(request, _services(request))


async def _healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _readyz(request: Request) -> Response:
    """200 when this process can serve; a body reporting every component either way."""
    services = _services(request)
    report: dict[str, Any] = {}
    ready = True
    try:
        snapshot = services.policies.current
        report["policies"] = {"status": "ok", "tenants": len(snapshot.tenants)}
    except RuntimeError:
        report["policies"] = {"status": "not_loaded"}
        ready = False
    names = ["upstream", *services.probes]
    results = await asyncio.gather(
        _upstream_status(services), *(probe() for probe in services.probes.values())
    )
    for name, status in zip(names, results, strict=True):
        report[name] = {
            "status": status.status,
            **({"detail": status.detail} if status.detail else {}),
            **(dict(status.info) if status.info else {}),
        }
        ready = ready and (status.ok or not status.required)
    for name in ("redis", "model"):
        report.setdefault(name, {"status": "not_configured"})
    report = {"status": "ready" if ready else "not_ready", **report}
    return JSONResponse(report, status_code=200 if ready else 503)


async def _upstream_status(services: Services) -> ComponentStatus:
    result = await services.upstream.probe()
    return ComponentStatus("ok" if result.reachable else "unreachable", detail=result.detail)


async def _not_found(request: Request) -> Response:
    return error_response(NotFound(f"Unknown path: {request.url.path}"), request_id_for(request))


async def dispatch_v1(scope: Scope, receive: Receive, send: Send) -> None:
    """The `/v1/*` fast path (see `proxy.app.ProxyApp`): chat pipeline or pass-through."""
    request = Request(scope, receive, send)
    services: Services = scope["state"]["services"]
    try:
        if scope["method"] == "POST" and scope["path"] == "/v1/chat/completions":
            response = await chat_completions(request, services)
        elif scope["method"] == "POST" and scope["path"] == "/v1/completions":
            response = await chat_completions(request, services, parse_completion_body)
        elif scope["path"] == _USAGE_PATH and scope["method"] in ("GET", "HEAD"):
            response = await _usage(request)
        else:
            response = await _passthrough(request)
    except Exception as exc:  # the envelope clients expect, not a bare text/plain 500
        _log.exception("unhandled error (request_id unknown): %s", type(exc).__name__)
        response = error_response(ProxyError("Internal proxy error."), request_id_for(request))
    await response(scope, receive, send)


def routes() -> list[BaseRoute]:
    """The route table (a fresh list per app)."""
    # /v1/* normally never reaches these two (ProxyApp dispatches it first); they keep a
    # plain Starlette(routes=routes()) complete.
    return [
        Route("/v1/chat/completions", _chat, methods=["POST"]),
        Route("/v1/completions", _completions, methods=["POST"]),
        Route(_USAGE_PATH, _usage, methods=["GET", "HEAD"]),
        Route("/v1/{path:path}", _passthrough, methods=list(_ALL_METHODS)),
        Route("/healthz", _healthz, methods=["GET", "HEAD"]),
        Route("/readyz", _readyz, methods=["GET", "HEAD"]),
        Route("/metrics", _metrics, methods=["GET"]),
        *dashboard_routes(),
        Route("/{path:path}", _not_found, methods=list(_ALL_METHODS)),
    ]
