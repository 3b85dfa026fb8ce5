"""The dashboard's endpoints under ``/dashboard``: pages, sign-in/out, JSON for scripts.

====================================  ==========================================================
``GET  /dashboard``                   sign-in form; then all tenants (admin) or one tenant
                                      (``?tenant=&period=24h|7d|30d&sort=&dir=``)
``POST /dashboard/login``             form field ``key``; sets the session cookie, 303 back
``POST /dashboard/logout``            clears the cookie
``GET  /dashboard/api/summary``       one tenant's figures (``?tenant=&period=``), JSON
``GET  /dashboard/api/tenants``       every tenant's figures (admin), JSON
``GET  /dashboard/style.css``         the stylesheet
====================================  ==========================================================

The JSON endpoints accept the session cookie or ``Authorization: Bearer <proxy key>``.
A tenant asking for another tenant (or one that does not exist) gets the same 403 with no
figures, so names cannot be probed. Pages answer errors in HTML, the API in the OpenAI
error shape.
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from proxy.accounting.ledger import HourBucket, LedgerUnavailable
from proxy.accounting.report import PriceTable, load_prices
from proxy.core.errors import (
    AuthenticationFailed,
    InvalidParameter,
    NotFound,
    PermissionDenied,
    ProxyError,
    error_response,
)
from proxy.dashboard import pages
from proxy.dashboard.assets import STYLESHEET
from proxy.dashboard.auth import (
    Viewer,
    clear_session_cookie,
    is_same_origin,
    set_session_cookie,
    sign_in,
    viewer_from_bearer,
    viewer_from_cookie,
)
from proxy.dashboard.data import PERIODS, Summary, Window, summarize, summarize_all, window
from proxy.dashboard.sessions import SessionCodec
from proxy.gateway.intake import request_id_for
from proxy.gateway.state import Services

__all__ = ["dashboard_routes"]

_log = logging.getLogger("linguagate.dashboard")
_MAX_FORM_BYTES = 8192
_HEADERS: tuple[tuple[str, str], ...] = (
    ("cache-control", "no-store"),
    ("x-content-type-options", "nosniff"),
    # Not "no-referrer": with it, browsers send `Origin: null` on the sign-in POST.
    ("referrer-policy", "same-origin"),
    ("x-frame-options", "DENY"),
    (
        "content-security-policy",
        "default-src 'none'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
)


class _Problem(Exception):
    """An error the page shows in HTML and the API in the OpenAI shape."""

    def __init__(self, status: int, title: str, error: ProxyError) -> None:
        super().__init__(error.message)
        self.status = status
        self.title = title
        self.error = error


def _services(request: Request) -> Services:
    services: Services = request.state.services
    return services


class _Dashboard:
    """The endpoints, sharing one per-app fallback secret (used when settings carry none:
    a single process, whose sessions then end with it)."""

    def __init__(self) -> None:
        self._fallback_secret = secrets.token_bytes(32)

    def codec(self, services: Services) -> SessionCodec:
        configured = services.settings.dashboard_secret
        secret = configured.encode() if configured else self._fallback_secret
        return SessionCodec(secret, services.settings.dashboard_session_ttl_s)

    # ---- pages -------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        services = _services(request)
        snapshot = services.policies.current
        viewer = viewer_from_cookie(request, self.codec(services), snapshot)
        if viewer is None:
            response = _html(pages.sign_in_page())
            if request.cookies:
                clear_session_cookie(response, request)  # an expired or revoked session
            return response
        try:
            params = request.query_params
            period = _period(params.get("period"))
            wanted = params.get("tenant")
            if wanted is None and viewer.admin:
                return await self._overview(request, viewer, period)
            summary, shared = await self._summary(services, viewer, wanted, period)
        except _Problem as problem:
            return _html(
                pages.error_page(problem.title, problem.error.message, viewer), problem.status
            )
        prices_note = _price_problem(services)
        tenant = snapshot.tenant(summary.tenant)
        return _html(pages.tenant_page(summary, tenant, shared, viewer, prices_note))

    async def _overview(self, request: Request, viewer: Viewer, period: str) -> Response:
        services = _services(request)
        rows, shared = await self._all(services, period)
        sort = request.query_params.get("sort", "saved")
        sort = sort if sort in pages.SORT_KEYS else "saved"
        descending = request.query_params.get("dir", "desc") != "asc"
        rows = pages.sort_summaries(rows, sort, descending)
        return _html(pages.overview_page(rows, period, sort, descending, shared, viewer))

    async def login(self, request: Request) -> Response:
        services = _services(request)
        if not is_same_origin(request):
            return _html(pages.error_page("Forbidden", "Cross-site sign-in refused.", None), 403)
        form = await _form(request)
        found = sign_in(services.policies.current, form.get("key", ""))
        if found is None:
            return _html(pages.sign_in_page("That key does not open the dashboard."), 401)
        tenant, digest = found
        codec = self.codec(services)
        response = RedirectResponse("/dashboard", status_code=303)
        set_session_cookie(response, request, codec.issue(tenant.name, digest), codec.ttl_s)
        _log.info("dashboard sign-in: tenant=%s admin=%s", tenant.name, tenant.admin)
        return _secure(response)

    async def logout(self, request: Request) -> Response:
        if not is_same_origin(request):
            return _html(pages.error_page("Forbidden", "Cross-site sign-out refused.", None), 403)
        response = RedirectResponse("/dashboard", status_code=303)
        clear_session_cookie(response, request)
        return _secure(response)

    async def stylesheet(self, request: Request) -> Response:
        return Response(
            STYLESHEET,
            media_type="text/css",
            headers={"cache-control": "max-age=3600", "x-content-type-options": "nosniff"},
        )

    # ---- JSON ---------------------------------------------------------------------------

    def _api_viewer(self, request: Request) -> Viewer:
        services = _services(request)
        snapshot = services.policies.current
        viewer = viewer_from_bearer(request, snapshot) or viewer_from_cookie(
            request, self.codec(services), snapshot
        )
        if viewer is None:
            raise _Problem(
                401,
                "Sign in",
                AuthenticationFailed(
                    "Sign in to the dashboard or send a proxy key as a Bearer token.",
                    code="invalid_api_key",
                ),
            )
        return viewer

    async def api_summary(self, request: Request) -> Response:
        services = _services(request)
        try:
            viewer = self._api_viewer(request)
            period = _period(request.query_params.get("period"))
            summary, shared = await self._summary(
                services, viewer, request.query_params.get("tenant"), period
            )
        except _Problem as problem:
            return _api_error(problem, request)
        body = {
            "object": "linguagate.dashboard.summary",
            "scope": _scope(shared),
            **summary.to_dict(),
        }
        return _secure(JSONResponse(body))

    async def api_tenants(self, request: Request) -> Response:
        services = _services(request)
        try:
            viewer = self._api_viewer(request)
            if not viewer.admin:
                raise _Problem(
                    403, "Forbidden", PermissionDenied("Only an admin key lists every tenant.")
                )
            period = _period(request.query_params.get("period"))
            rows, shared = await self._all(services, period)
        except _Problem as problem:
            return _api_error(problem, request)
        sort = request.query_params.get("sort", "saved")
        descending = request.query_params.get("dir", "desc") != "asc"
        rows = pages.sort_summaries(rows, sort, descending)
        body = {
            "object": "linguagate.dashboard.tenants",
            "period": period,
            "scope": _scope(shared),
            "data": [r.to_dict() for r in rows],
        }
        return _secure(JSONResponse(body))

    # ---- data ---------------------------------------------------------------------------

    async def _summary(
        self, services: Services, viewer: Viewer, wanted: str | None, period: str
    ) -> tuple[Summary, bool]:
        name = wanted if wanted is not None else viewer.tenant.name
        if not viewer.may_see(name):
            # The same answer for a tenant that exists and one that does not: no probing.
            raise _Problem(
                403, "Forbidden", PermissionDenied("A tenant key can only see its own tenant.")
            )
        win = window(period, datetime.now(UTC))
        buckets, shared = await _read(services, name, win)
        if services.policies.current.tenant(name) is None and not buckets:
            raise _Problem(404, "Not found", NotFound(f"No tenant called {name!r}."))
        return summarize(name, buckets, win, _prices(services)), shared

    async def _all(self, services: Services, period: str) -> tuple[list[Summary], bool]:
        win = window(period, datetime.now(UTC))
        buckets, shared = await _read(services, None, win)
        names = [t.name for t in services.policies.current.tenants]
        return summarize_all(names, buckets, win, _prices(services)), shared


async def _read(
    services: Services, tenant: str | None, win: Window
) -> tuple[list[HourBucket], bool]:
    ledger = services.ledger
    if ledger is None:
        return [], False
    series = getattr(ledger, "series", None)
    try:
        if series is None:
            raise LedgerUnavailable("no hourly series")
        buckets: list[HourBucket] = await series(tenant, win.since)
    except LedgerUnavailable as exc:
        raise _Problem(
            503,
            "Ledger unavailable",
            ProxyError(
                "The usage ledger is unavailable; try again shortly.", code="ledger_unavailable"
            ),
        ) from exc
    return buckets, ledger.status().backend == "redis"


def _prices(services: Services) -> PriceTable:
    try:
        return load_prices(services.settings.prices_path)
    except (OSError, ValueError):
        return load_prices(None)


def _price_problem(services: Services) -> str | None:
    path = services.settings.prices_path
    if path is None:
        return None
    try:
        load_prices(path)
    except (OSError, ValueError) as exc:
        return f"The price file could not be read ({type(exc).__name__}); list prices are shown."
    return None


def _period(raw: str | None) -> str:
    if raw is None:
        return "24h"
    if raw not in PERIODS:
        raise _Problem(
            400,
            "Bad period",
            InvalidParameter(f"period must be one of {', '.join(PERIODS)}.", param="period"),
        )
    return raw


def _scope(shared: bool) -> str:
    return "shared" if shared else "this_process"


async def _form(request: Request) -> dict[str, str]:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM_BYTES:
            return {}
    try:
        parsed = parse_qs(body.decode("utf-8"), max_num_fields=8)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {k: v[0] for k, v in parsed.items() if v}


def _api_error(problem: _Problem, request: Request) -> Response:
    response = error_response(problem.error, request_id_for(request))
    response.status_code = problem.status
    if problem.status == 503:
        response.headers["retry-after"] = "5"
    return _secure(response)


def _secure(response: Response) -> Response:
    for name, value in _HEADERS:
        response.headers.setdefault(name, value)
    return response


def _html(text: str, status: int = 200) -> Response:
    return _secure(HTMLResponse(text, status_code=status))


async def _to_dashboard(request: Request) -> Response:
    return RedirectResponse("/dashboard", status_code=308)


def dashboard_routes() -> list[BaseRoute]:
    """The dashboard's routes (a fresh set, with its own fallback secret, per app)."""
    d = _Dashboard()
    return [
        Route("/dashboard", d.page, methods=["GET", "HEAD"]),
        Route("/dashboard/", _to_dashboard, methods=["GET", "HEAD"]),
        Route("/dashboard/login", d.login, methods=["POST"]),
        Route("/dashboard/logout", d.logout, methods=["POST"]),
        Route("/dashboard/style.css", d.stylesheet, methods=["GET", "HEAD"]),
        Route("/dashboard/api/summary", d.api_summary, methods=["GET"]),
        Route("/dashboard/api/tenants", d.api_tenants, methods=["GET"]),
    ]
