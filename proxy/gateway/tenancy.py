"""Who is calling: the proxy API key from request headers, and the tenant it belongs to.

Clients send the proxy key the way the OpenAI SDK sends any key
(``Authorization: Bearer <key>``); Azure-style clients send an ``api-key`` header,
which is accepted too. In bring-your-own-key deployments the ``Authorization``
header carries the team's upstream key, so the proxy key goes in its own
``x-linguagate-key`` header, which wins when present and is never forwarded
(every ``x-linguagate-*`` header stays at the proxy). Policy files hold only
SHA-256 digests of keys.
"""

from __future__ import annotations

from collections.abc import Mapping

from proxy.policy.model import PolicySnapshot, Tenant, hash_api_key

__all__ = [
    "PolicySnapshot",
    "Tenant",
    "api_key_from_headers",
    "bearer_token",
    "hash_api_key",
    "hash_api_key_hex",
    "proxy_key_headers",
    "resolve_tenant",
]

# Every header a client may put a proxy key in (see `api_key_from_headers`).
_KEY_HEADERS = ("x-linguagate-key", "authorization", "api-key")


def hash_api_key_hex(api_key: str) -> str:
    """The value to list in a policy's ``api_key_sha256`` for ``api_key``."""
    return hash_api_key(api_key).hex()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value (scheme case-insensitive)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    # Plain dicts are case-sensitive; Starlette/httpx header mappings already are not.
    return next((v for k, v in headers.items() if k.lower() == name), None)


def api_key_from_headers(headers: Mapping[str, str]) -> str | None:
    """The presented proxy key: ``x-linguagate-key``, ``Authorization: Bearer``, ``api-key``."""
    own = (_header(headers, "x-linguagate-key") or "").strip()
    if own:
        return own
    token = bearer_token(_header(headers, "authorization"))
    if token is not None:
        return token
    return (_header(headers, "api-key") or "").strip() or None


def resolve_tenant(snapshot: PolicySnapshot, headers: Mapping[str, str]) -> Tenant | None:
    """The tenant for a request's headers (anonymous fallback); ``None`` means 401."""
    return snapshot.authenticate(api_key_from_headers(headers))


def proxy_key_headers(snapshot: PolicySnapshot, headers: Mapping[str, str]) -> frozenset[bytes]:
    """Names of the headers that carry a proxy key of any tenant: never to go upstream.

    In bring-your-own-key mode ``Authorization`` (or ``api-key``) normally holds the team's
    upstream key and is forwarded; when it holds a proxy key instead, it must not be.
    """
    found: set[bytes] = set()
    for name in _KEY_HEADERS:
        value = _header(headers, name)
        if not value:
            continue
        key = bearer_token(value) if name == "authorization" else value.strip()
        tenant = snapshot.authenticate(key) if key else None
        if tenant is not None and not tenant.anonymous:
            found.add(name.encode())
    return frozenset(found)
