"""Header rules for the upstream request and the client response."""

from __future__ import annotations

from proxy.gateway.forwarding import request_headers_for_upstream, response_headers_for_client

CLIENT = [
    (b"host", b"proxy:8080"),
    (b"content-length", b"12"),
    (b"connection", b"keep-alive, x-drop-me"),
    (b"x-drop-me", b"1"),
    (b"te", b"trailers"),
    (b"authorization", b"Bearer client-key"),
    (b"x-linguagate-rate", b"0.3"),
    (b"x-request-id", b"old"),
    (b"openai-organization", b"org-1"),
    (b"content-type", b"application/json"),
]


def _names(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [name for name, _ in headers]


def test_org_key_replaces_authorization() -> None:
    out = request_headers_for_upstream(
        CLIENT, request_id="rid", org_authorization=b"Bearer org", identity_encoding=False
    )
    assert dict(out)[b"authorization"] == b"Bearer org"
    assert _names(out).count(b"authorization") == 1
    for dropped in (
        b"host",
        b"content-length",
        b"connection",
        b"x-drop-me",
        b"te",
        b"x-linguagate-rate",
    ):
        assert dropped not in _names(out)
    assert dict(out)[b"openai-organization"] == b"org-1"
    assert dict(out)[b"x-request-id"] == b"rid"
    assert dict(out)[b"accept-encoding"] == b"identity"  # the client asked for none


def test_bring_your_own_key_and_client_encoding() -> None:
    client = [*CLIENT, (b"accept-encoding", b"gzip")]
    out = request_headers_for_upstream(
        client, request_id="r", org_authorization=None, identity_encoding=False
    )
    assert dict(out)[b"authorization"] == b"Bearer client-key"
    assert dict(out)[b"accept-encoding"] == b"gzip"
    streamed = request_headers_for_upstream(
        client, request_id="r", org_authorization=None, identity_encoding=True
    )
    assert [v for n, v in streamed if n == b"accept-encoding"] == [b"identity"]


def test_response_headers() -> None:
    upstream = [
        (b"Content-Type", b"application/json"),
        (b"Content-Length", b"42"),
        (b"Connection", b"keep-alive"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Date", b"Mon"),
        (b"x-ratelimit-remaining-requests", b"9"),
        (b"retry-after", b"3"),
        (b"X-Request-Id", b"req_up"),
    ]
    found = response_headers_for_client(upstream)
    assert found.headers == [
        (b"content-type", b"application/json"),
        (b"content-length", b"42"),
        (b"x-ratelimit-remaining-requests", b"9"),
        (b"retry-after", b"3"),
        (b"x-request-id", b"req_up"),
    ]
    assert found.has_request_id and not found.event_stream


def test_event_stream_drops_content_length() -> None:
    found = response_headers_for_client(
        [(b"content-type", b"text/event-stream; charset=utf-8"), (b"content-length", b"9")]
    )
    assert found.event_stream
    assert found.headers == [(b"content-type", b"text/event-stream; charset=utf-8")]
    assert not found.has_request_id


def test_org_mode_drops_api_key_and_cookie() -> None:
    client = [*CLIENT, (b"api-key", b"proxy-key"), (b"cookie", b"lg_session=x")]
    out = request_headers_for_upstream(
        client, request_id="rid", org_authorization=b"Bearer org", identity_encoding=False
    )
    assert b"api-key" not in _names(out) and b"cookie" not in _names(out)


def test_byo_mode_drops_the_headers_named_in_drop() -> None:
    client = [*CLIENT, (b"api-key", b"sk-azure")]
    out = request_headers_for_upstream(
        client, request_id="rid", org_authorization=None, identity_encoding=False,
        drop=frozenset({b"authorization"}),
    )
    assert b"authorization" not in _names(out)
    assert dict(out)[b"api-key"] == b"sk-azure"
