"""What goes upstream and what comes back: header rules and the prepared upstream request.

Header names in ASGI scopes are lower-case bytes; everything here works on those raw pairs
so that no header is re-encoded on the hot path.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.accounting.ledger import UsageRecord

__all__ = [
    "ClientHeaders",
    "ForwardRequest",
    "RawHeaderList",
    "request_headers_for_upstream",
    "response_headers_for_client",
]

RawHeaderList = list[tuple[bytes, bytes]]

# RFC 9110 section 7.6.1 connection-specific headers, plus those the transport recomputes.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_NOT_FORWARDED = _HOP_BY_HOP | {
    b"host", b"content-length", b"expect", b"x-request-id", b"cookie"
}
# Where clients put keys: replaced by the org key in org-key mode.
_CLIENT_KEYS = frozenset({b"authorization", b"api-key"})
# The server adds a fresh `date` of its own.
_NOT_RELAYED = _HOP_BY_HOP | {b"date"}
_OWN_PREFIX = b"x-linguagate-"


@dataclass(frozen=True)
class ClientHeaders:
    """What `response_headers_for_client` found: the headers to send, and two facts about them."""

    headers: RawHeaderList
    has_request_id: bool
    event_stream: bool


@dataclass(frozen=True)
class ForwardRequest:
    """One request, ready for the upstream, plus what the client response must carry.

    `started` is the `time.perf_counter()` at which the proxy began handling the request:
    the overhead header counts from there.
    """

    method: str
    url: str
    headers: RawHeaderList
    content: bytes
    request_id: str
    response_headers: RawHeaderList
    started: float
    usage: UsageRecord | None = None


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    return frozenset(tokens)


def request_headers_for_upstream(
    client_headers: Iterable[tuple[bytes, bytes]],
    *,
    request_id: str,
    org_authorization: bytes | None,
    identity_encoding: bool,
    drop: frozenset[bytes] = frozenset(),
) -> RawHeaderList:
    """The client's headers minus hop-by-hop and our own control headers, and `drop`.

    With an org key the client's `authorization` and `api-key` are replaced by it; otherwise
    (bring your own key) they are forwarded unless `drop` names them (they carry a proxy
    key). `cookie` never goes upstream (a dashboard session is ours). Without an
    `accept-encoding` from the client, `identity` is asked for, because the transport would
    otherwise ask for gzip and relay it to a client that never said it could decode it;
    `identity_encoding` forces it (streams are never gzipped).
    """
    headers = list(client_headers)
    extra = _connection_tokens(headers)
    out: RawHeaderList = []
    has_encoding = False
    for name, value in headers:
        if name in _NOT_FORWARDED or name in extra or name.startswith(_OWN_PREFIX):
            continue
        if name in drop or (name in _CLIENT_KEYS and org_authorization is not None):
            continue
        if name == b"accept-encoding":
            if identity_encoding:
                continue
            has_encoding = True
        out.append((name, value))
    if org_authorization is not None:
        out.append((b"authorization", org_authorization))
    if not has_encoding:
        out.append((b"accept-encoding", b"identity"))
    out.append((b"x-request-id", request_id.encode("latin-1")))
    return out


def response_headers_for_client(upstream_headers: Iterable[tuple[bytes, bytes]]) -> ClientHeaders:
    """Upstream headers (names lower-cased) minus hop-by-hop ones and `date`.

    `content-length` survives on plain bodies (relayed byte for byte) but not on event
    streams, where a failure may append an error event.
    """
    headers = [(name.lower(), value) for name, value in upstream_headers]
    extra = _connection_tokens(headers)
    out: RawHeaderList = []
    has_request_id = False
    event_stream = False
    for name, value in headers:
        if name in _NOT_RELAYED or name in extra:
            continue
        if name == b"x-request-id":
            has_request_id = True
        elif name == b"content-type":
            event_stream = value.lower().startswith(b"text/event-stream")
        out.append((name, value))
    if event_stream:
        out = [(name, value) for name, value in out if name != b"content-length"]
    return ClientHeaders(out, has_request_id, event_stream)
