"""The client side of a request: its id, its body (bounded), its tenant, and the forward.

Shared by the chat pipeline and the plain pass-through routes.
"""

from __future__ import annotations

import os
import re
import time
from typing import TYPE_CHECKING
from urllib.parse import unquote

from starlette.requests import ClientDisconnect, Request
from starlette.types import Scope

from proxy.core.errors import AuthenticationFailed, InvalidRequest, PayloadTooLarge
from proxy.gateway.forwarding import ForwardRequest, RawHeaderList, request_headers_for_upstream
from proxy.gateway.tenancy import proxy_key_headers, resolve_tenant
from proxy.gateway.upstream import UpstreamClient
from proxy.policy.model import PolicySnapshot, Tenant

if TYPE_CHECKING:
    from proxy.accounting.ledger import UsageRecord

__all__ = [
    "admit",
    "authenticate",
    "check_path",
    "forward_request",
    "read_body",
    "request_id_for",
    "started_at",
]

_MAX_REQUEST_ID = 200
_SEPARATORS = re.compile(r"[/\\]")


def started_at(request: Request) -> float:
    """The moment handling began, for `x-linguagate-overhead-ms`."""
    return time.perf_counter()


def request_id_for(request: Request) -> str:
    """The client's `x-request-id` when it is a sane token, else a fresh `lg-<uuid>`."""
    given = request.headers.get("x-request-id")
    if given and len(given) <= _MAX_REQUEST_ID and given.isascii() and given.isprintable():
        return given
    return "lg-" + os.urandom(16).hex()


def authenticate(request: Request, snapshot: PolicySnapshot) -> Tenant:
    """The caller's tenant; 401 when the key is unknown and no anonymous tenant exists."""
    tenant = resolve_tenant(snapshot, request.headers)
    if tenant is None:
        raise AuthenticationFailed("Incorrect API key provided.", code="invalid_api_key")
    return tenant


async def read_body(request: Request, limit: int) -> bytes:
    """The whole request body; 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(_too_large(limit))
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(_too_large(limit))
            chunks.append(chunk)
    except ClientDisconnect:  # gone, or cut off by the body timeout: nobody reads the answer
        raise InvalidRequest(
            "The client closed the connection before the body was complete.",
            code="client_disconnected",
        ) from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def check_path(request: Request) -> None:
    """400 for a path with a `.` or `..` segment, however it is encoded (`%2e%2e`, `..%2f`).

    The raw path is forwarded as the client encoded it, and an upstream (or a proxy in
    front of it) may decode and resolve it: `/v1/../admin` would leave the base path.
    No OpenAI path has such a segment, so it is refused rather than normalised.
    """
    path = _raw_path(request.scope)
    for _ in range(3):  # double encoding (`%252e`) is undone by a second decode
        if any(segment in (".", "..") for segment in _SEPARATORS.split(path)):
            raise InvalidRequest(
                "The request path must not contain '.' or '..' segments.", code="invalid_path"
            )
        decoded = unquote(path)
        if decoded == path:
            return
        path = decoded


async def admit(request: Request, snapshot: PolicySnapshot, max_body_bytes: int
                ) -> tuple[Tenant, bytes]:
    """Every `/v1` request's admission, in this order: a path that stays under the base
    path, a known key, a body within the limit. Raises `ProxyError` (an OpenAI-shaped 4xx)."""
    check_path(request)
    tenant = authenticate(request, snapshot)
    return tenant, await read_body(request, max_body_bytes)


def _raw_path(scope: Scope) -> str:
    # The path as the client encoded it (`%2F` stays `%2F`), not the decoded `path`.
    raw: bytes | None = scope.get("raw_path")
    return raw.decode("latin-1") if raw else str(scope["path"])


def _too_large(limit: int) -> str:
    return f"The request body exceeds the proxy's limit of {limit} bytes."


def forward_request(
    request: Request,
    upstream: UpstreamClient,
    *,
    content: bytes,
    request_id: str,
    response_headers: RawHeaderList,
    streaming: bool,
    started: float,
    snapshot: PolicySnapshot,
    usage: UsageRecord | None = None,
) -> ForwardRequest:
    """The upstream request for `request`: same method, path and query; `content` as body.

    No header that carries a proxy key of `snapshot`'s tenants is forwarded, in any mode.
    """
    scope = request.scope
    headers = request_headers_for_upstream(
        scope["headers"],
        request_id=request_id,
        org_authorization=upstream.org_authorization,
        identity_encoding=streaming,
        # In org-key mode every header that can hold a key is dropped anyway.
        drop=(frozenset() if upstream.org_authorization is not None
              else proxy_key_headers(snapshot, request.headers)),
    )
    return ForwardRequest(
        method=scope["method"],
        url=upstream.url_for(_raw_path(scope), scope["query_string"]),
        headers=headers,
        content=content,
        request_id=request_id,
        response_headers=response_headers,
        started=started,
        usage=usage,
    )
