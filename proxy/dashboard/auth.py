"""Who is looking at the dashboard: a session cookie (pages) or a Bearer key (scripts).

Both resolve against the *current* policies on every request, so a hot reload that
removes a tenant, one of its keys, or its admin flag takes effect on the next click.
The anonymous tenant never signs in: the dashboard shows figures to key holders only.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from proxy.dashboard.sessions import SessionCodec
from proxy.policy.model import PolicySnapshot, Tenant, hash_api_key

__all__ = [
    "COOKIE",
    "Viewer",
    "clear_session_cookie",
    "is_same_origin",
    "set_session_cookie",
    "sign_in",
    "viewer_from_bearer",
    "viewer_from_cookie",
]

COOKIE = "linguagate_dashboard"
COOKIE_PATH = "/dashboard"


@dataclass(frozen=True)
class Viewer:
    """A signed-in key holder: its tenant as the current policies define it."""

    tenant: Tenant

    @property
    def admin(self) -> bool:
        return self.tenant.admin

    def may_see(self, tenant: str) -> bool:
        return self.admin or tenant == self.tenant.name


def sign_in(snapshot: PolicySnapshot, api_key: str) -> tuple[Tenant, bytes] | None:
    """The (non-anonymous) tenant listing this key, with the key's digest; else None."""
    if not api_key:
        return None
    digest = hash_api_key(api_key)
    found: Tenant | None = None
    for tenant in snapshot.tenants:
        for candidate in tenant.key_digests:  # every digest compared, as in authenticate()
            if hmac.compare_digest(candidate, digest) and found is None:
                found = tenant
    if found is None or found.anonymous:
        return None
    return found, digest


def viewer_from_cookie(
    request: Request, codec: SessionCodec, snapshot: PolicySnapshot
) -> Viewer | None:
    session = codec.read(request.cookies.get(COOKIE))
    if session is None:
        return None
    tenant = snapshot.tenant(session.tenant)
    if tenant is None or tenant.anonymous or not codec.key_still_valid(session, tenant.key_digests):
        return None
    return Viewer(tenant)


def viewer_from_bearer(request: Request, snapshot: PolicySnapshot) -> Viewer | None:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    found = sign_in(snapshot, key.strip())
    return Viewer(found[0]) if found else None


def _is_https(request: Request) -> bool:
    return request.url.scheme == "https"


def set_session_cookie(response: Response, request: Request, token: str, ttl_s: int) -> None:
    response.set_cookie(
        COOKIE,
        token,
        max_age=ttl_s,
        path=COOKIE_PATH,
        secure=_is_https(request),
        httponly=True,
        samesite="strict",
    )


def clear_session_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(
        COOKIE, path=COOKIE_PATH, secure=_is_https(request), httponly=True, samesite="strict"
    )


def is_same_origin(request: Request) -> bool:
    """CSRF guard for the dashboard's POSTs: refuse what a browser marks as cross-site.

    Browsers send ``Sec-Fetch-Site`` (the browser's own verdict) and ``Origin`` on every
    POST; a request with neither comes from a script, which holds the key anyway.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None:
        return True
    parts = urlsplit(origin)  # "null" (opaque origins) has no scheme: refused
    host = request.headers.get("host", "")
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()
