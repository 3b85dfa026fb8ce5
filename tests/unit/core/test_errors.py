"""The error tree and its single mapping to the OpenAI envelope."""

from __future__ import annotations

import json

import pytest

from proxy.core.errors import (
    ERROR_TABLE,
    AuthenticationFailed,
    InvalidParameter,
    MalformedJSON,
    NotFound,
    PayloadTooLarge,
    ProxyError,
    UpstreamTimeout,
    UpstreamUnreachable,
    error_body,
    error_headers,
    error_response,
    error_status,
    sse_error_event,
)


@pytest.mark.parametrize(
    ("exc", "status", "type_", "code"),
    [
        (MalformedJSON("bad"), 400, "invalid_request_error", None),
        (
            InvalidParameter("bad", param="model", code="invalid_type"),
            400,
            "invalid_request_error",
            "invalid_type",
        ),
        (PayloadTooLarge("big"), 413, "invalid_request_error", "request_too_large"),
        (AuthenticationFailed("who"), 401, "invalid_request_error", "invalid_api_key"),
        (NotFound("where"), 404, "invalid_request_error", "unknown_url"),
        (UpstreamUnreachable("down"), 502, "upstream_error", "upstream_unreachable"),
        (UpstreamTimeout("slow"), 504, "upstream_error", "upstream_timeout"),
        (ProxyError("oops"), 500, "server_error", None),
    ],
)
def test_table(exc: ProxyError, status: int, type_: str, code: str | None) -> None:
    assert error_status(exc) == status
    body = json.loads(error_body(exc))
    assert body == {
        "error": {"message": exc.message, "type": type_, "param": exc.param, "code": code}
    }


def test_param_is_reported() -> None:
    body = json.loads(error_body(InvalidParameter("x", param="messages[2]")))
    assert body["error"]["param"] == "messages[2]"


def test_retry_headers() -> None:
    assert ("retry-after", "1") in error_headers(UpstreamTimeout("slow"))
    assert ("x-should-retry", "false") in error_headers(MalformedJSON("bad"))
    assert error_headers(UpstreamUnreachable("down")) == ()


def test_every_class_in_table_is_a_proxy_error() -> None:
    assert all(issubclass(cls, ProxyError) for cls in ERROR_TABLE)


def test_sse_event_framing() -> None:
    event = sse_error_event(UpstreamUnreachable("gone"))
    assert event.startswith(b"data: {") and event.endswith(b"}\n\n")
    assert json.loads(event[6:])["error"]["code"] == "upstream_unreachable"


def test_response_carries_request_id() -> None:
    response = error_response(AuthenticationFailed("no"), "req-1")
    assert response.status_code == 401
    assert response.headers["x-request-id"] == "req-1"
    assert response.headers["content-type"] == "application/json"
    assert "ProxyError" not in repr(AuthenticationFailed("no"))
